"""Choosing the device and the autocast settings, once, at the edge of the program."""

from __future__ import annotations

import torch

from transformer.errors import UserError


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" -> CUDA, else MPS, else CPU; "cpu", "cuda", "cuda:N", "mps" are checked to exist."""
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device {name!r} asked for, but CUDA is not available here; "
                "use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"device {name!r} asked for, but this machine has {count} "
                f"CUDA device(s) (cuda:0 .. cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {name!r} asked for, but MPS is not available here")
        return device
    raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` ("fp32", "bf16", "fp16") on `device`, None for fp32.

    Half precision is a CUDA feature here; on other devices training runs in fp32.
    """
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
