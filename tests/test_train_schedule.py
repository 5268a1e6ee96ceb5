"""Warmup–stable–decay and compounding runs: a stable-phase state continues bitwise into a longer run, a warm start
starts where it is told, and a state that does not belong to the run is refused."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ctpreg.registry.errors import InvalidInput
from ctpreg.trainer.data import load_corpus, make_windows
from ctpreg.trainer.evaluate import perplexity
from ctpreg.trainer.stable_state import StableState
from ctpreg.trainer.train import TrainConfig, check_continuation, get_lr, stable_end, train_prompt
from tiny import text_file, tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=2)


@pytest.fixture(scope="module")
def windows(tiny, tmp_path_factory):
    corpus = load_corpus(str(text_file(tmp_path_factory.mktemp("corpus"))))
    return make_windows(tiny.tokenizer, corpus, seq_len=32, max_select=4)


def config(steps: int, **overrides) -> TrainConfig:
    settings = dict(num_tokens=4, steps=steps, lr=0.05, warmup_steps=2, eval_every=10, autocast_bf16=False)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def short_run(tiny, windows):
    return train_prompt(tiny.model, windows, config(10), context="tiny magnitude-s50")


def test_wsd_warms_up_holds_then_decays_to_the_floor() -> None:
    wsd = TrainConfig(steps=100, warmup_steps=10, lr=0.01, min_lr_ratio=0.1, decay_fraction=0.2)
    assert stable_end(wsd) == 80
    assert get_lr(0, wsd) == pytest.approx(0.001)
    assert all(get_lr(step, wsd) == 0.01 for step in range(9, 80)), "constant through the stable phase"
    decay = [get_lr(step, wsd) for step in range(79, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:])), "strictly decreasing from step 80"
    assert get_lr(99, wsd) == pytest.approx(0.001) and get_lr(100, wsd) == pytest.approx(0.001)
    # 1-sqrt: half way through the decay the lr has fallen by 1 - sqrt(1/2) of the way to the floor.
    assert get_lr(89, wsd) == pytest.approx(0.001 + 0.009 * (1 - math.sqrt(0.5)))


def test_schedule_options_are_checked() -> None:
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(InvalidInput, match="decay_fraction"):
            TrainConfig(decay_fraction=fraction)
    with pytest.raises(InvalidInput, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")
    assert TrainConfig().lr_schedule == "wsd"


def test_every_continuation_train_prompt_accepts_replays_the_same_learning_rates() -> None:
    """The state is taken at its run's ``stable_end``; a longer run may start from it only if its own steps before
    that point had the very same learning rates (so the state is a true prefix of it)."""
    accepted = refused = 0
    for steps_a in range(1, 41):
        for fraction_a in (0.1, 0.2, 0.5, 0.9):
            first = config(steps_a, decay_fraction=fraction_a, warmup_steps=3)
            at = stable_end(first)
            for steps_b in range(1, 61):
                for fraction_b in (0.1, 0.2, 0.5):
                    second = config(steps_b, decay_fraction=fraction_b, warmup_steps=3)
                    try:
                        check_continuation(second, at)
                    except InvalidInput:
                        refused += 1
                        continue
                    accepted += 1
                    assert steps_b > at and stable_end(second) >= at
                    assert [get_lr(s, first) for s in range(at)] == [get_lr(s, second) for s in range(at)]
    assert accepted > 1000 and refused > 1000


def test_steps_beyond_the_state_are_not_enough_when_the_decay_would_start_before_it(short_run, tiny, windows) -> None:
    state = short_run.stable_state
    assert state.step == 8
    # 9 steps exceed step 8, but a 9-step run decays from step 7: its step 7 was not taken at constant lr.
    with pytest.raises(InvalidInput, match="decay would start at step 7, before the state's step 8.*at least 10"):
        train_prompt(tiny.model, windows, config(9), start=state, context="tiny magnitude-s50")
    with pytest.raises(InvalidInput, match="steps must exceed the state's step 8"):
        check_continuation(config(8, decay_fraction=0.5), 8)


def test_continuing_the_stable_state_ends_bitwise_where_one_long_run_ends(short_run, tiny, windows) -> None:
    """10 steps (stable until 8), then 40 from its state, against 40 straight: same batches by step index, and
    the continued run replays steps 8..31 at the constant lr and decays exactly as the long run does."""
    straight = train_prompt(tiny.model, windows, config(40), context="tiny magnitude-s50")
    state = short_run.stable_state
    continued = train_prompt(tiny.model, windows, config(40), start=state, context="tiny magnitude-s50")
    assert torch.equal(continued.final_prompt, straight.final_prompt)
    assert continued.history[-1] == straight.history[-1] and continued.history[-1]["step"] == 40
    assert [h["step"] for h in continued.history] == [8, 10, 20, 30, 40]
    assert continued.history[1:] == straight.history[1:], "every check on the same step measures the same prompt"
    assert continued.first_step == 8 and continued.losses == straight.losses[8:]
    assert len(straight.losses) == 40 and straight.first_step == 0
    ours, theirs = continued.stable_state, straight.stable_state
    assert ours.step == theirs.step == 32 and ours.snapshot.adam_step == theirs.snapshot.adam_step == 32
    for key, value in ours.to_arrays()[0].items():
        assert np.array_equal(value, theirs.to_arrays()[0][key]), key
    # The first run's state at step 8 is the 40-step run's prompt at step 8 (warmup and stable lr do not depend on
    # the length), so continuing with the first run's own length reproduces the first run.
    again = train_prompt(tiny.model, windows, config(10), start=state, context="tiny magnitude-s50")
    assert torch.equal(again.final_prompt, short_run.final_prompt)
    assert again.losses == short_run.losses[8:]


def test_a_state_is_plain_arrays_and_json_and_comes_back_the_same(short_run) -> None:
    state = short_run.stable_state
    arrays, meta = state.to_arrays()
    assert sorted(arrays) == ["exp_avg", "exp_avg_sq", "prompt"]
    assert all(a.dtype == np.float32 and a.shape == (4, 64) for a in arrays.values())
    assert json.loads(json.dumps(meta)) == meta
    assert sorted(meta) == ["adam_step", "config_digest", "context", "data_hash", "step"]
    assert meta["step"] == meta["adam_step"] == 8 and meta["context"] == "tiny magnitude-s50"
    back = StableState.from_arrays(arrays, meta)
    assert back.to_arrays()[1] == meta
    assert all(np.array_equal(back.to_arrays()[0][k], arrays[k]) for k in arrays)


def _tampered(state: StableState, **changes) -> tuple[dict, dict]:
    arrays, meta = state.to_arrays()
    for key, value in changes.items():
        if key in arrays:
            arrays[key] = value(arrays[key])
        elif value is None:
            meta.pop(key)
        else:
            meta[key] = value
    return arrays, meta


@pytest.mark.parametrize(("changes", "message"), [
    ({"prompt": lambda a: a[:3]}, "one shape"),
    ({"exp_avg": lambda a: np.where(a == a.flat[0], np.nan, a)}, "NaN or Inf"),
    ({"exp_avg_sq": lambda a: -a - 1}, "negative"),
    ({"prompt": lambda a: a.astype(np.float64)}, "float32"),
    ({"prompt": lambda a: a[None]}, "2-D"),
    ({"step": "8"}, "step must be an integer"),
    ({"step": True}, "step must be an integer"),
    ({"adam_step": 9}, "adam_step"),
    ({"data_hash": "abc"}, "data_hash"),
    ({"context": 3}, "context must be text"),
    ({"config_digest": None}, "missing config_digest"),
    ({"origin": "x"}, "unknown origin"),
])
def test_a_malformed_state_is_refused_on_the_way_in(short_run, changes, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        StableState.from_arrays(*_tampered(short_run.stable_state, **changes))


def test_missing_or_extra_arrays_are_refused(short_run) -> None:
    arrays, meta = short_run.stable_state.to_arrays()
    with pytest.raises(InvalidInput, match="exp_avg_sq"):
        StableState.from_arrays({k: v for k, v in arrays.items() if k != "exp_avg_sq"}, meta)
    with pytest.raises(InvalidInput, match="best"):
        StableState.from_arrays({**arrays, "best": arrays["prompt"]}, meta)


@pytest.mark.parametrize(("change", "kwargs", "message"), [
    ({"data_hash": "0" * 64}, {}, "trained on other data"),
    ({"context": "tiny gptq-w3-g128"}, {}, "belongs to tiny gptq-w3-g128, not tiny magnitude-s50"),
    ({}, {"lr": 0.02}, "another training config"),
    ({}, {"seed": 1}, "another training config"),
    ({}, {"num_tokens": 5}, r"holds a \[4, 64\] prompt; this run trains \[5, 64\]"),
    ({}, {"lr_schedule": "cosine"}, "continuing needs lr_schedule wsd"),
])
def test_a_state_from_another_run_is_refused(short_run, tiny, windows, change, kwargs, message) -> None:
    state = dataclasses.replace(short_run.stable_state, **change)
    with pytest.raises(InvalidInput, match=message):
        train_prompt(tiny.model, windows, config(40, **kwargs), start=state, context="tiny magnitude-s50")


def test_the_decay_and_evaluation_may_change_when_continuing(short_run, tiny, windows) -> None:
    longer = config(12, decay_fraction=0.3, min_lr_ratio=0.0, eval_every=4, eval_windows=2)
    result = train_prompt(tiny.model, windows, longer, start=short_run.stable_state, context="tiny magnitude-s50")
    assert [h["step"] for h in result.history] == [8, 12] and len(result.losses) == 4


def test_a_warm_start_starts_from_the_given_prompt(tiny, windows) -> None:
    init = tiny.model.get_input_embeddings().weight[[7, 8, 9, 10]].detach() * 1.5
    result = train_prompt(tiny.model, windows, config(1), init=init)
    select = perplexity(tiny.model, windows.select, prompt=init, batch_size=4).ppl
    assert result.history[0] == {"step": 0, "select_ppl": select} and result.initial_select_ppl == select
    with pytest.raises(InvalidInput, match=r"initial prompt is \[3, 64\]; this run trains \[4, 64\]"):
        train_prompt(tiny.model, windows, config(1), init=init[:3])
    with pytest.raises(InvalidInput, match="NaN or Inf"):
        train_prompt(tiny.model, windows, config(1), init=init * float("nan"))


def test_init_and_start_exclude_each_other(short_run, tiny, windows) -> None:
    with pytest.raises(InvalidInput, match="not both"):
        train_prompt(tiny.model, windows, config(40), init=short_run.prompt, start=short_run.stable_state,
                     context="tiny magnitude-s50")


def test_a_cosine_run_has_no_stable_state(tiny, windows) -> None:
    result = train_prompt(tiny.model, windows, config(2, lr_schedule="cosine"))
    assert result.stable_state is None and len(result.losses) == 2


def test_resume_under_wsd_keeps_the_stable_state_taken_before_the_interruption(tiny, windows, tmp_path: Path,
                                                                              monkeypatch) -> None:
    """20 steps, stable until 16, checkpoints at 9 and 18; the run dies at step 19 and resumes from 18."""
    run = config(20, eval_every=9)
    straight = train_prompt(tiny.model, windows, run, context="c")
    import ctpreg.trainer.train as train_module

    original = train_module.get_lr

    def die_at_19(step, cfg):
        if step == 19:
            raise KeyboardInterrupt
        return original(step, cfg)

    monkeypatch.setattr(train_module, "get_lr", die_at_19)
    with pytest.raises(KeyboardInterrupt):
        train_prompt(tiny.model, windows, run, checkpoint=tmp_path / "run.ckpt", context="c")
    monkeypatch.setattr(train_module, "get_lr", original)
    resumed = train_prompt(tiny.model, windows, run, checkpoint=tmp_path / "run.ckpt", resume=True, context="c")
    assert torch.equal(resumed.final_prompt, straight.final_prompt)
    assert resumed.stable_state.step == 16 and resumed.losses == straight.losses and resumed.first_step == 0
    for key, value in resumed.stable_state.to_arrays()[0].items():
        assert np.array_equal(value, straight.stable_state.to_arrays()[0][key]), key
    assert resumed.history == straight.history


def test_resume_refuses_a_checkpoint_that_started_from_another_prompt(tiny, windows, tmp_path: Path) -> None:
    init = tiny.model.get_input_embeddings().weight[[1, 2, 3, 4]].detach().clone()
    train_prompt(tiny.model, windows, config(2, eval_every=1), checkpoint=tmp_path / "w.ckpt", init=init)
    with pytest.raises(InvalidInput, match="started from another prompt"):
        train_prompt(tiny.model, windows, config(2, eval_every=1), checkpoint=tmp_path / "w.ckpt", resume=True)
    resumed = train_prompt(tiny.model, windows, config(2, eval_every=1), checkpoint=tmp_path / "w.ckpt",
                           resume=True, init=init)
    assert [h["step"] for h in resumed.history] == [0, 1, 2]
