"""Memory a training really takes, measured, beside what ``lmkit.memory`` plans.

``measure_memory`` trains a few steps of a configuration in fresh processes (under torchrun for
more than one) on random tokens and reports, per process, what building the model kept (its
weights, or their shard), what the first optimizer step kept (AdamW's states; under DDP also its
gradient buckets), the peak of a later step above that (gradients and activations) and the step
time. On CUDA the figures are
``torch.cuda.max_memory_allocated`` (exact); on a CPU they are the process's resident set size,
sampled (``lmkit.device.Measure``: approximate, a few MB either way).

``plan_vs_measured`` puts both side by side; ``fits`` answers "which of DDP, FSDP and activation
checkpointing makes this model fit this device?"; ``memory_growth`` is the plan as width, depth,
context or the number of processes grows.

Run as ``python -m lmkit.footprint SPEC.json OUT_DIR``, this module is the measuring process itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import TokenDataset
from .device import Measure, auto_device
from .memory import memory_plan, peak_bytes, plan_bytes, resolve_mode
from .model import GPT, GPTConfig
from .trainer import TrainConfig, Trainer

MB = 2**20


def measure_memory(model_cfg: GPTConfig, train_cfg: TrainConfig, processes: int = 1, steps: int = 3,
                   timeout: float = 900) -> pd.DataFrame:
    """Measure ``steps`` (≥ 2) training steps of ``model_cfg`` with ``train_cfg`` in ``processes``
    fresh processes: one row per process with ``parameters_mb``, ``optimizer_mb``, ``step_peak_mb``,
    ``step_s`` (the median of the steps after the first), ``mode`` and what ``memory`` means.
    Raises RuntimeError with the processes' last output when they fail."""
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"processes={processes!r} must be a positive integer")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps={steps!r} must be an integer >= 2 (the first step allocates the optimizer states)")
    if str(train_cfg.device).startswith("cuda") and processes > 1 and processes > torch.cuda.device_count():
        raise ValueError(f"processes={processes} on CUDA needs one GPU per process; this machine has "
                         f"{torch.cuda.device_count()}: give processes <= {torch.cuda.device_count()}")
    if processes == 1 and train_cfg.parallel != "auto":
        raise ValueError(f"parallel={train_cfg.parallel!r} shares the training between processes: give processes >= 2, "
                         f"or parallel='auto' for one process")
    mode = resolve_mode(train_cfg.parallel, processes)
    with tempfile.TemporaryDirectory(prefix="lmkit-memory-") as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "steps": steps}))
        worker = ["-m", "lmkit.footprint", str(spec), tmp]
        if processes > 1:
            worker = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *worker]
        # glibc serves large blocks from its heap and keeps them when freed, so the resident set would
        # show the heap's high-water mark, not what is live; with every block over 128 kB mapped on
        # its own, a freed tensor leaves the resident set at once
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        if processes == 1:
            env["WORLD_SIZE"] = "1"
        done = subprocess.run([sys.executable, *worker], capture_output=True, text=True, timeout=timeout, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"measuring {mode} with {processes} process(es) failed (exit {done.returncode}):\n"
                               f"{(done.stdout + done.stderr)[-3000:]}")
        rows = [json.loads(p.read_text()) for p in sorted(Path(tmp).glob("rank*.json"))]
    table = pd.DataFrame(rows).set_index("rank")
    table.insert(0, "mode", mode)
    table.insert(1, "processes", processes)
    return table


def plan_vs_measured(model_cfg: GPTConfig, train_cfg: TrainConfig, processes: int = 1,
                     measured: pd.DataFrame | None = None) -> pd.DataFrame:
    """The plan beside rank 0's measurement, in MB, one row per phase: what building the model kept
    (its weights), what the first step kept (AdamW's states; under DDP also the gradients, which stay
    in its buckets), the peak of a later step above that (the larger of gradients and activations, plus
    FSDP's gathered blocks; under DDP the activations) and the total. ``measured``: a
    ``measure_memory`` table (measured now if None)."""
    measured = measure_memory(model_cfg, train_cfg, processes) if measured is None else measured
    row = measured.iloc[0]
    mode = row["mode"]
    parts = plan_bytes(model_cfg, train_cfg, processes, mode, device=str(row["device"]).split(":")[0])
    ddp = mode == "ddp"
    planned = {"weights (after building)": parts["parameters"],
               "kept by the first step": parts["optimizer states"] + (parts["gradients"] if ddp else 0),
               "a later step's peak above that": parts["gathered"] + (
                   parts["activations"] if ddp else max(parts["gradients"], parts["activations"]))}
    planned["total"] = peak_bytes(parts, mode)
    got = [row["parameters_mb"], row["optimizer_mb"], row["step_peak_mb"]]
    got.append(sum(got))
    table = pd.DataFrame({"planned_mb": [v / MB for v in planned.values()], "measured_mb": got}, index=list(planned))
    table["measured / planned"] = table["measured_mb"] / table["planned_mb"]
    table.index.name = f"{mode}, {processes} process(es)"
    table.attrs.update(memory=row["memory"], mode=mode, processes=processes)
    return table


def fits(model_cfg: GPTConfig, train_cfg: TrainConfig, device_bytes: float, processes=(1, 2, 4, 8),
         device: str = "cuda") -> pd.DataFrame:
    """Which ways of training ``model_cfg`` fit a device of ``device_bytes``: one row per way (one
    process, DDP and FSDP over each number of ``processes``, each with and without activation
    checkpointing), with the planned GB per process and whether it fits."""
    rows = []
    for n in processes:
        for mode in (("single",) if n == 1 else ("ddp", "fsdp")):
            for checkpointing in (False, True):
                need = memory_plan(model_cfg, train_cfg, n, mode, checkpointing, device).loc["total", "bytes"]
                rows.append({"way": mode, "processes": n, "activation checkpointing": checkpointing,
                             "GB per process": need / 2**30, "fits": bool(need <= device_bytes)})
    return pd.DataFrame(rows)


GROWTH_WAYS = {"one process": ("single", 1, False), "one process, checkpointing": ("single", 1, True),
               "FSDP over 2 processes": ("fsdp", 2, False)}
PROCESS_WAYS = {"DDP": ("ddp", False), "FSDP": ("fsdp", False), "FSDP, checkpointing": ("fsdp", True)}


def memory_growth(model_cfg: GPTConfig, train_cfg: TrainConfig, **ranges) -> pd.DataFrame:
    """The plan as one setting grows: ``memory_growth(cfg, tcfg, n_embd=[128, 256], n_layer=[4, 8],
    block_size=[128, 512], processes=[1, 2, 4, 8])``. One row per (setting, value, way) with each
    part and the total in MB per process. Model settings are planned three ways (``GROWTH_WAYS``),
    the number of processes as DDP, FSDP and FSDP with checkpointing."""
    rows = []
    for setting, values in ranges.items():
        for value in values:
            if setting == "processes":
                cfg, ways = model_cfg, {way: (mode, value, ck) for way, (mode, ck) in PROCESS_WAYS.items()}
            else:
                cfg, ways = dataclasses.replace(model_cfg, **{setting: value}), GROWTH_WAYS
            for way, (mode, n, checkpointing) in ways.items():
                parts = plan_bytes(cfg, train_cfg, n, mode, checkpointing)
                rows.append({"setting": setting, "value": value, "way": way, **{k: v / MB for k, v in parts.items()},
                             "total": sum(parts.values()) / MB})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ measuring process

def _worker(spec_path: str, out_dir: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    model_cfg = GPTConfig.from_dict(spec["model"])
    train_cfg = dataclasses.replace(TrainConfig.from_dict(spec["train"]), progress=False,
                                    max_steps=10**6, eval_interval=10**6)
    tokens = np.random.default_rng(0).integers(0, model_cfg.vocab_size, 200_000 + model_cfg.block_size)
    data = TokenDataset(tokens.astype(np.int64), model_cfg.block_size)
    device = auto_device(train_cfg.device)
    # a small model first, the same way: libraries, kernels, process groups and communication buffers
    # are set up once per process, and would otherwise count as this model's memory
    tiny = dataclasses.replace(model_cfg, n_layer=1, n_embd=model_cfg.n_head * 2, block_size=8)
    warm_up = Trainer(GPT(tiny), dataclasses.replace(train_cfg, batch_size=2), TokenDataset(tokens[:1000].astype(np.int64), 8))
    warm_up.train_step()
    warm_up.train_step()
    del warm_up
    with Measure(device) as build:
        trainer = Trainer(GPT(model_cfg), train_cfg, data)
    with Measure(trainer.device) as first:
        trainer.train_step()
    times, peaks = [], []
    for _ in range(spec["steps"] - 1):
        with Measure(trainer.device) as later:
            trainer.train_step()
        times.append(later.wall_s)
        peaks.append(later.peak_mb)
    row = {"rank": trainer.dist.rank, "parameters_mb": build.kept_mb, "optimizer_mb": first.kept_mb,
           "first_step_peak_mb": first.peak_mb, "step_peak_mb": max(peaks), "step_s": statistics.median(times),
           "device": str(trainer.device), "memory": build.kind, "threads": torch.get_num_threads()}
    Path(out_dir, f"rank{trainer.dist.rank}.json").write_text(json.dumps(row))
    if trainer.dist.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
