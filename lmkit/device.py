"""Where computation runs: device choice, mixed precision, seeding, the torchrun/DDP environment, and
what a piece of work costs there (``Measure``: wall time and peak memory).

One place for what differs between a laptop CPU, an Apple GPU and an NVIDIA GPU (or several), so the
trainer and the notebooks never branch on hardware themselves.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

# Dense bf16 peak FLOP/s of common accelerators, for model-FLOPs utilisation (vendor data sheets).
PEAK_FLOPS = {
    "H100": 989e12,  # H100 SXM, bf16 dense
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10": 125e12,
    "T4": 65e12,  # fp16
}


DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")


def check_device_name(requested) -> None:
    """Refuse a device name lmkit cannot use (ValueError): ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``.
    Whether this machine has it is ``auto_device``'s question."""
    kind, _, index = str(requested).partition(":") if isinstance(requested, str) else ("", "", "")
    if kind not in DEVICE_KINDS or (index and (kind != "cuda" or not index.isdigit())):
        raise ValueError(f"device={requested!r} is not a device lmkit can use; use 'auto' (cuda > mps > cpu), "
                         f"'cpu', 'cuda', 'cuda:N' or 'mps'")


def auto_device(requested: str = "auto") -> torch.device:
    """``"auto"`` picks cuda > mps > cpu; anything else is checked (``check_device_name``, and that this
    machine has it) and passed to ``torch.device``."""
    if not isinstance(requested, torch.device):
        check_device_name(requested)
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={requested!r} but CUDA is not available here; use device='auto' or 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={requested!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={requested!r} but MPS (Apple GPU) is not available here; use 'auto' or 'cpu'")
    return device


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """Mixed-precision dtype: bf16 on CUDA GPUs that support it, none (fp32) elsewhere."""
    if requested == "float32":
        return None
    if requested not in ("auto", "bfloat16"):
        raise ValueError(f"dtype={requested!r}; use 'auto', 'bfloat16' or 'float32'")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if requested == "bfloat16":
        raise ValueError(f"dtype='bfloat16' needs a CUDA GPU with bf16 support; this is {device}")
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Context manager for the forward pass: ``torch.autocast`` when a dtype is set, else a no-op."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def enable_tf32() -> None:
    """Let fp32 matmuls use TF32 tensor cores on Ampere+ GPUs (about 8x faster, ~1e-3 relative error)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and all GPUs)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def available_memory(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can still be allocated on ``device``: free GPU memory on CUDA, available RAM on the
    CPU and on MPS (which shares it); None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def gib(n_bytes: float) -> str:
    """``n_bytes`` for a person: ``1.5 GB``, ``512 MB``, ``3.2 TB`` (powers of 1024)."""
    if n_bytes >= 1 << 60:  # beyond any machine (and beyond a float, for a forged config's sizes)
        return f"~10^{len(str(int(n_bytes))) - 1} bytes"
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{n_bytes / 1024:.0f} kB"


def peak_flops(device: torch.device) -> float | None:
    """Published bf16 peak of a known GPU, or None (on CPU, measure it: ``benchmarks`` does)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def measure_matmul_flops(device=None, size: int = 1024, repeats: int = 8) -> float:
    """FLOP/s of a square ``size`` matmul measured now (median of ``repeats``): fp32 on CPU, bf16 on
    CUDA. The reference for MFU where no published peak applies (a CPU reaches about this on large
    matmuls, so MFU against it says how much of the step is useful matmul work)."""
    device = torch.device(device or "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):  # the first run warms caches and picks the kernel
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return 2 * size**3 / times[len(times) // 2]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_request: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK env vars).

    nccl with one GPU per process on CUDA, gloo on CPU. Without torchrun this returns rank 0 of 1.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), auto_device(device_request)
    import torch.distributed as dist

    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    device = auto_device(device_request)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return info, device


def gathered(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: under FSDP a parameter, a gradient or a norm or sum over one is a DTensor of this
    process's shard, still to be reduced over the processes (``full_tensor`` does it; every process
    must call it). Anything else is returned as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _release_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS, so RSS growth is measured from a low base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: measure from wherever RSS is


class Measure:
    """Context manager: wall time and peak memory growth of the block it wraps.

    After the block: ``wall_s``; ``peak_mb``, the peak memory above the level at entry; ``kept_mb``,
    what is still held above it at exit (freed memory trimmed first on the CPU); ``kind``,
    what was measured. On CUDA that is ``torch.cuda.max_memory_allocated`` (exact; ``peak_total_mb``
    also counts what was allocated before). Elsewhere it is the process's resident set size sampled
    every ``interval`` seconds by a background thread with psutil: approximate, since it counts the
    allocator's whole pages, misses peaks shorter than the interval, and memory that the allocator kept
    from earlier work is reused without raising RSS (freed memory is trimmed at entry to limit that).
    """

    def __init__(self, device: str | torch.device | None = None, interval: float = 0.005):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval = interval
        self.wall_s = self.peak_mb = self.peak_total_mb = self.kept_mb = float("nan")
        self.kind = "cuda max_memory_allocated" if self.device.type == "cuda" else "process RSS (approximate)"

    def __enter__(self) -> Measure:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            import psutil  # in requirements.txt, not a dependency of the package itself

            _release_freed_memory()
            process = psutil.Process()
            self._base = self._peak = process.memory_info().rss
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, process.memory_info().rss)
                    self._stop.wait(self.interval)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_total_mb = peak / 2**20
            self.kept_mb = (torch.cuda.memory_allocated(self.device) - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            import psutil  # as in __enter__

            peak = max(self._peak, psutil.Process().memory_info().rss)
            self.peak_total_mb = peak / 2**20
            _release_freed_memory()
            self.kept_mb = (psutil.Process().memory_info().rss - self._base) / 2**20
        self.wall_s = time.perf_counter() - self._t0
        self.peak_mb = (peak - self._base) / 2**20

    def as_dict(self) -> dict:
        return {"wall_s": self.wall_s, "peak_mb": self.peak_mb, "memory": self.kind}
