"""What training a model costs in memory, per process, from its configs alone (nothing is allocated).

Four parts, for Ψ parameters, N processes, micro-batch b, context s, width h, L layers, vocabulary V:

- **Weights, gradients, optimizer states.** lmkit keeps fp32 weights and fp32 gradients (bf16
  autocast casts on the fly) and AdamW keeps two fp32 moments: 4Ψ + 4Ψ + 8Ψ = 16Ψ bytes, the
  16Ψ of Rajbhandari et al. 2020 ("ZeRO: Memory Optimizations Toward Training Trillion Parameter
  Models", §3.1: 2Ψ + 2Ψ + 12Ψ for mixed-precision Adam). DDP keeps all of it in every process
  (its gradient buckets are the gradients themselves: ``gradient_as_bucket_view``). FSDP shards all
  three (ZeRO stage 3): 16Ψ/N, plus the blocks it gathers while computing: the root module's
  weights (embeddings, head, final norm) and two blocks (the one computing and the one prefetched)
  in the compute dtype, and one block's unsharded fp32 gradients before they are reduce-scattered.
- **Activations**, what autograd keeps for the backward pass of one micro-batch. Korthikanti et al.
  2022 ("Reducing Activation Recomputation in Large Transformer Models", §4.1) count
  ``s·b·h·(34 + 5·a·s/h)`` bytes per layer at 16 bits with dropout. Counted the same way for lmkit's
  block, with a fused attention kernel (no s² term) and no dropout, a layer keeps 17 values per
  position and channel: the input and output of each LayerNorm (4), q, k, v (3), the attention
  output and its heads re-assembled (2), the MLP's 4h before and after the GELU (8); rotary adds
  the rotated q and k (2). The head keeps the final norm's input and output (2·s·b·h) and the
  log-probabilities (s·b·V); the backward pass adds their gradient (s·b·V). Under bf16 autocast
  the values a matmul reads are kept in 2 bytes, the residual stream in 4.
- **With activation checkpointing** (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
  Cost"; Korthikanti's "full recomputation") a block keeps only its input, s·b·h values, and one
  block's activations exist again while it is recomputed in the backward pass.

The peak is not the sum of the four: the backward pass frees each layer's activations as it fills
that layer's gradients, so a step needs the weights, the optimizer states and the larger of the
gradients and the activations (and FSDP's gathered blocks); under DDP the gradients stay allocated
in its buckets from one step to the next, so there it is the sum.

``memory_plan`` gives the table; ``plan_bytes`` the parts as a dict and ``peak_bytes`` their peak; the
Trainer refuses a first step that cannot fit with them. Tested against autograd's saved tensors (exactly) and against
measured peaks (``lmkit.scaling.measure_memory``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import pandas as pd

from .device import gib
from .model import GPTConfig

Mode = Literal["single", "ddp", "fsdp"]

VALUES_PER_LAYER = 17  # per position and channel, kept by one block (see the module docstring)
ROPE_VALUES = 2  # the rotated q and k
SHARDED_BLOCKS_GATHERED = 2  # FSDP2 gathers the next block while the current one computes (prefetch)


def block_parameters(cfg: GPTConfig) -> int:
    """Parameters of one transformer block."""
    return replace(cfg, n_layer=2).parameter_count() - replace(cfg, n_layer=1).parameter_count()


def activation_bytes(cfg: GPTConfig, batch_size: int, checkpointing: bool, bf16: bool = False) -> int:
    """Bytes autograd keeps (and the backward pass adds) for one micro-batch of ``batch_size``
    sequences of ``cfg.block_size`` tokens. See the module docstring for the count."""
    sb, h, V = batch_size * cfg.block_size, cfg.n_embd, cfg.vocab_size
    values = VALUES_PER_LAYER + (ROPE_VALUES if cfg.pos_encoding == "rope" else 0)
    residual = 2  # the LayerNorm inputs are the fp32 residual stream even under autocast
    layer = sb * h * (4 * residual + (2 if bf16 else 4) * (values - residual))
    dropout = sb * h * 2 if cfg.dropout > 0 else 0  # two residual-branch masks of one byte per value
    head = 4 * sb * (2 * h + 2 * V)  # ln_f input and output, the log-probabilities and their gradient
    if checkpointing:  # each block's input, plus one block recomputed during the backward pass
        return cfg.n_layer * 4 * sb * h + layer + dropout + head
    return cfg.n_layer * (layer + dropout) + head


def resolve_mode(parallel: str, world_size: int) -> Mode:
    """``"single"``, ``"ddp"`` or ``"fsdp"`` for a ``TrainConfig.parallel`` value and a process count."""
    if parallel not in ("auto", "single", "ddp", "fsdp"):
        raise ValueError(f"parallel={parallel!r}; use 'auto', 'single', 'ddp' or 'fsdp'")
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size={world_size!r} must be a positive integer (the number of processes)")
    if parallel == "auto":
        return "ddp" if world_size > 1 else "single"
    if parallel != "single" and world_size == 1:
        return "single"  # one process shares with no one: the same memory as training alone
    return parallel


def plan_bytes(model_cfg: GPTConfig, train_cfg, world_size: int = 1, parallel: str | None = None,
               activation_checkpointing: bool | None = None, device: str = "cpu") -> dict[str, int]:
    """Bytes per process: ``parameters``, ``gradients``, ``optimizer states``, ``gathered`` (FSDP's
    unsharded blocks; 0 otherwise) and ``activations`` (as configured). ``train_cfg`` is a
    ``TrainConfig`` (its batch_size, dtype, parallel and activation_checkpointing are read)."""
    mode = resolve_mode(train_cfg.parallel if parallel is None else parallel, world_size)
    checkpointing = train_cfg.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    bf16 = train_cfg.dtype == "bfloat16" or (train_cfg.dtype == "auto" and str(device).startswith("cuda"))
    P = model_cfg.parameter_count()
    shards = world_size if mode == "fsdp" else 1
    gathered = 0
    if mode == "fsdp":
        block = block_parameters(model_cfg)
        root = P - model_cfg.n_layer * block
        gathered = (2 if bf16 else 4) * (root + SHARDED_BLOCKS_GATHERED * block) + 4 * block
    return {"parameters": -(-4 * P // shards), "gradients": -(-4 * P // shards),
            "optimizer states": -(-8 * P // shards), "gathered": gathered,
            "activations": activation_bytes(model_cfg, train_cfg.batch_size, checkpointing, bf16)}


def peak_bytes(parts: dict[str, int], mode: str) -> int:
    """The peak of a training step from ``plan_bytes``'s parts (see the module docstring)."""
    fixed = parts["parameters"] + parts["optimizer states"] + parts["gathered"]
    if mode == "ddp":
        return fixed + parts["gradients"] + parts["activations"]
    return fixed + max(parts["gradients"], parts["activations"])


FORMULAS = {
    "parameters": ("4Ψ/N (FSDP) or 4Ψ: fp32 weights", "ZeRO §3.1"),
    "gradients": ("4Ψ/N (FSDP) or 4Ψ: fp32 gradients", "ZeRO §3.1"),
    "optimizer states": ("8Ψ/N (FSDP) or 8Ψ: AdamW's two fp32 moments", "ZeRO §3.1 (K = 12 with fp32 master weights)"),
    "gathered": ("FSDP: (root + 2 blocks)·(2|4) + 4·block: unsharded while computing", "FSDP2 prefetch"),
    "activations, no checkpointing": ("L·s·b·h·(17 [+2 rope])·(4|2) + 4·s·b·(2h + 2V)", "Korthikanti et al. 2022 §4.1"),
    "activations, checkpointing": ("4·L·s·b·h + one block's + 4·s·b·(2h + 2V)", "Chen et al. 2016; Korthikanti §5"),
}


def memory_plan(model_cfg: GPTConfig, train_cfg, world_size: int = 1, parallel: str | None = None,
                activation_checkpointing: bool | None = None, device: str = "cpu") -> pd.DataFrame:
    """The memory one training process needs, as a table: one row per part (``bytes``, ``size`` for a
    person, the ``formula`` and its ``source``), both activation rows (``counted`` marks the one the
    configuration uses) and the ``total``. ``parallel`` and ``activation_checkpointing`` default to
    ``train_cfg``'s; ``device`` decides what ``dtype="auto"`` means (bf16 on CUDA)."""
    checkpointing = train_cfg.activation_checkpointing if activation_checkpointing is None else activation_checkpointing
    need = plan_bytes(model_cfg, train_cfg, world_size, parallel, checkpointing, device)
    other = plan_bytes(model_cfg, train_cfg, world_size, parallel, not checkpointing, device)["activations"]
    rows = {name: need[name] for name in ("parameters", "gradients", "optimizer states", "gathered")}
    rows["activations, checkpointing" if checkpointing else "activations, no checkpointing"] = need["activations"]
    rows["activations, no checkpointing" if checkpointing else "activations, checkpointing"] = other
    counted = {name: name != ("activations, no checkpointing" if checkpointing else "activations, checkpointing")
               for name in rows}
    table = pd.DataFrame({"bytes": rows, "counted": counted})
    mode = resolve_mode(train_cfg.parallel if parallel is None else parallel, world_size)
    table.loc["total"] = [peak_bytes(need, mode), True]
    table["size"] = [gib(n) for n in table["bytes"]]
    total = ("weights + optimizer + gathered + gradients + activations (DDP keeps its gradients)" if mode == "ddp" else
             "weights + optimizer + gathered + max(gradients, activations): backward frees one as it fills the other")
    table["formula"] = [FORMULAS.get(name, (total, ""))[0] for name in table.index]
    table["source"] = [FORMULAS.get(name, ("", ""))[1] for name in table.index]
    table.index.name = "per process"
    table.attrs.update(mode=mode, world_size=world_size, activation_checkpointing=checkpointing)
    return table
