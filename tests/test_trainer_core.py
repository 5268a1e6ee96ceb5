"""Soft-prompt mechanics on tiny random Llamas: scored tokens, gradients, training, data windows."""

import math
from pathlib import Path

import pytest
import torch

from ctpreg.registry import prompted
from ctpreg.registry.errors import InvalidInput
from ctpreg.trainer.data import all_windows, load_corpus, make_windows, split_windows
from ctpreg.trainer.evaluate import perplexity
from ctpreg.trainer.prompt import init_from_vocabulary, mean_nll, prompt_loss, token_nll
from ctpreg.trainer.train import TrainConfig, get_batch, get_lr, train_prompt
from tiny import text_file, tiny_llama


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama()


def test_prompt_positions_are_never_scored(tiny) -> None:
    model = tiny.model
    ids = torch.randint(3, tiny.vocab_size, (2, 12))
    prompt = torch.randn(5, tiny.hidden_size)
    ours = token_nll(model, ids, prompt)
    assert ours.shape == (2, 11)
    embeds = torch.cat([prompt.expand(2, -1, -1), model.get_input_embeddings()(ids)], dim=1)
    logits = model(inputs_embeds=embeds).logits  # reference: HF computes every position
    reference = torch.nn.functional.cross_entropy(
        logits[:, 5:-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    ).view(2, 11)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    plain = model(input_ids=ids).logits
    reference_plain = torch.nn.functional.cross_entropy(
        plain[:, :-1].reshape(-1, plain.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    ).view(2, 11)
    torch.testing.assert_close(token_nll(model, ids), reference_plain, rtol=1e-4, atol=1e-4)


def test_uniform_model_has_perplexity_equal_to_vocab_size_with_or_without_prompt() -> None:
    tiny = tiny_llama(seed=1)
    torch.nn.init.zeros_(tiny.model.lm_head.weight)  # every next-token distribution is uniform: NLL = log V
    windows = torch.randint(3, tiny.vocab_size, (3, 16))
    for prompt in (None, torch.randn(7, tiny.hidden_size)):
        result = perplexity(tiny.model, windows, prompt=prompt, batch_size=2)
        assert result.tokens == 3 * 15, "only tokens 2..L of each window are scored, never prompt positions"
        assert result.ppl == pytest.approx(tiny.vocab_size, rel=1e-5)
        assert result.nll == pytest.approx(45 * math.log(tiny.vocab_size), rel=1e-5)


def test_frozen_model_gets_no_gradients_and_no_lm_head_work_for_prompt(tiny, monkeypatch) -> None:
    calls = []
    real = prompted.head_loss
    monkeypatch.setattr(
        prompted, "head_loss", lambda hidden, *args, **kw: calls.append(hidden.shape) or real(hidden, *args, **kw)
    )
    prompt = torch.nn.Parameter(init_from_vocabulary(tiny.model, 6))
    mean_nll(tiny.model, torch.randint(3, tiny.vocab_size, (2, 10)), prompt).backward()
    assert calls == [torch.Size([2 * 9, tiny.hidden_size])], "the LM head must see only the 9 scoring positions"
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


def test_init_from_vocabulary_copies_embeddings(tiny) -> None:
    prompt = init_from_vocabulary(tiny.model, 4, seed=3)
    table = tiny.model.get_input_embeddings().weight
    assert all(any(torch.equal(row, t) for t in table) for row in prompt)


def test_cosine_schedule_warms_up_then_decays() -> None:
    config = TrainConfig(steps=100, warmup_steps=10, lr=0.01, min_lr_ratio=0.1, lr_schedule="cosine")
    assert get_lr(0, config) == pytest.approx(0.001)
    assert get_lr(9, config) == pytest.approx(0.01)
    assert get_lr(99, config) < get_lr(50, config) < get_lr(10, config)
    assert get_lr(100, config) == pytest.approx(0.001)


def test_batches_cover_every_window_each_epoch() -> None:
    windows = torch.arange(10).view(10, 1)
    config = TrainConfig(batch_size=5, seed=1)
    seen = torch.cat([get_batch(windows, step, config) for step in range(2)]).flatten().tolist()
    assert sorted(seen) == list(range(10))


def test_training_lowers_select_perplexity(tmp_path: Path) -> None:
    tiny = tiny_llama(seed=2)
    windows = make_windows(tiny.tokenizer, load_corpus(str(text_file(tmp_path))), seq_len=32)
    config = TrainConfig(num_tokens=4, steps=40, lr=0.05, warmup_steps=2, eval_every=20, autocast_bf16=False)
    result = train_prompt(tiny.model, windows, config)
    assert result.best_select_ppl < 0.95 * result.initial_select_ppl
    assert [h["step"] for h in result.history] == [0, 20, 40]


def test_the_progress_bar_shows_the_final_check_in_its_last_line(tmp_path: Path, monkeypatch) -> None:
    """The last postfix names the best select perplexity including the check after the last step."""
    import ctpreg.trainer.train as train_module

    postfixes: list[dict[str, str]] = []

    class Bar:
        def __init__(self, iterable, **kwargs) -> None:
            self.iterable = iterable

        def __iter__(self):
            return iter(self.iterable)

        def set_postfix(self, **values: str) -> None:
            postfixes.append(values)

    monkeypatch.setattr(train_module, "progress", Bar)
    tiny = tiny_llama(seed=2)
    windows = make_windows(tiny.tokenizer, load_corpus(str(text_file(tmp_path))), seq_len=32, max_select=4)
    config = TrainConfig(num_tokens=4, steps=4, lr=0.05, warmup_steps=1, eval_every=100, autocast_bf16=False)
    result = train_prompt(tiny.model, windows, config)
    assert [h["step"] for h in result.history] == [0, 4] and result.best_step == 4
    assert len(postfixes) == 4
    assert postfixes[-1]["best"] == f"{result.best_select_ppl:.2f}"
    assert postfixes[-1]["select_ppl"] == f"{result.history[-1]['select_ppl']:.2f}"


def test_resume_continues_to_the_same_prompt(tmp_path: Path) -> None:
    tiny = tiny_llama(seed=2)
    windows = make_windows(tiny.tokenizer, load_corpus(str(text_file(tmp_path))), seq_len=32)
    full = TrainConfig(num_tokens=4, steps=20, lr=0.05, warmup_steps=2, eval_every=10, autocast_bf16=False)
    straight = train_prompt(tiny.model, windows, full, checkpoint=tmp_path / "a.ckpt")
    # Interrupt an identical run at step 10 (after its step-10 checkpoint), then resume it.
    partial = tmp_path / "c.ckpt"
    interrupted = TrainConfig(**full.to_dict())
    import ctpreg.trainer.train as train_module

    original = train_module.get_lr
    calls = {"n": 0}

    def stop_at_ten(step, config):
        if step == 10 and calls["n"] == 0:
            calls["n"] = 1
            raise KeyboardInterrupt
        return original(step, config)

    train_module.get_lr = stop_at_ten
    try:
        with pytest.raises(KeyboardInterrupt):
            train_prompt(tiny.model, windows, interrupted, checkpoint=partial)
    finally:
        train_module.get_lr = original
    resumed = train_prompt(tiny.model, windows, interrupted, checkpoint=partial, resume=True)
    torch.testing.assert_close(resumed.prompt, straight.prompt, rtol=1e-5, atol=1e-6)
    assert resumed.best_select_ppl == pytest.approx(straight.best_select_ppl, rel=1e-5)


def test_resume_refuses_a_checkpoint_from_another_config(tmp_path: Path) -> None:
    tiny = tiny_llama(seed=2)
    windows = make_windows(tiny.tokenizer, load_corpus(str(text_file(tmp_path))), seq_len=32)
    config = TrainConfig(num_tokens=4, steps=2, eval_every=1, autocast_bf16=False)
    train_prompt(tiny.model, windows, config, checkpoint=tmp_path / "x.ckpt")
    other = TrainConfig(num_tokens=4, steps=2, eval_every=1, lr=0.02, autocast_bf16=False)
    with pytest.raises(InvalidInput, match="another config"):
        train_prompt(tiny.model, windows, other, checkpoint=tmp_path / "x.ckpt", resume=True)


def test_a_text_file_capped_at_n_windows_is_spread_through_the_whole_file(tmp_path: Path) -> None:
    tiny = tiny_llama()
    corpus = load_corpus(str(text_file(tmp_path, documents=30)))
    every = all_windows(tiny.tokenizer, corpus, seq_len=32)
    capped = all_windows(tiny.tokenizer, corpus, seq_len=32, limit=3)
    assert every.shape[0] > 10 and capped.shape[0] == 3
    assert torch.equal(capped[0], every[0]) and torch.equal(capped[-1], every[-1])  # from the file's end too


def test_windows_split_by_document_and_fail_on_short_text(tmp_path: Path) -> None:
    tiny = tiny_llama()
    corpus = load_corpus(str(text_file(tmp_path, documents=30)))
    splits = corpus.split()
    assert (len(splits.train), len(splits.select), len(splits.test)) == (24, 3, 3)
    assert sorted(splits.train + splits.select + splits.test) == sorted(corpus.documents)
    windows = make_windows(tiny.tokenizer, corpus, seq_len=32, max_test=2)
    assert windows.train.shape[1] == windows.select.shape[1] == windows.test.shape[1] == 32
    assert windows.test.shape[0] == 2 and len(windows.data_hash) == 64
    torch.testing.assert_close(windows.test, split_windows(tiny.tokenizer, corpus, "test", seq_len=32, limit=2))
    few = tmp_path / "few.txt"
    few.write_text("\n\n".join(f"document {i}" for i in range(9)))
    with pytest.raises(InvalidInput, match="train, select and test need at least 10"):
        load_corpus(str(few)).split()
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(f"only a few words {i}" for i in range(10)))
    with pytest.raises(InvalidInput, match="fewer than one window of 256"):
        make_windows(tiny.tokenizer, load_corpus(str(short)), seq_len=256)
    with pytest.raises(InvalidInput, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidInput, match="unknown dataset"):
        load_corpus("imaginary-corpus")


def test_jsonl_corpus(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "first document"}\n\n{"text": "second"}\n')
    assert load_corpus(str(path)).documents == ("first document", "second")
    path.write_text('{"body": "x"}\n')
    with pytest.raises(InvalidInput, match="'text' field"):
        load_corpus(str(path))


def test_config_checks() -> None:
    with pytest.raises(InvalidInput, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(InvalidInput, match="lr"):
        TrainConfig(lr=2.0)


def test_resume_refuses_a_checkpoint_of_another_model_or_compression(tmp_path: Path) -> None:
    tiny = tiny_llama(seed=2)
    windows = make_windows(tiny.tokenizer, load_corpus(str(text_file(tmp_path))), seq_len=32)
    config = TrainConfig(num_tokens=4, steps=2, eval_every=1, autocast_bf16=False)
    train_prompt(tiny.model, windows, config, checkpoint=tmp_path / "x.ckpt", context="tiny gptq-w3-g128")
    with pytest.raises(InvalidInput, match="belongs to tiny gptq-w3-g128, not tiny gptq-w2-g128"):
        train_prompt(
            tiny.model, windows, config, checkpoint=tmp_path / "x.ckpt", resume=True, context="tiny gptq-w2-g128"
        )


def test_c4_reads_one_shard_not_the_whole_split(monkeypatch) -> None:
    import datasets

    from ctpreg.trainer.data import load_corpus

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return [{"text": "A document of C4."}, {"text": "  "}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    corpus = load_corpus("c4")
    assert corpus.documents == ("A document of C4.",)
    (path, kwargs), = calls
    assert path == "allenai/c4" and kwargs["split"] == "train"
    assert list(kwargs["data_files"].values()) == ["en/c4-train.00000-of-01024.json.gz"]


def test_prompted_forward_loss_is_the_scored_token_mean_of_the_trainer() -> None:
    """One definition of the prompted loss: ``PromptedModel(ids, labels=ids).loss`` averages the NLL of tokens
    2..L exactly as evaluation does (token 1 and prompt positions never count)."""
    from ctpreg.registry.prompted import PromptedModel, token_nll
    from tiny import tiny_llama

    loaded = tiny_llama()
    ids = torch.randint(3, 300, (2, 16), generator=torch.Generator().manual_seed(2))
    prompt = loaded.model.get_input_embeddings().weight[torch.tensor([5, 9, 11])].detach() * 2
    with torch.no_grad():
        loss = PromptedModel(loaded.model, prompt)(ids, labels=ids).loss
        expected = token_nll(loaded.model, ids, prompt).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_kd_loss_is_the_kl_divergence_from_the_teacher_computed_by_hand() -> None:
    student, teacher = tiny_llama(seed=3), tiny_llama(seed=4)
    ids = torch.randint(3, student.vocab_size, (2, 9))
    prompt = torch.randn(4, student.hidden_size)
    with torch.no_grad():
        s_logits = student.model(
            inputs_embeds=torch.cat([prompt.expand(2, -1, -1), student.model.get_input_embeddings()(ids)], dim=1)
        ).logits[:, 4:-1].double()
        t_logits = teacher.model(input_ids=ids).logits[:, :-1].double()
    p_teacher = t_logits.softmax(-1)
    by_hand = (p_teacher * (p_teacher.log() - s_logits.log_softmax(-1))).sum(-1).mean()  # 2 x 8 scored positions
    kd = prompt_loss(student.model, ids, prompt, loss="kd", teacher=teacher.model)
    assert float(kd) == pytest.approx(float(by_hand), rel=1e-4)
    ce = float(mean_nll(student.model, ids, prompt))
    both = prompt_loss(student.model, ids, prompt, loss="ce+kd", teacher=teacher.model)
    assert float(both) == pytest.approx(float(by_hand) + ce, rel=1e-4)
    assert float(prompt_loss(teacher.model, ids, None, loss="kd", teacher=teacher.model)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(InvalidInput, match="needs the uncompressed model"):
        prompt_loss(student.model, ids, prompt, loss="kd")
    with pytest.raises(InvalidInput, match="unknown loss"):
        TrainConfig(loss="mse")


def test_kd_training_moves_the_prompted_model_towards_the_teacher(tmp_path: Path) -> None:
    student, teacher = tiny_llama(seed=5), tiny_llama(seed=6)
    windows = make_windows(student.tokenizer, load_corpus(str(text_file(tmp_path))), seq_len=32)
    config = TrainConfig(num_tokens=4, steps=30, lr=0.05, warmup_steps=2, eval_every=30, autocast_bf16=False,
                         loss="kd")
    with pytest.raises(InvalidInput, match="needs the uncompressed model"):
        train_prompt(student.model, windows, config)
    train_prompt(student.model, windows, config, teacher=teacher.model, checkpoint=tmp_path / "kd.ckpt")
    from safetensors.torch import load_file

    last = load_file(str(tmp_path / "kd.ckpt"))["prompt"]  # where training ended (the best-on-select may be step 0)
    start = init_from_vocabulary(student.model, 4, seed=config.seed)
    with torch.no_grad():
        before = float(prompt_loss(student.model, windows.test, start, loss="kd", teacher=teacher.model))
        after = float(prompt_loss(student.model, windows.test, last, loss="kd", teacher=teacher.model))
    assert after < 0.95 * before, (before, after)  # measured: 0.0251 -> 0.0228
