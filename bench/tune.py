"""Which training choices recover most per CPU minute: objective (ce, kd, ce+kd), prompt length, learning rate.

Every variant trains a prompt on one compressed SmolLM2-135M (GPTQ 3-bit g128 by default) over the ``wiki`` train
split with the same steps, batches and seed, keeps its best step on ``wiki`` select, and is then measured on select
splits only, since these figures choose the defaults: ``wiki`` select (in domain; the windows that also chose the
best step, equally for every variant), ``news`` select (a corpus never trained on) and ``wiki`` select on other
compression levels (never trained on). Nothing here touches a test split; ``bench/recovery.py`` reports on test.

    python bench/tune.py --variants ce:20:3e-2,kd:20:3e-2,ce+kd:20:3e-2,ce:50:3e-2 --steps 60
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402

from ctpreg.registry.compression import parse_compression  # noqa: E402
from ctpreg.registry.report import figure_gap_cells  # noqa: E402
from ctpreg.registry.settings import Settings  # noqa: E402
from ctpreg.trainer.compress import CompressConfig  # noqa: E402
from ctpreg.trainer.data import SELECT, load_corpus, make_windows, split_windows  # noqa: E402
from ctpreg.trainer.evaluate import perplexity  # noqa: E402
from ctpreg.trainer.pipeline import compress_loaded, load_base, split_data  # noqa: E402
from ctpreg.trainer.train import TrainConfig, train_prompt  # noqa: E402


def parse_variant(text: str) -> TrainConfig:
    loss, tokens, lr = text.split(":")
    return TrainConfig(loss=loss, num_tokens=int(tokens), lr=float(lr))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-path")
    parser.add_argument("--train", default="gptq-w3-g128")
    parser.add_argument("--transfer", default="gptq-w4-g128", help="comma-separated levels never trained on")
    parser.add_argument("--variants", default="ce:20:3e-2,kd:20:3e-2,ce+kd:20:3e-2,ce:50:3e-2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--calibration-windows", type=int, default=32)
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variants.split(",")]
    print(describe())
    home = Settings.from_env().home
    base = load_base(args.model, model_path=args.model_path, device="cpu", home=home)
    windows = make_windows(base.tokenizer, load_corpus("wiki"), seq_len=256, max_select=args.eval_windows, max_test=1)
    news = split_windows(base.tokenizer, load_corpus("news"), SELECT, seq_len=256, limit=args.eval_windows)
    sets = {"wiki": windows.select, "news": news}
    full = {name: perplexity(base.model, w, label=f"full {name}").ppl for name, w in sets.items()}

    def compressed(level: str):  # noqa: ANN202
        config = CompressConfig(parse_compression(level), calibration="wiki",
                                calibration_windows=args.calibration_windows)
        return compress_loaded(copy.deepcopy(base), config, home).model

    trained_model = compressed(args.train)
    columns = [(args.train, "wiki"), (args.train, "news")] + [(lv, "wiki") for lv in args.transfer.split(",")]
    prompts, rows = [], []
    for variant in variants:
        config = TrainConfig(**{**variant.to_dict(), "steps": args.steps, "eval_every": args.eval_every})
        started, cpu = time.perf_counter(), time.process_time()
        result = train_prompt(trained_model, windows, config, teacher=base.model if config.needs_teacher else None)
        prompts.append((config, result, time.perf_counter() - started, time.process_time() - cpu))
    cells: dict[tuple[int, tuple[str, str]], tuple[str, str, str]] = {}
    for level, corpus in columns:  # one compressed model in memory at a time
        model = trained_model if level == args.train else compressed(level)
        without = perplexity(model, sets[corpus], label=f"{level} {corpus}").ppl
        for i, (_, result, _, _) in enumerate(prompts):
            with_prompt = perplexity(model, sets[corpus], prompt=result.prompt, label=f"{level} {corpus} prompted").ppl
            figures = {"ppl_full": full[corpus], "ppl_compressed": without, "ppl_prompted": with_prompt}
            cells[i, (level, corpus)] = (f"{without:.2f} -> {with_prompt:.2f}", *figure_gap_cells(figures))
    for i, (config, result, wall, cpu) in enumerate(prompts):
        row = [config.loss, config.num_tokens, config.lr, result.best_step, f"{wall:.0f}", f"{cpu / 60:.1f}"]
        for column in columns:
            text, gap, log_gap = cells[i, column]
            row.append(f"{text} ({gap} / {log_gap})")
        rows.append(row)
    described = {name: split_data(name, SELECT, w).describe() for name, w in sets.items()}
    print(f"\n{args.steps} steps, batch 4x256, best step on wiki select; full model: "
          + ", ".join(f"{name} {ppl:.2f} on {described[name]}" for name, ppl in full.items()) + "\n")
    print(markdown_table(
        ["loss", "tokens", "lr", "best step", "train s", "CPU min",
         *(f"{level} on {corpus} select: ppl (gap ppl / log-ppl)" for level, corpus in columns)], rows,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
