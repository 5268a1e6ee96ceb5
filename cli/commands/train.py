"""Trainer commands: ``ctpreg compress``, ``ctpreg train``, ``ctpreg eval``. They parse, call the trainer, print."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ctpreg.registry.errors import InvalidInput
from ctpreg.registry.files import check_output
from ctpreg.registry.identity import EvalData
from ctpreg.registry.matcher import Target
from ctpreg.registry.refs import check_name
from ctpreg.trainer.threads import torch_threads
from ctpreg.trainer.train_config import DEFAULTS, TrainConfig

from ..options import JsonFlag
from ..output import emit_json, info, show_logs, stdout_to_stderr, table
from ..state import state
from .trainer_options import (
    CompressionRequest, DeviceOption, ModelArg, ModelPathOption, ThreadsOption, compression_options,
)


def _trainer():  # type: ignore[no-untyped-def]
    from ctpreg.trainer.deps import require

    require()
    from ctpreg.trainer import pipeline

    return pipeline


@compression_options(calibrated=True)
def compress(
    ctx: typer.Context,
    model: ModelArg,
    compression: CompressionRequest,
    model_path: ModelPathOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    save: Annotated[Path | None, typer.Option(
        "--save",
        help=("Also write the compressed model to this new folder as a standard checkpoint (GPTQ: GPTQModel's packed "
              "format; pruning: dense weights with zeros), tokenizer included."),
    )] = None,
    save_format: Annotated[str, typer.Option(
        "--format",
        help=("--save layout: native (GPTQ packed) or hf (dense transformers weights, for serving engines without a "
              "GPTQ kernel, e.g. vLLM on CPU)."),
    )] = "native",
    as_json: JsonFlag = False,
) -> None:
    """Compress a model and cache the result (keyed by model, spec and calibration data) for train and eval.

    Example: ctpreg compress --model smollm2-135m --method gptq --bits 3 --save ./smollm2-gptq-w3
    (add --format hf for a folder vLLM serves on CPU)
    """
    if save_format not in ("native", "hf"):
        raise InvalidInput("--format must be native or hf")
    if save is None and save_format != "native":
        raise InvalidInput("--format chooses --save's layout; add --save DIR")
    config = compression.config()
    show_logs()
    with stdout_to_stderr(), torch_threads(threads):
        pipeline = _trainer()
        if save is not None:  # refuse what cannot be saved before compressing
            from ctpreg.trainer.checkpoint import check_savable

            save = check_savable(config.spec, save)
        loaded = pipeline.load_base(model, model_path=model_path, device=device, home=state(ctx).settings.home)
        compressed = pipeline.compress_loaded(loaded, config, state(ctx).settings.home)
        saved = pipeline.save_compressed(loaded, compressed, config, save, save_format) if save is not None else None
    report = {
        "model": model, "compression": config.spec.canonical, "severity_bits": config.spec.severity,
        "seconds": round(compressed.seconds, 1), "from_cache": compressed.from_cache,
        "saved": str(saved) if saved else None,
    }
    if as_json:
        emit_json(report)
    else:
        info(f"{model} {config.spec.canonical}: {'cached' if compressed.from_cache else 'compressed'} "
             f"in {compressed.seconds:.1f}s")
        if saved:
            info(f"checkpoint written to {saved}")


@compression_options(calibrated=True, multi=True, optional=True)
def train(
    ctx: typer.Context,
    *,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="Model slug: smollm2-135m (packaged), llama-7b, opt-1.3b, ... (with --continue: the "
        "parent's)",
    )] = None,
    compression: CompressionRequest | None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the prompt artifact (.safetensors).")],
    dataset: Annotated[str, typer.Option(
        help="Training corpus: wiki, news, wikitext2, c4, ptb or a .txt/.jsonl file.",
    )] = "wiki",
    num_tokens: Annotated[int | None, typer.Option(
        "--num-tokens", min=1, help=f"Virtual tokens in the prompt (default {DEFAULTS.num_tokens}, or the --init "
        "prompt's count; with another count the init prompt's first rows are kept or vocabulary rows added).",
    )] = None,
    steps: Annotated[int, typer.Option(
        min=1, help="Optimizer steps (with --continue: steps beyond the parent's cumulative count).",
    )] = DEFAULTS.steps,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = DEFAULTS.lr,
    lr_schedule: Annotated[str, typer.Option(
        "--lr-schedule", help="wsd (warmup, constant, then a decay over the last fifth: continuable) or cosine.",
    )] = DEFAULTS.lr_schedule,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per window (train, select and test).")] = 256,
    batch_size: Annotated[int, typer.Option(
        min=1, help="Windows per step (per process under a launcher).",
    )] = DEFAULTS.batch_size,
    eval_every: Annotated[int, typer.Option(
        min=1, help="Measure the select split every K steps; the prompt best there is kept.",
    )] = DEFAULTS.eval_every,
    eval_windows: Annotated[int, typer.Option(
        min=1, help="Windows of the select split (best step) and of the test split (reported figures).",
    )] = 40,
    loss: Annotated[str, typer.Option(
        help=("Objective: ce (next-token cross-entropy, the paper's), kd (KL divergence to the uncompressed model's "
              "next-token distribution; it runs the full model too) or ce+kd."),
    )] = DEFAULTS.loss,
    schedule: Annotated[str, typer.Option(
        help="With --targets: cycle (each step trains on one target, in turn) or sum (every target every step).",
    )] = DEFAULTS.schedule,
    seed: Annotated[int, typer.Option(help="Prompt init and batch order.")] = DEFAULTS.seed,
    init: Annotated[str, typer.Option(
        help="Start from: vocab (vocabulary embeddings), auto (the prompt resolve serves for this target, vocab when "
             "there is none) or a REF (a prompt of this model's embedding space). Recorded as the parent.",
    )] = "vocab",
    continue_ref: Annotated[str | None, typer.Option(
        "--continue", help="Train the published prompt REF --steps more steps from its optimizer state, with its "
        "model, compression, data and settings: it ends where one run of the whole length would.",
    )] = None,
    model_path: ModelPathOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT.ckpt if present.")] = False,
    publish: Annotated[bool, typer.Option("--publish", help="Publish the artifact to the registry.")] = False,
    name: Annotated[str | None, typer.Option(help="Prompt name when publishing.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Compress a model, learn a soft prompt on it (model frozen) and write the artifact with honest metrics.

    The corpus splits by document: train (gradients), select (best step) and test (every reported figure). A wsd run
    also writes its optimizer state beside the artifact (OUT.state.safetensors; `publish` sends both), so the
    prompt can be continued later.

    Example: ctpreg train --model smollm2-135m --method gptq --bits 3 --dataset wiki --steps 100 -o p.safetensors
    One prompt for several compressions: --targets gptq-w3-g128,gptq-w4-g128,sparsegpt-s50 (the artifact lists
    them, and resolve ranks it as an exact match for each by its recovery there).
    Compounding: --init auto starts from the best prompt the registry holds for the target;
    ctpreg train --continue NAME:VERSION --steps 300 -o q.safetensors --publish trains a published prompt further.
    """
    check_output(out)  # everything a user typed is checked before minutes of training
    if publish and name is not None:
        check_name(name)
    if continue_ref is not None:
        _check_continue_options(ctx, compression, init)
    elif compression is None or model is None:
        raise InvalidInput("give --method (and its level) or --targets, and --model; or --continue REF")
    show_logs()
    with stdout_to_stderr(), torch_threads(threads):
        pipeline = _trainer()
        from ctpreg.trainer.compounding import continuation, warm_start
        from ctpreg.trainer.distributed import init_from_env, is_main

        registry, client = state(ctx).registry, state(ctx).client
        if continue_ref is not None:
            parent = continuation(continue_ref, steps, registry=registry, client=client)
            if model not in (None, parent.metadata.model):
                raise InvalidInput(f"{continue_ref} was trained on {parent.metadata.model}, not {model}")
            model, compress_configs, train_config = parent.metadata.model, parent.compress_configs, parent.train_config
            corpus = pipeline.load_corpus(dataset if _given(ctx, "dataset") else parent.metadata.dataset)
            data_config = pipeline.DataConfig(
                dataset=corpus.name, seq_len=parent.seq_len, eval_windows=parent.eval_windows,
                max_train_windows=parent.metadata.training.get("train_windows"),
            )
        else:
            assert compression is not None and model is not None
            compress_configs = compression.configs()
            train_config = TrainConfig(  # checked before anything loads; a warm start may change the token count
                num_tokens=num_tokens or DEFAULTS.num_tokens, steps=steps, lr=lr, lr_schedule=lr_schedule,
                batch_size=batch_size, eval_every=eval_every, seed=seed, loss=loss, schedule=schedule,
            )
            data_config = pipeline.DataConfig(dataset=dataset, seq_len=seq_len, eval_windows=eval_windows)
            corpus = pipeline.load_corpus(dataset)
        source = pipeline.locate(model, model_path)
        init_from_env()
        loaded = pipeline.load_model(source, device=device, converted=state(ctx).settings.home / "models")
        if continue_ref is not None:
            origin = parent.origin
        else:
            target = Target.for_spec(source.slug, compress_configs[0].spec)
            origin = warm_start(init, registry=registry, client=client, target=target, fingerprint=loaded.fingerprint,
                                num_tokens=num_tokens, model=loaded.model, seed=seed)
            if origin.init is not None:
                train_config = replace(train_config, num_tokens=int(origin.init.shape[0]))
        trained = pipeline.train_prompt_artifact(
            loaded, compress_configs, data_config, train_config, corpus=corpus, out=out,
            home=state(ctx).settings.home, resume=resume, origin=origin,
        )
        if not is_main():
            return
        published = None
        if publish:
            published = pipeline.register_and_publish(registry, loaded, out, name=name)
    meta = trained.metadata
    metrics = meta.metrics
    report = {
        "artifact": str(out), "sha256": trained.sha256,
        **{k: metrics[k] for k in ("ppl_full", "ppl_compressed", "ppl_prompted", "gap_recovered", "eval_tokens")},
        "eval_data": metrics["eval_data"], "targets": {s.canonical: meta.target_metrics(s) for s in meta.trained_on},
        "step_seconds": trained.result.step_seconds, "tokens_per_second": trained.result.tokens_per_second,
        "best_step": trained.result.best_step, "published": published.prompt.ref if published else None,
    }
    if as_json:
        emit_json(report)
        return
    from ctpreg.registry.report import figure_gap_cells

    rows = []
    for spec in meta.trained_on:
        figures = meta.target_metrics(spec)
        rows.append((spec.canonical, f"{figures['ppl_full']:.2f}", f"{figures['ppl_compressed']:.2f}",
                     f"{figures['ppl_prompted']:.2f}", *figure_gap_cells(figures)))
    table(
        f"{model} + {meta.num_virtual_tokens}-token prompt, best step {trained.result.best_step} chosen on the select "
        f"split ({meta.lineage.steps_total} steps in its lineage); "
        f"measured on {EvalData.from_dict(metrics['eval_data']).describe()}",
        ["target", "ppl full", "ppl compressed", "ppl prompted", "gap recovered (ppl)", "(log-ppl)"], rows,
    )
    info(f"{trained.result.step_seconds:.2f} s/step, {trained.result.tokens_per_second:.0f} tokens/s; wrote {out} "
         f"(sha256 {trained.sha256[:12]})" + (f"; published {published.prompt.ref}" if published else ""))
    if published and meta.lineage.state_sha256:
        info(f"continue it: ctpreg train --continue {published.prompt.ref} --steps {DEFAULTS.steps} "
             f"-o {out.with_name(out.stem + '-continued.safetensors')} --publish")


CONTINUE_TAKES = ("num_tokens", "lr", "lr_schedule", "seq_len", "batch_size", "eval_windows", "loss", "schedule",
                  "seed", "calibration", "calibration_windows", "resume")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed option ``name`` (typer bundles its own click, so the source is compared by name)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _check_continue_options(ctx: typer.Context, compression: CompressionRequest | None, init: str) -> None:
    """--continue runs with its parent's settings: an option that would change them is refused, not ignored."""
    given = [f"--{name.replace('_', '-')}" for name in CONTINUE_TAKES if _given(ctx, name)]
    if compression is not None:
        given.append("--method/--targets")
    if init != "vocab":
        given.append("--init")
    if given:
        raise InvalidInput(f"--continue trains with its parent's model, compression, data and settings; drop "
                           f"{', '.join(given)}")


@compression_options(calibrated=True)
def evaluate(
    ctx: typer.Context,
    model: ModelArg,
    compression: CompressionRequest,
    prompt: Annotated[str | None, typer.Option(help="A prompt artifact path or a registry REF.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Evaluate on this corpus' test split.")] = None,
    text_file: Annotated[Path | None, typer.Option(
        "--text-file", help="Evaluate on windows of this whole file (unsplit; see --max-windows).",
    )] = None,
    max_windows: Annotated[int, typer.Option(
        "--max-windows", min=1, help="At most this many windows, evenly spaced through the test split or the file.",
    )] = 40,
    seq_len: Annotated[int, typer.Option(min=2, help="Tokens per window.")] = 256,
    tasks: Annotated[Path | None, typer.Option(help="JSONL multiple-choice tasks: question, choices, answer.")] = None,
    model_path: ModelPathOption = None,
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Perplexity of the full, compressed and prompted model on the same windows (scored tokens only)."""
    compress_config = compression.config()
    show_logs()
    with stdout_to_stderr(), torch_threads(threads):
        pipeline = _trainer()
        loaded = pipeline.load_base(model, model_path=model_path, device=device, home=state(ctx).settings.home)
        prompt_tensor = pipeline.load_prompt_for(loaded, prompt, state(ctx).client) if prompt else None
        measured_on = pipeline.eval_set(
            loaded.tokenizer, dataset=dataset, text_file=text_file, seq_len=seq_len, max_windows=max_windows
        )
        windows = measured_on.windows
        from ctpreg.trainer.evaluate import load_tasks, multiple_choice_accuracy

        task_items = load_tasks(tasks) if tasks else None
        base_accuracy = multiple_choice_accuracy(loaded.model, loaded.tokenizer, task_items) if task_items else None
        report, compressed = pipeline.evaluate_conditions(
            loaded, compress_config, windows, home=state(ctx).settings.home, prompt=prompt_tensor
        )
        if task_items:
            report["accuracy_full"] = base_accuracy
            report["accuracy_compressed"] = multiple_choice_accuracy(compressed.model, loaded.tokenizer, task_items)
            if prompt_tensor is not None:
                report["accuracy_prompted"] = multiple_choice_accuracy(
                    compressed.model, loaded.tokenizer, task_items, prompt=prompt_tensor
                )
    report["model"], report["eval_data"] = model, measured_on.data.to_dict()
    if as_json:
        emit_json(report)
        return
    keys = [k for k in ("ppl_full", "ppl_compressed", "ppl_prompted", "gap_recovered", "tokens",
                        "accuracy_full", "accuracy_compressed", "accuracy_prompted") if k in report]
    table(f"{model} {report['compression']} on {measured_on.data.describe()}", keys, [[_fmt(report[k]) for k in keys]])


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
