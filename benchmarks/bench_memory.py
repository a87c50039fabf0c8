"""Memory: ``lmkit.memory``'s plan against what training really takes, and what sharding costs in time.

For each configuration and way of training (one process; one process with activation checkpointing;
DDP and FSDP over ``--processes`` processes under torchrun, FSDP also with checkpointing), the
training runs a few steps in fresh processes on random tokens (``lmkit.footprint.measure_memory``)
and the table gives rank 0's figures beside the plan, in MB per process: what building the model
kept (its weights or their shard), what the first step kept (AdamW's states; DDP's gradient
buckets), the peak of a later step above that (gradients and activations), the total, and the
median step time with its ratio to one process, and the tokens per second against one process
(each of n processes trains on its own micro-batch, so a step of n processes covers n times the
tokens).

On a CPU, memory is the resident set size (sampled, with glibc's large blocks mapped on their own
so that freed memory leaves it) and the processes share the cores: under torchrun each gets one
thread where one process alone has them all, and gloo's collectives run over local sockets, so
sharding costs time here and saves memory. ``--device cuda`` measures
``torch.cuda.max_memory_allocated`` with bf16 on a GPU machine, one process per GPU.
``--quick``: one small configuration, two ways (checks that it runs).
"""

from __future__ import annotations

import argparse

import torch

from lmkit import GPTConfig, TrainConfig
from lmkit.footprint import measure_memory, plan_vs_measured

from .common import record

NAME = "memory"

# (name, model, micro-batch, ways): one weight-heavy configuration, two activation-heavy ones
CONFIGS = [
    ("03's model, 4L×128, context 128", GPTConfig(), 32, ("single", "single+ckpt", "ddp", "fsdp")),
    ("wide, 8L×512, context 128", GPTConfig(n_layer=8, n_head=8, n_embd=512), 2,
     ("single", "ddp", "fsdp", "fsdp+ckpt")),
    ("long context, 8L×256, context 256", GPTConfig(block_size=256, n_layer=8, n_head=8, n_embd=256), 8,
     ("single", "single+ckpt", "fsdp", "fsdp+ckpt")),
]
QUICK = [("tiny, 2L×64, context 64", GPTConfig(block_size=64, n_layer=2, n_head=4, n_embd=64), 4, ("single", "fsdp"))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--processes", type=int, default=None,
                        help="processes for DDP and FSDP (default: 2 on a CPU, every GPU on CUDA)")
    parser.add_argument("--steps", type=int, default=5, help="steps per measurement (the first allocates AdamW's states)")
    parser.add_argument("--quick", action="store_true", help="one small configuration, two ways: checks that it runs")


def main(args: argparse.Namespace):
    processes = args.processes or (max(2, torch.cuda.device_count()) if args.device == "cuda" else 2)
    rows = []
    for config_name, model_cfg, batch, ways in (QUICK if args.quick else CONFIGS):
        single_step = None
        for way in ways:
            parallel, _, ckpt = way.partition("+")
            n = 1 if parallel == "single" else processes
            train_cfg = TrainConfig(batch_size=batch, device=args.device, parallel="auto" if n == 1 else parallel,
                                    activation_checkpointing=bool(ckpt))
            measured = measure_memory(model_cfg, train_cfg, n, steps=args.steps)
            table = plan_vs_measured(model_cfg, train_cfg, n, measured)
            step_s = float(measured["step_s"].median())
            single_step = step_s if way == "single" else single_step
            row = {"config": config_name, "way": way if n == 1 else f"{parallel}×{n}" + ("+ckpt" if ckpt else ""),
                   "parameters": model_cfg.parameter_count(), "batch": batch}
            for part, short in (("weights (after building)", "weights"), ("kept by the first step", "first step"),
                                ("a later step's peak above that", "step peak"), ("total", "total")):
                row[f"{short} plan MB"] = round(table.loc[part, "planned_mb"], 1)
                row[f"{short} measured MB"] = round(table.loc[part, "measured_mb"], 1)
            row["total measured / plan"] = round(table.loc["total", "measured / planned"], 3)
            row["step s"] = round(step_s, 4)
            row["step vs single"] = round(step_s / single_step, 2) if single_step else float("nan")
            # each process draws its own micro-batch: n processes train on n times the tokens per step
            row["tokens/s vs single"] = round(n * single_step / step_s, 2) if single_step else float("nan")
            row["memory"] = measured["memory"].iloc[0]
            rows.append(row)
    return record(NAME, rows, device=args.device)
