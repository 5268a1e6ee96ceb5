"""``ctpreg demo``: compress, train, publish, then validated serving on each target, in one command."""

from __future__ import annotations

from typing import Annotated

import typer

from ctpreg.registry.report import gap_cells
from ctpreg.trainer.threads import torch_threads

from ..options import JsonFlag
from ..output import emit_json, info, show_logs, stdout_to_stderr, table
from ..state import state
from .trainer_options import CalibrationWindowsOption, DeviceOption, ModelPathOption, ThreadsOption


def demo(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Model slug.")] = "smollm2-135m",
    model_path: ModelPathOption = None,
    train_compression: Annotated[str, typer.Option(
        "--train",
        help="Compression the prompt is trained on; several, comma-separated, train one prompt on all of them.",
    )] = "gptq-w3-g128,gptq-w4-g128,sparsegpt-s50",
    targets: Annotated[str, typer.Option(
        help="Comma-separated targets to validate on as well (those already trained on are validated once).",
    )] = "gptq-w4-g128,sparsegpt-s50,wanda-s50",
    dataset: Annotated[str, typer.Option(
        help="Corpus: its train split trains, select decides, test gives the table.",
    )] = "wiki",
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 100,
    num_tokens: Annotated[int, typer.Option("--num-tokens", min=1, help="Virtual tokens.")] = 50,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per window.")] = 256,
    eval_windows: Annotated[int, typer.Option(
        min=1, help="Windows of the select split (decisions) and of the test split (every figure in the table).",
    )] = 16,
    calibration_windows: CalibrationWindowsOption = 32,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the main job end to end on the embedded defaults (SQLite + local objects + packaged SmolLM2-135M).

    Compress to GPTQ 3-bit, GPTQ 4-bit and SparseGPT 50%, learn one prompt on wiki for the three, publish it, then
    resolve it with validation for each of them and for Wanda 50% (never trained on). Decisions (best step, which
    prompt is served) are made on the corpus' select split and the table is measured on its test split. A second run
    reuses the compressed models, the prompt and the evidence. --train gptq-w3-g128 trains for one target only.
    """
    from ctpreg.trainer.deps import require

    require()
    show_logs()
    from ctpreg.trainer.demo import DemoConfig, run_demo

    config = DemoConfig(
        model=model, model_path=model_path, train_compression=train_compression,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()), dataset=dataset, steps=steps,
        num_tokens=num_tokens, seq_len=seq_len, eval_windows=eval_windows, calibration_windows=calibration_windows,
        device=device,
    )
    with stdout_to_stderr(), torch_threads(threads):
        report = run_demo(config, state(ctx).registry, state(ctx).settings.home)
    if as_json:
        emit_json({"rows": [r.to_dict() for r in report.rows], "total_seconds": report.total_seconds,
                   "step_seconds": report.step_seconds, "reused_prompt": report.reused_prompt,
                   "eval_data": report.eval_data, "select_data": report.select_data,
                   "continue_command": report.continue_command})
        return
    full_note = " (full = GGUF Q4_1 dequantized)" if model == "smollm2-135m" and not model_path else ""
    windows = _describe(report.eval_data)
    table(
        f"{model}: prompt trained on {train_compression}/{dataset}; every row measured on {windows}{full_note}",
        ["target", "ppl full", "ppl compressed", "ppl prompted", "gap recovered (ppl)", "(log-ppl)", "served prompt",
         "how", "seconds"],
        [
            (r.target, f"{r.ppl_full:.2f}", f"{r.ppl_compressed:.2f}",
             f"{r.ppl_prompted:.2f}" if r.ppl_prompted is not None else "", *gap_cells(r), r.served or "none",
             r.note, f"{r.seconds:.0f}")
            for r in report.rows
        ],
    )
    info(f"best step and served prompts chosen on {_describe(report.select_data)}; why:")
    for r in report.rows:
        info(f"  {r.target}: {r.why}")
    info(f"demo finished in {report.total_seconds:.0f}s ({report.step_seconds:.2f}s per training step)"
         + ("; reused the trained prompt" if report.reused_prompt else ""))
    if report.continue_command:
        info(f"train its prompt further from where it stopped: {report.continue_command}")


def _describe(data: dict[str, object]) -> str:
    return (f"{data['corpus']}/{data['split']}, {data['windows']} windows of {data['seq_len']} tokens "
            f"(ids {str(data['token_digest'])[:12]})")
