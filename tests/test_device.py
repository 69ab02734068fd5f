"""Device choice at the edge: what exists here resolves, anything else is a clear DeviceError."""

from __future__ import annotations

import pytest
import torch

import transformer.runtime.device as device_module
from transformer.errors import UserError
from transformer.runtime.device import (
    DeviceError,
    autocast_dtype,
    cpu_has_native_bf16,
    decoding_dtype,
    resolve_device,
)

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
no_mps = pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")


@pytest.mark.parametrize("name", ["cpu", "CPU", " cpu "])
def test_cpu_resolves_to_the_cpu(name: str) -> None:
    assert resolve_device(name) == torch.device("cpu")


@no_cuda
@no_mps
def test_auto_falls_back_to_the_cpu_without_an_accelerator() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device() == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_is_a_device_error_saying_so(name: str) -> None:
    with pytest.raises(DeviceError, match="CUDA is not available here") as info:
        resolve_device(name)
    assert repr(name) in str(info.value)
    assert "cpu" in str(info.value)  # says what to use instead


@no_mps
def test_mps_without_mps_is_a_device_error_saying_so() -> None:
    with pytest.raises(DeviceError, match="MPS is not available here"):
        resolve_device("mps")


@pytest.mark.parametrize("name", ["gpu", "", "cpu:x", "cuda:x", "tpu"])
def test_nonsense_device_names_are_device_errors_listing_the_choices(name: str) -> None:
    with pytest.raises(DeviceError, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device(name)


def test_devices_torch_knows_but_we_do_not_support_are_device_errors() -> None:
    with pytest.raises(DeviceError, match="unsupported device 'meta'"):
        resolve_device("meta")


def test_device_errors_are_user_errors() -> None:
    with pytest.raises(UserError):
        resolve_device("gpu")


AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [(AVX512_BF16, True), (AVX2_ONLY, False), ("flags : amx_bf16 amx_tile\n", True), ("", False)],
)
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo: str, native: bool) -> None:
    assert cpu_has_native_bf16(cpuinfo) is native


def test_autocast_dtype_is_none_for_fp32_and_for_fp16_off_cuda() -> None:
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("fp16", torch.device("cpu")) is None


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_bf16_on_a_cpu_follows_its_native_bf16_support(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    native: bool,
    expected: torch.dtype | None,
) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="transformer.runtime.device"):
        assert autocast_dtype("bf16", torch.device("cpu")) is expected
    warned = [r.getMessage() for r in caplog.records]
    if native:
        assert not warned
    else:
        assert len(warned) == 1 and "fp32 instead" in warned[0] and "AVX512-BF16" in warned[0]


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_bfloat16_decoding_on_a_cpu_follows_its_native_bf16_support(
    monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    assert decoding_dtype(torch.bfloat16, torch.device("cpu")) is expected
    assert decoding_dtype(torch.float32, torch.device("cpu")) is torch.float32
    assert decoding_dtype(torch.bfloat16, torch.device("cuda")) is torch.bfloat16


def test_autocast_dtype_on_cuda_follows_the_precision() -> None:
    # A torch.device object needs no GPU, so the choice is testable everywhere.
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda:0")) is torch.float16
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        autocast_dtype("fp8", torch.device("cuda"))
