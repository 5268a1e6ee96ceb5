"""Every compression method on tiny random Llamas: weights change as specified and the prompt still gets exact
gradients through the compressed model."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ctpreg.registry.compression import build_spec
from ctpreg.trainer.compress import CompressionCache, compress
from ctpreg.trainer.compress.magnitude import magnitude_mask
from ctpreg.trainer.compress.modules import sparsity
from ctpreg.trainer.evaluate import perplexity
from ctpreg.registry.prompted import decoder_linears
from ctpreg.trainer.prompt import mean_nll
from tiny import tiny_llama

CALIBRATION = torch.randint(3, 300, (8, 64), generator=torch.Generator().manual_seed(0))


def compressed(tmp_path: Path, method: str, **levels):
    loaded = tiny_llama()
    spec = build_spec(method, **levels)
    return loaded, compress(loaded, spec, calibration=CALIBRATION, cache=CompressionCache(tmp_path / "cache"))


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_weights_take_at_most_2_to_the_bits_values_per_group(tmp_path: Path, bits: int) -> None:
    _, result = compressed(tmp_path, "gptq", bits=bits, group_size=32)
    for name, layer in decoder_linears(result.model).items():
        weight = layer.weight.detach()
        groups = weight.view(weight.shape[0], -1, 32)
        distinct = max(
            len(torch.unique(groups[r, g])) for r in range(0, weight.shape[0], 7) for g in range(groups.shape[1])
        )
        assert distinct <= 2**bits, f"{name}: {distinct} values in a group at {bits} bits"
    assert not result.from_cache
    _, again = compressed(tmp_path, "gptq", bits=bits, group_size=32)
    assert again.from_cache


def test_gptq_fake_quant_logits_match_the_packed_model(tmp_path: Path) -> None:
    from ctpreg.trainer.compress.gptq import dequantize_dense, load_packed

    loaded, result = compressed(tmp_path, "gptq", bits=3, group_size=32)
    folder = next((tmp_path / "cache").rglob("gptq"))
    packed = load_packed(folder)
    ids = torch.randint(3, loaded.vocab_size, (2, 24))
    with torch.no_grad():
        packed_logits = packed(input_ids=ids).logits.float()
        dense_bf16 = dequantize_dense(load_packed(folder), dtype=torch.bfloat16)
        dense_logits = dense_bf16(input_ids=ids).logits.float()
        fp32_logits = result.model(input_ids=ids).logits
    scale = float(packed_logits.abs().max())
    print(f"max |dense bf16 - packed| = {float((dense_logits - packed_logits).abs().max()):.2e}, "
          f"max |dense fp32 - packed| = {float((fp32_logits - packed_logits).abs().max()):.2e}, "
          f"max |logit| = {scale:.2e}")
    assert float((dense_logits - packed_logits).abs().max()) <= 0.02 * scale, "same weights: equal up to bf16 rounding"
    assert float((fp32_logits - packed_logits).abs().max()) <= 0.02 * scale
    agree = (fp32_logits.argmax(-1) == packed_logits.argmax(-1)).float().mean()
    assert agree >= 0.95


def test_gptq_packs_without_compiling_gptqmodel_extension(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The native packer costs a 35-60 s compile on a new machine for a checkpoint the torch path writes identically."""
    monkeypatch.delenv("GPTQMODEL_DISABLE_PACK_EXT", raising=False)
    monkeypatch.setenv("GPTQMODEL_TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    _, result = compressed(tmp_path, "gptq", bits=4, group_size=32)
    assert not result.from_cache
    assert not (tmp_path / "extensions").exists(), "GPTQModel compiled its packing extension"


@pytest.mark.parametrize(
    ("method", "levels"),
    [("sparsegpt", {"sparsity": 0.5}), ("wanda", {"sparsity": 0.6}), ("magnitude", {"sparsity": 0.75}),
     ("sparsegpt", {"nm": "2:4"}), ("magnitude", {"nm": "2:4"})],
)
def test_pruning_reaches_the_requested_sparsity(tmp_path: Path, method: str, levels: dict) -> None:
    _, result = compressed(tmp_path, method, **levels)
    target = result.spec.sparsity
    for name, layer in decoder_linears(result.model).items():
        assert sparsity(layer.weight) == pytest.approx(target, abs=0.01), name
        if "nm" in levels:
            groups = (layer.weight == 0).view(layer.weight.shape[0], -1, 4).sum(-1)
            assert bool((groups >= 2).all()), f"{name}: a 2:4 group keeps more than 2 weights"
    head = result.model.lm_head.weight
    assert sparsity(head) == 0, "the LM head is never pruned"


def test_joint_gptq_and_pruning_keeps_the_zeros(tmp_path: Path) -> None:
    _, result = compressed(tmp_path, "gptq", bits=4, group_size=32, sparsity=0.5)
    assert result.spec.canonical == "gptq-w4-g32+sparsegpt-s50"
    for layer in decoder_linears(result.model).values():
        assert sparsity(layer.weight) >= 0.5


@pytest.mark.parametrize("method", ["bnb-nf4", "bnb-fp4", "bnb-int8"])
def test_bitsandbytes_layers_replace_the_linears(tmp_path: Path, method: str) -> None:
    import bitsandbytes as bnb

    _, result = compressed(tmp_path, method)
    layers = [m for m in result.model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    assert len(layers) == 14  # 7 Linears per block x 2 blocks
    if method != "bnb-int8":
        assert {layer.weight.quant_type for layer in layers} == {method.removeprefix("bnb-")}
        assert all(layer.weight.dtype == torch.uint8 for layer in layers)
    else:
        assert all(layer.weight.dtype == torch.int8 for layer in layers)


def _directional_check(model, ids: torch.Tensor, hidden: int) -> tuple[float, float]:
    """Analytic gradient of the loss along a random direction vs a central finite difference."""
    torch.manual_seed(0)
    prompt = torch.nn.Parameter(0.05 * torch.randn(4, hidden))
    direction = torch.randn(4, hidden)
    direction /= direction.norm()
    mean_nll(model, ids, prompt).backward()
    analytic = float((prompt.grad * direction).sum())
    eps = 1e-2
    with torch.no_grad():
        plus = float(mean_nll(model, ids, prompt + eps * direction))
        minus = float(mean_nll(model, ids, prompt - eps * direction))
    return analytic, (plus - minus) / (2 * eps)


@pytest.mark.parametrize(
    ("method", "levels"),
    [("none", {}), ("gptq", {"bits": 3, "group_size": 32}), ("bnb-nf4", {}), ("bnb-fp4", {}),
     ("sparsegpt", {"sparsity": 0.5}), ("wanda", {"sparsity": 0.5}), ("magnitude", {"sparsity": 0.5})],
)
def test_prompt_gradient_matches_finite_differences_after_an_eval_pass(
    tmp_path: Path, method: str, levels: dict
) -> None:
    loaded, result = compressed(tmp_path, method, **levels)
    ids = torch.randint(3, loaded.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    perplexity(result.model, ids, batch_size=2)  # an eval-mode no-grad pass first (the bitsandbytes CPU trap)
    analytic, numeric = _directional_check(result.model, ids, loaded.hidden_size)
    assert abs(analytic) > 1e-4, "the prompt must receive a gradient"
    assert analytic == pytest.approx(numeric, rel=0.05, abs=1e-4)


def test_int8_gradient_is_the_straight_through_gradient_of_its_dequantized_weights(tmp_path: Path) -> None:
    """LLM.int8 also quantizes activations row by row, so its forward is piecewise constant at the finite-difference
    scale; its backward is the straight-through gradient through the dequantized int8 weights, checked here."""
    import bitsandbytes as bnb

    from ctpreg.trainer.compress.modules import replace_module

    loaded, result = compressed(tmp_path, "bnb-int8")
    ids = torch.randint(3, loaded.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    perplexity(result.model, ids, batch_size=2)
    prompt = torch.nn.Parameter(0.05 * torch.randn(4, loaded.hidden_size, generator=torch.Generator().manual_seed(0)))
    mean_nll(result.model, ids, prompt).backward()
    int8_grad = prompt.grad.clone()
    reference = tiny_llama()
    for name, module in list(result.model.named_modules()):
        if isinstance(module, bnb.nn.Linear8bitLt):
            dense = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            scales = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            dense.weight.data = module.weight.data.float() * scales.float().unsqueeze(1) / 127.0
            replace_module(reference.model, name, dense.requires_grad_(False))
    prompt.grad = None
    mean_nll(reference.model, ids, prompt).backward()
    cosine = torch.nn.functional.cosine_similarity(int8_grad.flatten(), prompt.grad.flatten(), dim=0)
    assert float(cosine) > 0.95


def _reference_mask(weight: np.ndarray, fraction: float) -> np.ndarray:
    order = np.argsort(np.abs(weight).ravel(), kind="stable")
    keep = np.ones(weight.size, dtype=bool)
    keep[order[: int(round(fraction * weight.size))]] = False
    return keep.reshape(weight.shape)


def test_magnitude_mask_matches_numpy_reference() -> None:
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(5))
    for fraction in (0.25, 0.5, 0.9):
        ours = magnitude_mask(weight, sparsity=fraction).numpy()
        np.testing.assert_array_equal(ours, _reference_mask(weight.numpy(), fraction))
    nm = magnitude_mask(weight, n=2, m=4).numpy().reshape(16, 8, 4)
    groups = np.abs(weight.numpy()).reshape(16, 8, 4)
    expected = np.ones_like(groups, dtype=bool)
    np.put_along_axis(expected, np.argsort(groups, axis=-1, kind="stable")[..., :2], False, axis=-1)
    np.testing.assert_array_equal(nm, expected)


def test_cached_pruned_weights_missing_a_layer_are_pruned_again(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    _, first = compressed(tmp_path, "sparsegpt", sparsity=0.5)
    cached = next((tmp_path / "cache").rglob("pruned.safetensors"))
    weights = load_file(str(cached))
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(cached))  # a damaged cache entry
    _, again = compressed(tmp_path, "sparsegpt", sparsity=0.5)
    for name, layer in decoder_linears(again.model).items():
        assert sparsity(layer.weight) == pytest.approx(0.5, abs=0.01), name  # never silently unpruned
        assert torch.equal(layer.weight, decoder_linears(first.model)[name].weight)
    assert set(load_file(str(cached))) == set(weights)


def test_eora_adapter_is_folded_into_the_dense_weights_and_lowers_the_error(tmp_path: Path) -> None:
    """GPTQModel's EoRA on a tiny GPTQ 2-bit model: the dense copy equals the kernel with its adapter, and the
    compensated model is closer to the unquantized one than GPTQ alone on the calibration windows."""
    from ctpreg.trainer.compress.eora import build_eora, load_with_eora
    from ctpreg.trainer.compress.gptq import _quiet_gptqmodel, dequantize_dense, load_packed

    loaded, result = compressed(tmp_path, "gptq", bits=2, group_size=32)
    reference = tiny_llama().model  # the same seed: the weights before quantization
    folder = next((tmp_path / "cache").rglob("gptq"))
    calibration = torch.randint(3, loaded.vocab_size, (8, 32), generator=torch.Generator().manual_seed(0))
    adapter = build_eora(tiny_llama(), folder, calibration, rank=8, folder=tmp_path / "eora-r8")
    assert adapter.size_bytes > 0 and (adapter.folder / "adapter_config.json").is_file()
    compensated = load_with_eora(folder, adapter)
    with _quiet_gptqmodel():
        from gptqmodel import BACKEND, GPTQModel
        from gptqmodel.adapter.adapter import Lora

        kernel = GPTQModel.load(str(folder), device="cpu", backend=BACKEND.GPTQ_TORCH,
                                adapter=Lora(rank=8, path=str(adapter.folder))).model
    plain = dequantize_dense(load_packed(folder))
    with torch.no_grad():
        want = reference(input_ids=calibration).logits
        with_adapter = compensated(input_ids=calibration).logits
        kernel_logits = kernel(input_ids=calibration).logits.float()
        without = plain(input_ids=calibration).logits
    scale = float(kernel_logits.abs().max())
    assert float((with_adapter - kernel_logits).abs().max()) <= 0.02 * scale, "the fold is the kernel's x Wq + x A B"
    assert float((with_adapter - want).norm()) < float((without - want).norm()), "EoRA compensates the error"
