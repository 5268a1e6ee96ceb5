"""How much of the compression gap a prompt wins back, on its own data, on another domain and at other levels.

Trains (or loads, with --prompt) a prompt on SmolLM2-135M GPTQ 3-bit g128 over ``wiki``, then measures on the same
windows per row: the full model, the compressed model, and the compressed model with the prompt, on ``wiki``
validation, on ``news`` (never trained on), and on GPTQ 4-bit and 2-bit models (never trained on). Perplexity counts
scored tokens only. The "full" model is the packaged GGUF Q4_1 checkpoint dequantized by transformers.

    python bench/recovery.py --steps 100 --calibration-windows 128
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402

from ctpreg.registry.artifacts import read_artifact  # noqa: E402
from ctpreg.registry.recovery import gap_recovered  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.settings import Settings  # noqa: E402
from ctpreg.trainer.compress import CompressConfig  # noqa: E402
from ctpreg.trainer.data import load_corpus, make_windows  # noqa: E402
from ctpreg.trainer.evaluate import perplexity  # noqa: E402
from ctpreg.trainer.pipeline import DataConfig, compress_loaded, load_base, train_prompt_artifact  # noqa: E402
from ctpreg.trainer.train import TrainConfig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-path")
    parser.add_argument("--prompt", type=Path, help="use this trained artifact instead of training one")
    parser.add_argument("--train", default="gptq-w3-g128")
    parser.add_argument("--levels", default="gptq-w4-g128,gptq-w2-g128")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--num-tokens", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-2)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--calibration-windows", type=int, default=128)
    args = parser.parse_args()
    print(describe())
    home = Settings.from_env().home
    base = load_base(args.model, model_path=args.model_path, device="cpu")
    spec = parse_compression(args.train)
    compress_config = CompressConfig(spec, calibration="wiki", calibration_windows=args.calibration_windows)
    if args.prompt is None:
        args.prompt = home / "bench" / f"recovery-{spec.canonical}-{args.steps}.safetensors"
        args.prompt.parent.mkdir(parents=True, exist_ok=True)
        train_prompt_artifact(
            copy.deepcopy(base), compress_config, DataConfig(dataset="wiki", eval_windows=args.eval_windows),
            TrainConfig(num_tokens=args.num_tokens, steps=args.steps, lr=args.lr), corpus=load_corpus("wiki"),
            out=args.prompt, home=home, resume=True,
        )
    artifact = read_artifact(args.prompt)[0]
    prompt = torch.from_numpy(artifact.embeddings.astype("float32"))
    training = artifact.metadata.training

    def validation(dataset: str) -> torch.Tensor:
        return make_windows(
            base.tokenizer, load_corpus(dataset), seq_len=256, max_train=1, max_validation=args.eval_windows
        ).validation

    rows = []
    evaluations = [(spec.canonical, "wiki"), (spec.canonical, "news")] + [
        (level, "wiki") for level in args.levels.split(",")
    ]
    full_cache: dict[str, float] = {}
    compressed: dict[str, torch.nn.Module] = {}  # rows of one level share its compressed model
    for level, dataset in evaluations:
        windows = validation(dataset)
        if dataset not in full_cache:
            full_cache[dataset] = perplexity(base.model, windows, label=f"full {dataset}").ppl
        if level not in compressed:
            compressed.clear()  # one compressed model in memory at a time
            level_config = CompressConfig(
                parse_compression(level), calibration="wiki", calibration_windows=args.calibration_windows
            )
            compressed[level] = compress_loaded(copy.deepcopy(base), level_config, home).model
        model = compressed[level]
        without = perplexity(model, windows, label=f"{level} {dataset}").ppl
        with_prompt = perplexity(model, windows, prompt=prompt, label=f"{level} {dataset} prompted").ppl
        values = {"ppl_full": full_cache[dataset], "ppl_compressed": without, "ppl_prompted": with_prompt}
        recovered = gap_recovered(values)
        transfer = "trained" if (level, dataset) == (spec.canonical, "wiki") else "transfer"
        rows.append([level, f"{dataset} ({transfer})", f"{full_cache[dataset]:.2f}", f"{without:.2f}",
                     f"{with_prompt:.2f}", f"{recovered:.1%}" if recovered is not None else "n/a",
                     windows.numel() - windows.shape[0]])
    print(f"\nprompt: {args.prompt.name}, {artifact.metadata.num_virtual_tokens} tokens trained on "
          f"{artifact.metadata.compression.canonical}/{artifact.metadata.dataset}, {training.get('steps')} steps, "
          f"lr {training.get('lr')}; {training.get('step_seconds', float('nan')):.2f} s/step, "
          f"{training.get('tokens_per_second', float('nan')):.0f} tokens/s on this machine\n")
    print(markdown_table(
        ["target", "eval data", "ppl full", "ppl compressed", "ppl prompted", "gap recovered", "tokens"], rows
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
