"""How much of the compression gap a prompt wins back, on its own data, on another domain and at other levels.

Trains (or loads, with --prompt) a prompt on SmolLM2-135M GPTQ 3-bit g128 over ``wiki`` (train split; best step on
the select split), then measures on the same windows per row: the full model, the compressed model, and the
compressed model with the prompt, on the ``wiki`` test split, on the ``news`` test split (a corpus never trained on),
and on GPTQ 4-bit and 2-bit models (never trained on); beside them, the training-free alternative: GPTQModel's EoRA
adapters at ranks 32 and 64 on the same GPTQ checkpoints, and the prompt trained on top of EoRA. Every row is on a
test split, which chose nothing, and names its windows (corpus/split, count x length, digest of the token ids).
Perplexity counts scored tokens only. The "full" model is the packaged GGUF Q4_1 checkpoint dequantized by
transformers.

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
from ctpreg.registry.report import figure_gap_cells  # noqa: E402
from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.settings import Settings  # noqa: E402
from ctpreg.trainer.compress import CompressConfig  # noqa: E402
from ctpreg.trainer.compress.eora import build_eora, load_with_eora  # noqa: E402
from ctpreg.trainer.data import TEST, load_corpus, make_windows, split_windows  # noqa: E402
from ctpreg.trainer.evaluate import perplexity  # noqa: E402
from ctpreg.trainer.models import freeze  # noqa: E402
from ctpreg.trainer.pipeline import (  # noqa: E402
    DataConfig, calibration_windows, compress_loaded, load_base, split_data, train_prompt_artifact,
)
from ctpreg.trainer.train import TrainConfig, train_prompt  # noqa: E402


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
    parser.add_argument("--loss", default="ce", help="ce, kd or ce+kd")
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--calibration-windows", type=int, default=128)
    parser.add_argument("--eora-ranks", default="32,64", help="EoRA ranks to compare ('' for none)")
    parser.add_argument("--eora-levels", default="gptq-w3-g128,gptq-w4-g128")
    parser.add_argument("--prompt-on-eora", type=int, default=64,
                        help="also train the prompt on top of EoRA of this rank at --train (0: skip)")
    args = parser.parse_args()
    print(describe())
    home = Settings.from_env().home
    base = load_base(args.model, model_path=args.model_path, device="cpu", home=home)
    spec = parse_compression(args.train)
    train_config = TrainConfig(num_tokens=args.num_tokens, steps=args.steps, lr=args.lr, loss=args.loss)
    if args.prompt is None:
        args.prompt = home / "bench" / f"recovery-{spec.canonical}-{train_config.digest}.safetensors"
        args.prompt.parent.mkdir(parents=True, exist_ok=True)
        train_prompt_artifact(
            copy.deepcopy(base), level_config(spec.canonical, args), DataConfig(dataset="wiki",
                                                                               eval_windows=args.eval_windows),
            train_config, corpus=load_corpus("wiki"), out=args.prompt, home=home, resume=True,
        )
    artifact = read_artifact(args.prompt)[0]
    prompt = torch.from_numpy(artifact.embeddings.astype("float32"))
    training = artifact.metadata.training
    prompt_cost = (f"{artifact.embeddings.nbytes:,}",
                   f"{training.get('steps', 0) * training.get('step_seconds', float('nan')):.0f}")
    windows = {name: split_windows(base.tokenizer, load_corpus(name), TEST, seq_len=256, limit=args.eval_windows)
               for name in ("wiki", "news")}
    full = {name: perplexity(base.model, w, label=f"full {name}").ppl for name, w in windows.items()}
    rows = []

    def row(level: str, dataset: str, what: str, without: float, improved: float, cost: tuple[str, str]) -> None:
        values = {"ppl_full": full[dataset], "ppl_compressed": without, "ppl_prompted": improved}
        rows.append([level, what, f"{full[dataset]:.2f}", f"{without:.2f}", f"{improved:.2f}",
                     *figure_gap_cells(values), *cost, split_data(dataset, TEST, windows[dataset]).describe()])

    levels = list(dict.fromkeys([spec.canonical, *args.levels.split(","), *args.eora_levels.split(",")]))
    ranks = [int(r) for r in args.eora_ranks.split(",") if r]
    for level in levels:  # one compressed model in memory at a time
        result = compress_loaded(copy.deepcopy(base), level_config(level, args), home)
        datasets = ("wiki", "news") if level == spec.canonical else ("wiki",)
        plain = {d: perplexity(result.model, windows[d], label=f"{level} {d}").ppl for d in datasets}
        for dataset in datasets:
            what = "prompt (trained here)" if (level, dataset) == (spec.canonical, "wiki") else "prompt (transfer)"
            prompted = perplexity(result.model, windows[dataset], prompt=prompt, label=f"{level} {dataset} prompted")
            row(level, dataset, what, plain[dataset], prompted.ppl, prompt_cost)
        if level not in args.eora_levels.split(",") or not ranks:
            continue
        calibration = calibration_windows(base, level_config(level, args))
        for rank in ranks:
            adapter = build_eora(base, result.folder / "gptq", calibration, rank=rank,
                                 folder=result.folder / f"eora-r{rank}")
            compensated = load_with_eora(result.folder / "gptq", adapter)
            eora = perplexity(compensated, windows["wiki"], label=f"{level} EoRA r{rank}").ppl
            cost = (f"{adapter.size_bytes:,}", f"{adapter.seconds:.0f}" if adapter.seconds else "cached")
            row(level, "wiki", f"EoRA r{rank} (no training)", plain["wiki"], eora, cost)
            if level == spec.canonical and rank == args.prompt_on_eora:
                on_top = train_on(compensated, base, train_config, args)
                both = perplexity(compensated, windows["wiki"], prompt=on_top.prompt, label="EoRA + prompt").ppl
                row(level, "wiki", f"EoRA r{rank} + prompt trained on it", plain["wiki"], both,
                    (f"{adapter.size_bytes + artifact.embeddings.nbytes:,}",
                     f"{adapter.seconds + on_top.step_seconds * train_config.steps:.0f}"))
            del compensated
    print(f"\nprompt: {args.prompt.name}, {artifact.metadata.num_virtual_tokens} tokens trained on "
          f"{artifact.metadata.compression.canonical}/{artifact.metadata.dataset}, {training.get('steps')} steps, "
          f"lr {training.get('lr')}, loss {training.get('loss', 'ce')}, best step {training.get('best_step')} "
          f"chosen on {training.get('select_data', {}).get('split', '?')}; "
          f"{training.get('step_seconds', float('nan')):.2f} s/step, "
          f"{training.get('tokens_per_second', float('nan')):.0f} tokens/s on this machine. EoRA: GPTQModel's "
          f"adapter on the same GPTQ checkpoint and calibration windows; build seconds 'cached' when reused\n")
    print(markdown_table(
        ["target", "recovery by", "ppl full", "ppl compressed", "ppl recovered", "gap (ppl)", "gap (log-ppl)",
         "extra bytes", "build s (wall)", "windows"], rows
    ))
    return 0


def level_config(level: str, args: argparse.Namespace) -> CompressConfig:
    return CompressConfig(parse_compression(level), calibration="wiki", calibration_windows=args.calibration_windows)


def train_on(model: torch.nn.Module, base, config: TrainConfig, args: argparse.Namespace):  # noqa: ANN001, ANN201
    """The prompt trained on ``model`` exactly as the artifact's was (train split, best step on select)."""
    windows = make_windows(base.tokenizer, load_corpus("wiki"), seq_len=256, max_select=args.eval_windows, max_test=1)
    return train_prompt(freeze(model), windows, config, teacher=base.model if config.needs_teacher else None)


if __name__ == "__main__":
    sys.exit(main())
