"""Prompt-training throughput: ctpreg's trainer step vs PEFT prompt tuning, same compressed model, same run.

Both train a prompt with the same init, optimizer, schedule, batches and precision (bf16 autocast where the CPU has
it); the only difference is the forward pass: ctpreg runs the LM head on scored positions only, PEFT
(``PromptTuningConfig``) on every position, prompt included. Final quality is compared on the same select-split
windows with the same scorer (scored tokens only), so the losses are comparable.

    python bench/train_throughput.py --model smollm2-135m --method gptq --bits 3 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, markdown_table  # noqa: E402

from ctpreg.registry.compression import build_spec  # noqa: E402
from ctpreg.registry.settings import Settings  # noqa: E402
from ctpreg.trainer.compress import CompressConfig  # noqa: E402
from ctpreg.trainer.data import load_corpus, make_windows  # noqa: E402
from ctpreg.trainer.evaluate import perplexity  # noqa: E402
from ctpreg.trainer.pipeline import compress_loaded, load_base  # noqa: E402
from ctpreg.trainer.prompt import init_from_vocabulary, mean_nll  # noqa: E402
from ctpreg.trainer.train import TrainConfig, get_batch, get_lr, uses_autocast  # noqa: E402


def run(step_loss, parameter: torch.nn.Parameter, windows: torch.Tensor, config: TrainConfig) -> tuple[float, float]:
    """Train ``parameter``; return (seconds per step after the first, last loss)."""
    optimizer = torch.optim.AdamW([parameter], lr=config.lr)
    times, loss = [], float("nan")
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step, config)
        batch = get_batch(windows, step, config)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_autocast(config, torch.device("cpu"))):
            value = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_([parameter], config.grad_clip)
        optimizer.step()
        times.append(time.perf_counter() - started)
        loss = float(value.detach())
    return sum(times[1:]) / max(1, len(times) - 1), loss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-path")
    parser.add_argument("--method", default="gptq")
    parser.add_argument("--bits", type=int)
    parser.add_argument("--dataset", default="wiki")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--calibration-windows", type=int, default=32)
    args = parser.parse_args()
    from peft import PromptTuningConfig, get_peft_model

    print(describe())
    loaded = load_base(args.model, model_path=args.model_path, device="cpu")
    spec = build_spec(args.method, bits=args.bits)
    home = Settings.from_env().home
    model = compress_loaded(
        loaded, CompressConfig(spec, calibration=args.dataset, calibration_windows=args.calibration_windows), home
    ).model
    windows = make_windows(
        loaded.tokenizer, load_corpus(args.dataset), seq_len=args.seq_len, max_select=args.eval_windows, max_test=1
    )
    config = TrainConfig(num_tokens=args.num_tokens, steps=args.steps, batch_size=args.batch_size, warmup_steps=2)
    init = init_from_vocabulary(model, args.num_tokens, seed=config.seed)
    tokens_per_step = args.batch_size * (args.seq_len - 1)

    ours = torch.nn.Parameter(init.clone())
    ours_step, ours_loss = run(lambda batch: mean_nll(model, batch, ours), ours, windows.train, config)

    peft_model = get_peft_model(
        copy.deepcopy(model), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=args.num_tokens)
    )
    embedding = peft_model.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        embedding.copy_(init)
    peft_step, peft_loss = run(
        lambda batch: peft_model(input_ids=batch, labels=batch).loss, embedding, windows.train, config
    )

    ours_ppl = perplexity(model, windows.select, prompt=ours.detach()).ppl
    peft_ppl = perplexity(model, windows.select, prompt=embedding.detach().float()).ppl
    baseline = perplexity(model, windows.select).ppl
    print(f"\n{args.model} {spec.canonical}, {args.num_tokens}-token prompt, batch {args.batch_size}x{args.seq_len}, "
          f"{args.steps} steps, "
          f"{'bf16 autocast' if uses_autocast(config, torch.device('cpu')) else 'fp32 (no native bf16 on this CPU)'}; "
          f"select split: {windows.select.shape[0]} {args.dataset} windows, "
          f"scored tokens only (no prompt: ppl {baseline:.2f})\n")
    print(markdown_table(
        ["trainer", "s/step", "tokens/s", "last train loss", "select ppl after training"],
        [["ctpreg", f"{ours_step:.2f}", f"{tokens_per_step / ours_step:.0f}", f"{ours_loss:.3f}", f"{ours_ppl:.2f}"],
         ["PEFT PromptTuning", f"{peft_step:.2f}", f"{tokens_per_step / peft_step:.0f}", f"{peft_loss:.3f}",
          f"{peft_ppl:.2f}"],
         ["ratio ctpreg/PEFT", "", f"{peft_step / ours_step:.2f}x", "", ""]],
    ))
    ok = all(map(torch.isfinite, map(torch.tensor, [ours_ppl, peft_ppl, ours_loss, peft_loss])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
