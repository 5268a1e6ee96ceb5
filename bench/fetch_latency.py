"""Loading a prompt at model-load time: ctpreg's warm cache vs huggingface_hub's cache vs the floor, and cold S3.

For a 100 x 4096 and a 100 x 8192 fp16 prompt, in one run:
- ctpreg warm ``client.fetch("NAME:1")``: cache hit, bytes read and their sha256 checked (what ctpreg promises);
- ``hf_hub_download(..., local_files_only=True)`` on an HF cache holding the same file: returns a path, reads and
  hashes nothing;
- the floor: reading the file from the page cache and hashing it;
- cold ``client.fetch`` from a moto S3 server over HTTP with an empty cache each time.

    python bench/fetch_latency.py --repeats 2000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table, moto_s3  # noqa: E402

from ctpreg.registry import Client, Settings  # noqa: E402
from ctpreg.registry.artifacts import PromptMetadata, serialize_artifact  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.service import Registry  # noqa: E402

FINGERPRINT = "sha256:" + "ab" * 32


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2] * 1e3, ordered[int(0.95 * len(ordered))] * 1e3


def timed(call, repeats: int) -> list[float]:  # type: ignore[no-untyped-def]
    call()
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def artifact(hidden: int) -> bytes:
    meta = PromptMetadata(
        model="llama-7b" if hidden == 4096 else "llama-65b", model_fingerprint=FINGERPRINT,
        compression=parse_compression("gptq-w3-g128"), dataset="wiki", num_virtual_tokens=100, hidden_size=hidden,
    )
    embeddings = np.random.default_rng(hidden).standard_normal((100, hidden)).astype(np.float16)
    return serialize_artifact(embeddings, meta, dtype="float16")


def hf_cache(root: Path, data: bytes, filename: str) -> str:
    """An HF hub cache holding ``filename``, laid out as huggingface_hub writes it."""
    repo = "ctpreg/bench-prompt"
    folder = root / "models--ctpreg--bench-prompt"
    commit = "0" * 40
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / filename)
    return repo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--cold-repeats", type=int, default=50)
    args = parser.parse_args()
    import boto3
    from huggingface_hub import hf_hub_download

    print(describe())
    rows, failures = [], []
    with moto_s3() as endpoint, tempfile.TemporaryDirectory() as tmp:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        root = Path(tmp)
        env = {"CTPREG_HOME": str(root / "home"), "CTPREG_STORE_URL": "s3://bench/prompts",
               "CTPREG_S3_ENDPOINT_URL": endpoint, "CTPREG_CACHE_DIR": str(root / "cache")}
        settings = Settings.from_env(env)
        registry = Registry.from_settings(settings)
        for hidden in (4096, 8192):
            data = artifact(hidden)
            record = registry.publish_bytes(data, name=f"bench/h{hidden}").prompt
            client = Client(settings, registry=registry)
            warm = timed(lambda: client.fetch(record.ref), args.repeats)
            cached_file = client.fetch(record.ref).path
            if client.fetch(record.ref).data != data:
                failures.append(f"{record.ref}: fetched bytes differ")
            floor = timed(lambda: hashlib.sha256(cached_file.read_bytes()).hexdigest(), args.repeats)
            hub_root = root / f"hub{hidden}"
            repo = hf_cache(hub_root, data, "prompt.safetensors")
            hub = timed(
                lambda: hf_hub_download(repo, "prompt.safetensors", cache_dir=hub_root, local_files_only=True),
                args.repeats,
            )

            def cold() -> None:
                shutil.rmtree(root / "cache", ignore_errors=True)
                Client(settings, registry=registry).fetch(record.ref)

            cold_times = timed(cold, args.cold_repeats)
            size = f"100x{hidden} fp16 ({len(data) / 1024:.0f} KiB)"
            w50, w95 = percentiles(warm)
            f50, f95 = percentiles(floor)
            rows += [
                [
                    size, "ctpreg client.fetch, warm cache (read + sha256)", f"{w50:.3f}", f"{w95:.3f}",
                    f"{w50 / f50:.2f}x",
                ],
                [size, "floor: read from page cache + sha256", f"{f50:.3f}", f"{f95:.3f}", "1.00x"],
                [
                    size, "hf_hub_download(local_files_only=True): path only",
                    *map("{:.3f}".format, percentiles(hub)), "n/a",
                ],
                [
                    size, "ctpreg client.fetch, cold from moto S3 over HTTP",
                    *map("{:.3f}".format, percentiles(cold_times)), "",
                ],
            ]
        registry.db.dispose()
    print()
    print(markdown_table(["prompt", "path", "p50 ms", "p95 ms", "vs floor"], rows))
    if failures:
        print("\nFAILED checks:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
