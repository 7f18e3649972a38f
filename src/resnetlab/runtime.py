"""The runtime: which device, which precision, which memory layout, how many threads.

One module decides these so that training, evaluation, prediction and benchmarks agree, and so that
the CPU's capabilities are read in one place (/proc/cpuinfo) instead of several.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

import torch

from .errors import UserError


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where /proc/cpuinfo does not exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX or AVX512-BF16). Elsewhere oneDNN emulates
    bf16 and it is much slower than fp32 (measured 8-11x slower on an AVX2-only AMD EPYC)."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def select_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for 'auto'; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name!r} requested but MPS is not available; use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return dev


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None = fp32). 'auto': bf16 on CUDA with bf16 support (else fp16) and on CPUs
    with native bf16; fp32 elsewhere."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise UserError("train.precision fp16 is for CUDA/MPS; on a CPU use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


def use_channels_last(setting: str, device: torch.device) -> bool:
    # channels_last measured faster or equal for our nets in fp32 and bf16 on CPU, and on CUDA tensor cores.
    if setting == "auto":
        return device.type in ("cpu", "cuda")
    return setting == "true"


def autocast_for(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for a precision choice (a no-op for fp32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_and_backends(seed: int, device: torch.device, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def describe_device(device: torch.device, amp: torch.dtype | None) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_model()}, {torch.get_num_threads()} threads"
    return f"{device.type} ({name}), {'fp32' if amp is None else str(amp).replace('torch.', '')}"


def refuse_distributed_launch() -> None:
    """Distributed training is not built yet: under torchrun every rank would train its own model and
    report a false speed, so a multi-process launch is refused rather than half-supported."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']}: distributed training is not "
                        f"supported yet; run one process (without torchrun)")
