"""Is training healthy, and is it fast? Network-health diagnostics, a profiler table and MFU.

- ``Diagnostics`` (a trainer callback) records, every ``interval`` steps, the gradient norm of each
  layer and its **update-to-data ratio** ‖Δθ‖/‖θ‖ — how far one optimizer step moves the weights
  relative to their size. Around 1e-3 per step is the usual healthy range for Adam-trained
  transformers (Karpathy, "Building makemore Part 3", 2022); much larger means the learning rate is
  too high for that layer, much smaller means it barely learns.
- ``profile_step`` runs forward + backward under ``torch.profiler`` and returns the top operators.
- ``throughput`` turns tokens/s into achieved FLOP/s and model-FLOPs utilisation (MFU, PaLM,
  Chowdhery et al. 2022, appendix B) against the device's peak: the published bf16 peak of a known
  GPU, or on a CPU the fp32 matmul rate measured here (``lmkit.device.measure_matmul_flops``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import pandas as pd
import torch

from .callbacks import Callback
from .device import autocast, autocast_dtype, gathered, measure_matmul_flops, peak_flops

_LAYER = re.compile(r"^transformer\.(h\.\d+|wte|wpe|ln_f)\.")  # GPT-2 names: one group per block


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: ``h.0``, ``h.1``, ..., ``wte``, ``wpe``, ``ln_f`` or ``lm_head``."""
    m = _LAYER.match(name)
    return m.group(1) if m else name.split(".")[0]


def _forward_order(layer: str) -> tuple[int, int]:
    """Embeddings, blocks by number, final norm, head: the order data flows through the model."""
    if layer in ("wte", "wpe"):
        return (0, ("wte", "wpe").index(layer))
    if layer.startswith("h."):
        return (1, int(layer[2:]))
    return (2, 0) if layer == "ln_f" else (3, 0)


class Diagnostics(Callback):
    """Every ``interval`` steps, record per layer: gradient norm (after clipping) and update-to-data
    ratio ‖θ_after − θ_before‖ / ‖θ_before‖. ``.frame()`` gives one row per (step, layer); with a
    ``run_dir`` the rows also go to ``run_dir/diagnostics.jsonl``."""

    def __init__(self, interval: int = 10):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"Diagnostics(interval={interval!r}) must be a positive integer")
        self.interval = interval
        self.rows: list[dict] = []
        self._before: dict[str, list[torch.Tensor]] | None = None
        self._grad_norms: dict[str, float] = {}

    def _groups(self, trainer) -> dict[str, list[torch.Tensor]]:
        groups: dict[str, list[torch.Tensor]] = {}
        for name, p in trainer.model.named_parameters():
            if p.requires_grad:
                groups.setdefault(layer_of(name), []).append(p)
        return dict(sorted(groups.items(), key=lambda item: _forward_order(item[0])))

    def on_before_update(self, trainer) -> None:
        if (trainer.step + 1) % self.interval and trainer.step != 0:
            return
        groups = self._groups(trainer)
        self._grad_norms = {layer: float(torch.linalg.vector_norm(torch.stack(
            [gathered(torch.linalg.vector_norm(p.grad)) for p in ps if p.grad is not None] or [torch.zeros(())])))
            for layer, ps in groups.items()}
        self._before = {layer: [p.detach().clone() for p in ps] for layer, ps in groups.items()}

    def on_step(self, trainer, metrics: dict) -> None:
        if self._before is None:
            return
        rows = []
        for layer, ps in self._groups(trainer).items():
            old = self._before[layer]
            delta = torch.sqrt(sum(gathered(((p.detach() - o) ** 2).sum()) for p, o in zip(ps, old, strict=True)))
            size = torch.sqrt(sum(gathered((o ** 2).sum()) for o in old))
            rows.append({"step": trainer.step, "layer": layer, "grad_norm": self._grad_norms[layer],
                         "update_ratio": float(delta / size) if size > 0 else float("nan")})
        self._before = None
        self.rows.extend(rows)
        if trainer.run_dir is not None and trainer.dist.is_main:
            with open(Path(trainer.run_dir) / "diagnostics.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)

    def frame(self) -> pd.DataFrame:
        """Columns ``step, layer, grad_norm, update_ratio``; layers in model order."""
        return pd.DataFrame(self.rows, columns=["step", "layer", "grad_norm", "update_ratio"])


def profile_step(model, data, batch_size: int, *, device="cpu", steps: int = 3, top: int = 12) -> pd.DataFrame:
    """Forward + backward on ``steps`` batches under ``torch.profiler``; the ``top`` operators by own
    time (``self_ms``: time in the operator itself, not its children), with call counts and share of
    the total. The weights are not changed (no optimizer step); gradients are cleared afterwards."""
    from torch.profiler import ProfilerActivity, profile

    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"profile_step(steps={steps!r}) must be a positive integer")
    device = torch.device(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    generator = torch.Generator().manual_seed(0)
    amp = autocast_dtype(device)
    was_training = model.training
    model.train()

    def forward_backward():
        x, y = data.batch(batch_size, generator, device)
        with autocast(device, amp):
            loss = model(x, y).loss
        loss.backward()

    forward_backward()  # warm-up: first calls allocate memory and pick kernels
    with _quiet_native_stderr(), profile(activities=activities) as prof:
        for _ in range(steps):
            forward_backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    on_gpu = device.type == "cuda"
    rows = [{"operator": e.key, "calls": e.count,
             "self_ms": (e.self_device_time_total if on_gpu else e.self_cpu_time_total) / 1e3 / steps}
            for e in prof.key_averages()]
    df = pd.DataFrame(rows).sort_values("self_ms", ascending=False)
    df["share"] = df["self_ms"] / df["self_ms"].sum()
    df["calls"] = df["calls"] // steps
    return df.head(top).reset_index(drop=True)


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence file descriptor 2 for a moment: the profiler's C++ side prints start/stop trace lines
    there, which would land in the notebook as red stderr output. Python's own sys.stderr is
    untouched (in Jupyter it is not fd 2)."""
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def throughput(tokens_per_sec: float, flops_per_token: float, device="cpu") -> dict:
    """Achieved FLOP/s and MFU: ``{"tokens_per_sec", "flops_per_token", "achieved_flops", "peak_flops",
    "peak_source", "mfu"}``. The peak is the published bf16 figure of a known GPU, else a matmul rate
    measured now on this device (fp32 on CPU)."""
    device = torch.device(device)
    peak, source = peak_flops(device), "published bf16 peak"
    if peak is None:
        peak, source = measure_matmul_flops(device), "measured fp32 matmul"
    achieved = tokens_per_sec * flops_per_token
    return {"tokens_per_sec": tokens_per_sec, "flops_per_token": flops_per_token, "achieved_flops": achieved,
            "peak_flops": peak, "peak_source": source, "mfu": achieved / peak}
