"""Linear layers' fast path (`transformer.model.fast`): oneDNN computes F.linear's numbers,
forward and backward, and is taken exactly where `onednn_linear_pays` says (training, float32
on a CPU, enough rows, not under autocast), with a bounded number of product shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import transformer.model.fast as linear_module
from transformer.model.attention import QKVProjection
from transformer.model.fast import (
    MIN_ROWS,
    ROW_STEP,
    FastLinear,
    FastQKVProjection,
    linear,
    onednn_available,
    onednn_linear,
    onednn_linear_pays,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")


def gradients(function, x, weight, bias):  # type: ignore[no-untyped-def]
    """The output of function(x, weight, bias) and the gradients of x, weight, bias (None for
    an absent bias) for a fixed random upstream gradient."""
    leaves = [
        None if t is None else t.detach().clone().requires_grad_(t.requires_grad)
        for t in (x, weight, bias)
    ]
    out = function(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * upstream).sum().backward()
    return out.detach(), [None if t is None else t.grad for t in leaves]


def assert_same_gradients(got: list, want: list) -> None:  # type: ignore[type-arg]
    for fast, reference in zip(got, want, strict=True):
        assert (fast is None) == (reference is None)
        if reference is not None:
            torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("shape", [(700, 256), (27, 19, 256), (2, 256, 256), (100, 256)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_linear_and_its_gradients_equal_f_linear(
    shape: tuple[int, ...], with_bias: bool
) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(1024, 256, requires_grad=True) / 16
    bias = torch.randn(1024, requires_grad=True) if with_bias else None
    fast, fast_grads = gradients(onednn_linear, x, weight, bias)
    ref, ref_grads = gradients(F.linear, x, weight, bias)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert_same_gradients(fast_grads, ref_grads)


@needs_onednn
def test_strided_inputs_and_a_slice_of_a_stacked_weight_give_f_linears_numbers() -> None:
    # Cross-attention projects with W^K, W^V, a row slice of the stacked [W^Q | W^K | W^V];
    # the input may be a transposed view.
    torch.manual_seed(1)
    x_t = torch.randn(256, 300, requires_grad=True)  # x = x_tᵀ: (300, 256), not contiguous
    stacked = torch.randn(768, 256, requires_grad=True) / 16
    bias = torch.randn(512, requires_grad=True)
    fast, fast_grads = gradients(
        lambda a, w, b: onednn_linear(a.t(), w[256:], b), x_t, stacked, bias
    )
    ref, ref_grads = gradients(lambda a, w, b: F.linear(a.t(), w[256:], b), x_t, stacked, bias)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    assert_same_gradients(fast_grads, ref_grads)
    assert fast_grads[1][:256].abs().sum() == 0  # W^Q: not used, no gradient


@needs_onednn
@pytest.mark.parametrize("frozen", ["x", "weight"])
def test_only_the_gradients_asked_for_are_computed(frozen: str) -> None:
    torch.manual_seed(2)
    x = torch.randn(300, 64, requires_grad=frozen != "x")
    weight = torch.randn(32, 64, requires_grad=frozen != "weight")
    onednn_linear(x, weight).sum().backward()
    assert (x.grad is None) == (frozen == "x")
    assert (weight.grad is None) == (frozen == "weight")
    ref = (torch.ones(300, 32) @ weight.detach()) if frozen == "weight" else None
    if ref is not None:
        torch.testing.assert_close(x.grad, ref)


@needs_onednn
def test_the_fast_path_gives_the_same_bits_every_time() -> None:
    # Exact resume replays a run: the same product must round the same way each time.
    torch.manual_seed(3)
    x, weight, bias = torch.randn(300, 256), torch.randn(1024, 256), torch.randn(1024)
    first = onednn_linear(x, weight, bias)
    assert all(torch.equal(first, onednn_linear(x, weight, bias)) for _ in range(3))


def test_onednn_pays_in_training_for_float32_on_a_cpu_for_enough_rows() -> None:
    weight = torch.empty(256, 256)
    on = onednn_available()
    assert onednn_linear_pays(torch.empty(MIN_ROWS, 256), weight, training=True) == on
    assert onednn_linear_pays(torch.empty(MIN_ROWS + 77, 256), weight, training=True) == on
    assert onednn_linear_pays(torch.empty(ROW_STEP, 256), weight, training=True) == on
    assert onednn_linear_pays(torch.empty(4, 128, 256), weight, training=True) == on
    assert not onednn_linear_pays(torch.empty(ROW_STEP - 1, 256), weight, training=True)
    assert not onednn_linear_pays(torch.empty(ROW_STEP + 64, 256), weight, training=True)
    assert not onednn_linear_pays(torch.empty(0, 256), weight, training=True)
    enough = torch.empty(MIN_ROWS, 256)
    assert not onednn_linear_pays(enough, weight, training=False)  # decoding: MKL
    assert not onednn_linear_pays(enough.double(), weight.double(), training=True)
    assert not onednn_linear_pays(enough.bfloat16(), weight.bfloat16(), training=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_linear_pays(enough, weight, training=True)


def test_where_onednn_does_not_pay_linear_is_f_linear_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_onednn(*args: object) -> None:
        raise AssertionError("oneDNN called where it does not pay")

    monkeypatch.setattr(linear_module, "onednn_matmul", no_onednn)
    torch.manual_seed(4)
    weight, bias = torch.randn(256, 256), torch.randn(256)
    few_rows = torch.randn(3, 5, 256)  # 15 rows
    assert torch.equal(linear(few_rows, weight, bias, True), F.linear(few_rows, weight, bias))
    many_rows = torch.randn(ROW_STEP * 2, 256)
    with torch.no_grad():  # decoding and validation
        assert torch.equal(linear(many_rows, weight, bias), F.linear(many_rows, weight, bias))
    doubles = many_rows.double()
    assert torch.equal(linear(doubles, weight.double()), F.linear(doubles, weight.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear(many_rows, weight, bias)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, F.linear(many_rows, weight, bias))


@needs_onednn
def test_a_training_batch_takes_the_fast_path_with_few_product_shapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # oneDNN compiles and keeps kernels for every shape it multiplies: batches of 1,024 to
    # 1,279 rows must reach it as one number of rows (1,024; the rest goes to MKL).
    row_counts: set[int] = set()
    real = linear_module.onednn_matmul
    monkeypatch.setattr(
        linear_module,
        "onednn_matmul",
        lambda x, *rest: row_counts.add(x.size(0)) or real(x, *rest),
    )
    layer = FastLinear(256, 1024)
    for rows in range(1024, 1280, 7):
        x = torch.randn(rows, 256, requires_grad=True)
        out = layer(x)
        out.sum().backward()
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    assert row_counts == {1024}  # forward and the gradient of x


def test_the_fast_linear_is_an_nn_linear_with_its_parameters_and_numbers() -> None:
    torch.manual_seed(5)
    reference = nn.Linear(256, 512)
    layer = FastLinear(256, 512)
    assert isinstance(layer, nn.Linear)
    assert layer.state_dict().keys() == reference.state_dict().keys()
    layer.load_state_dict(reference.state_dict())
    x = torch.randn(4, 40, 256)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # decoding: no autograd graph, the same numbers
        torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("part", ["q", "kv", "all"])
def test_the_fast_stacked_projection_gives_each_part_and_its_gradients_as_the_plain_one(
    part: str,
) -> None:
    # Cross-attention multiplies by a part of [W^Q | W^K | W^V]: that product too takes the
    # fast path in training, with the numbers of the plain layer.
    torch.manual_seed(6)
    plain = QKVProjection(256, 128)
    fast = FastQKVProjection(256, 128)
    fast.load_state_dict(plain.state_dict())
    outputs = {"q": plain.q_outputs, "kv": plain.kv_outputs, "all": slice(None)}[part]
    x = torch.randn(ROW_STEP * 4, 256)
    upstream = torch.randn(plain(x, outputs).shape)
    results = []
    for layer in (fast, plain):
        out = layer(x, outputs)
        (out * upstream).sum().backward()
        results.append([out, layer.weight.grad, layer.bias.grad])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
