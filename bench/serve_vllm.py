"""Serving a recovered model through vLLM: direct to the engine vs through ``ctpreg proxy``, on loopback.

Three ways to send the same completions, side by side, at 1, 4 and 16 concurrent clients:
- ``vllm text``: plain text prompts straight to vLLM (no soft prompt; what serving the compressed model costs);
- ``vllm embeds``: straight to vLLM with ``prompt_embeds`` the client builds itself (``VllmPrompt``): the same engine
  work as through the proxy, so the proxy's own cost is the difference between this row and the next;
- ``proxy``: plain text prompts to ``ctpreg proxy``, which adds the prompt and forwards ``prompt_embeds``.
Every request generates exactly ``--max-tokens`` tokens (``ignore_eos``). Latency is per request, end to end. The
paths take turns in rounds of 2 x clients requests, so a shared machine's drift falls on all three alike.

    python bench/serve_vllm.py --model-path ./smollm2-gptq-w3-hf --ref smollm2-135m/gptq-w3-g128/wiki:1

starts vLLM (``--vllm-python``, default ./.venv-vllm/bin/python) and the proxy itself; ``--vllm-url`` and
``--proxy-url`` use servers already running instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SERVED_NAME = "bench"


def wait_healthy(url: str, process: subprocess.Popen | None, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"{url} not healthy after {seconds}s")


def start_servers(args: argparse.Namespace, logs: Path) -> tuple[str, str, str, list[subprocess.Popen]]:
    processes: list[subprocess.Popen] = []
    vllm_url, proxy_url, served = args.vllm_url, args.proxy_url, args.served_name
    if vllm_url is None:
        vllm_url, served = f"http://127.0.0.1:{args.port}", SERVED_NAME
        command = [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(args.model_path),
                   "--served-model-name", served, "--enable-prompt-embeds", "--dtype", "float32", "--enforce-eager",
                   "--max-model-len", "1024", "--host", "127.0.0.1", "--port", str(args.port)]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
        processes.append(subprocess.Popen(command, stdout=(logs / "vllm.log").open("w"), stderr=subprocess.STDOUT,
                                          env=env))
        wait_healthy(vllm_url, processes[-1])
    if proxy_url is None:
        proxy_url = f"http://127.0.0.1:{args.port + 1}"
        command = [sys.executable, "-m", "ctpreg.cli.main", "proxy", "--upstream", vllm_url, "--model-path",
                   str(args.model_path), "--port", str(args.port + 1), *(["--ref", args.ref] if args.ref else [])]
        processes.append(subprocess.Popen(command, stdout=(logs / "proxy.log").open("w"), stderr=subprocess.STDOUT))
        wait_healthy(proxy_url, processes[-1], 120)
    return vllm_url, proxy_url, served, processes


def texts(count: int) -> list[str]:
    """Opening sentences of the packaged news corpus: real, varied prompts of 20-40 tokens."""
    from ctpreg.trainer.data import load_corpus

    documents = load_corpus("news").split().test
    return [" ".join(doc.split()[:24]) for doc in (documents * (count // len(documents) + 1))[:count]]


async def run_level(url: str, bodies: list[dict], concurrency: int) -> tuple[float, list[float], int]:
    """Wall time, per-request latencies and completion tokens for ``bodies`` sent by ``concurrency`` clients."""
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    latencies: list[float] = []
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        while not queue.empty():
            body = queue.get_nowait()
            started = time.perf_counter()
            answer = await http.post(f"{url}/v1/completions", json=body)
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise SystemExit(f"{url}: {answer.status_code} {answer.text[:300]}")
            tokens += answer.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as http:
        started = time.perf_counter()
        await asyncio.gather(*[client(http) for _ in range(concurrency)])
    return time.perf_counter() - started, latencies, tokens


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, required=True, help="servable checkpoint (compress --format hf)")
    parser.add_argument("--ref", help="prompt the proxy serves (default: what it resolves for the checkpoint)")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--vllm-url", help="a running vLLM server (then --served-name names its model)")
    parser.add_argument("--served-name", default=SERVED_NAME)
    parser.add_argument("--proxy-url", help="a running ctpreg proxy in front of --vllm-url")
    parser.add_argument("--port", type=int, default=8310)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=48, help="requests per row")
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    print(describe())
    from ctpreg.integrations.vllm import VllmPrompt
    from ctpreg.registry import Client

    with tempfile.TemporaryDirectory() as logs:
        vllm_url, proxy_url, served, processes = start_servers(args, Path(logs))
        try:
            version = httpx.get(f"{vllm_url}/version", timeout=10).json().get("version", "unknown")
            health = httpx.get(f"{proxy_url}/health", timeout=10).json()
            prompt = health["prompt"]
            resolved = Client.from_env().fetch(prompt["ref"]) if prompt else None
            builder = VllmPrompt.from_checkpoint(args.model_path, resolved)
            print(f"engine: vLLM {version} (CPU, fp32, eager); prompt: {prompt['ref'] if prompt else 'none'} "
                  f"({prompt['num_virtual_tokens'] if prompt else 0} "
                  f"virtual tokens); {args.requests} requests per row, {args.max_tokens} new tokens each")
            common = {"model": served, "max_tokens": args.max_tokens, "temperature": 0, "ignore_eos": True}
            prompts = texts(args.requests)
            modes = {
                "vllm text": (vllm_url, [{**common, "prompt": text} for text in prompts]),
                "vllm embeds": (vllm_url, [builder.completion_body(text, **common) for text in prompts]),
                "proxy": (proxy_url, [{**common, "prompt": text} for text in prompts]),
            }
            for url, bodies in modes.values():  # warm up every path once
                asyncio.run(run_level(url, bodies[:2], 2))
            rows = []
            for level in (int(c) for c in args.concurrency.split(",")):
                # Rounds of 2 x clients requests rotate over the paths, so drift on a shared machine hits all alike.
                totals = {mode: [0.0, [], 0] for mode in modes}
                chunk = 2 * level
                for start in range(0, args.requests, chunk):
                    for mode, (url, bodies) in modes.items():
                        wall, latencies, tokens = asyncio.run(run_level(url, bodies[start:start + chunk], level))
                        totals[mode][0] += wall
                        totals[mode][1].extend(latencies)
                        totals[mode][2] += tokens
                for mode, (wall, latencies, tokens) in totals.items():
                    rows.append([mode, level, len(latencies), f"{tokens / wall:.1f}",
                                 f"{percentile(latencies, 0.5):.0f}", f"{percentile(latencies, 0.99):.0f}",
                                 f"{statistics.mean(latencies) * 1e3:.0f}"])
            print(markdown_table(["path", "clients", "requests", "tokens/s", "p50 ms", "p99 ms", "mean ms"], rows))
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
