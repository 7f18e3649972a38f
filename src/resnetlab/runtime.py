"""The runtime: which device, which precision, which memory layout, how many threads.

One module decides these so that training, evaluation, prediction and benchmarks agree, and so that
the CPU's capabilities are read in one place (/proc/cpuinfo) instead of several.
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
import warnings
from dataclasses import dataclass
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
        if device.type == "cpu" and not cpu_has_fast_bf16():
            warnings.warn(f"train.precision=bf16 on a CPU without native bf16 ({cpu_model()}): emulated, several "
                          f"times slower than fp32; train.precision=auto picks fp32 on this CPU", stacklevel=2)
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


# ---------------------------------------------------------------------------------------------------
# Distributed data parallel: one process per CPU group or GPU, launched by torchrun.

@dataclass(frozen=True)
class DistContext:
    """Who this process is in a torchrun job (world_size 1: a plain single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")  # this rank's device; collectives run on it (gloo: cpu)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.world_size} processes ({self.backend})" if self.enabled else "1 process"


_CONTEXT = DistContext()
DIST_TIMEOUT_S = float(os.environ.get("RESNETLAB_DIST_TIMEOUT", "300"))


def dist_context() -> DistContext:
    return _CONTEXT


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the torchrun job this process belongs to (a no-op without WORLD_SIZE > 1): gloo on CPU,
    nccl on CUDA with one GPU per local rank. Collectives time out after $RESNETLAB_DIST_TIMEOUT seconds
    (300), so a rank that dies makes the others fail instead of hanging."""
    global _CONTEXT
    if _CONTEXT.enabled:
        return _CONTEXT, _CONTEXT.device
    if not launched_distributed():
        return _CONTEXT, select_device(device_name)
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: launch with "
                        f"torchrun (or resnetlab train --nproc N)")
    import datetime

    import torch.distributed as dist
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = select_device(device_name)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"local rank {local} has no GPU ({torch.cuda.device_count()} visible): use "
                            f"--nproc_per_node <= the GPU count")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"distributed training runs on CPU (gloo) or CUDA (nccl), not {device.type}")
    dist.init_process_group(backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    _CONTEXT = DistContext(rank, world, local, backend, device)
    return _CONTEXT, device


def shutdown_distributed() -> None:
    """Leave the process group (at the end of a run and on error)."""
    global _CONTEXT
    if _CONTEXT.enabled:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()
    _CONTEXT = DistContext()


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over all ranks in place (nothing to do in one process)."""
    if _CONTEXT.enabled:
        import torch.distributed as dist
        for t in tensors:
            dist.all_reduce(t)


def barrier() -> None:
    if _CONTEXT.enabled:
        import torch.distributed as dist
        dist.barrier()


def broadcast_str(text: str) -> str:
    """Rank 0's string on every rank (e.g. the run folder rank 0 chose); sent as bytes, not pickled."""
    if not _CONTEXT.enabled:
        return text
    import torch.distributed as dist
    data = torch.tensor(list(text.encode()), dtype=torch.uint8)
    size = torch.tensor([len(data)], dtype=torch.long)
    dev = _CONTEXT.device
    size = size.to(dev)
    dist.broadcast(size, 0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=dev)
    if _CONTEXT.is_main:
        buf.copy_(data.to(dev))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().tolist()).decode()


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers into every rank's copy of module (in place)."""
    if not _CONTEXT.enabled:
        return
    import torch.distributed as dist
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def broadcast_flag(flag: bool) -> bool:
    """Rank 0's decision on every rank (time-based choices must agree, or collectives would deadlock)."""
    if not _CONTEXT.enabled:
        return flag
    import torch.distributed as dist
    t = torch.tensor([int(flag)], device=_CONTEXT.device)
    dist.broadcast(t, 0)
    return bool(t.item())


def refuse_distributed_launch(what: str) -> None:
    """Commands that have no distributed mode (eval, predict, export) refuse a multi-process launch
    instead of running N copies."""
    if launched_distributed():
        raise UserError(f"launched with WORLD_SIZE={os.environ['WORLD_SIZE']}: {what} runs in one process; "
                        f"only train and finetune run distributed")
