"""Device choice at the edge: what exists here resolves, anything else is a clear DeviceError."""

from __future__ import annotations

import pytest
import torch

from transformer.device import DeviceError, autocast_dtype, resolve_device
from transformer.errors import UserError

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


def test_autocast_dtype_is_none_for_fp32_and_off_cuda() -> None:
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is None
    assert autocast_dtype("fp16", torch.device("cpu")) is None


def test_autocast_dtype_on_cuda_follows_the_precision() -> None:
    # A torch.device object needs no GPU, so the choice is testable everywhere.
    assert autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cuda:0")) is torch.float16
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        autocast_dtype("fp8", torch.device("cuda"))
