"""Choosing the device and the autocast settings, once, at the edge of the program."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transformer.errors import UserError

logger = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute with bfloat16


class DeviceError(UserError, ValueError):
    """A device was asked for that this machine does not have."""


def resolve_device(name: str = "auto", option: str = "--device") -> torch.device:
    """ "auto" -> CUDA, else MPS, else CPU; "cpu", "cuda", "cuda:N", "mps" are checked to exist.

    `option` is how the user chose the device, named in the errors with what to give instead:
    a flag (`--device`) or a config key (`training.device`, given with `--set KEY=VALUE`).
    """
    name = name.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    choices = "use auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"{option}: unknown device {name!r}; {choices}") from None
    asked = f"{option}: device {name!r} asked for, but"
    instead = f"use {_setting(option, 'cpu')} or {_setting(option, 'auto')}"
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{asked} CUDA is not available here; {instead}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(
                f"{asked} this machine has {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})"
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"{asked} MPS is not available here; {instead}")
        return device
    raise DeviceError(f"{option}: unsupported device {name!r}; {choices}")


def _setting(option: str, value: str) -> str:
    """How to give `value` for `option`: `--device cpu`, or `--set training.device=cpu`."""
    return f"{option} {value}" if option.startswith("-") else f"--set {option}={value}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Elsewhere (AVX2, or no /proc/cpuinfo) PyTorch emulates bfloat16 in fp32 arithmetic,
    which is slower than fp32 itself. `cpuinfo` is the text of /proc/cpuinfo (read if None).
    """
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    words = set(flags.split(":", 1)[-1].split())
    return any(flag in words for flag in BF16_FLAGS)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` ("fp32", "bf16", "fp16") on `device`, None for fp32.

    CUDA: bf16 or fp16 as asked. CPU: bf16 where the CPU has native bfloat16 instructions
    (`cpu_has_native_bf16`); otherwise, and for fp16, fp32 with a warning that says why.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and precision == "bf16" and cpu_has_native_bf16():
        return torch.bfloat16
    reason = (
        "this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX), so bf16 would be "
        "emulated and slower than fp32"
        if device.type == "cpu" and precision == "bf16"
        else f"{precision} mixed precision is for CUDA here"
    )
    logger.warning("training.precision %s: training in fp32 instead: %s", precision, reason)
    return None


def decoding_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The weights' dtype for decoding: bfloat16 on a CPU without native bfloat16 instructions
    falls back to float32 (with a warning), since it would be slower there."""
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "--dtype bfloat16: decoding in float32 instead: this CPU has no native bfloat16 "
            "instructions (AVX512-BF16 or AMX), so bfloat16 would be emulated and slower"
        )
        return torch.float32
    return dtype
