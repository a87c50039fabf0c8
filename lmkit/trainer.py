"""The training loop: a small class with callbacks, used unchanged for pretraining and fine-tuning.

AdamW with decoupled weight decay (Loshchilov & Hutter 2019) on matrices only, linear warm-up then
cosine decay (Loshchilov & Hutter 2017), gradient clipping and accumulation, bf16 autocast on CUDA,
optional ``torch.compile``, and DDP when started by ``torchrun``. Notebooks attach live plots through
callbacks (``on_step``, ``on_eval``, ``on_checkpoint``) instead of copying the loop.

Data objects need one method, ``batch(batch_size, generator, device) -> (x, y)`` with x, y (B, T)
int64: ``lmkit.data.TokenDataset`` is one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .device import (
    autocast,
    autocast_dtype,
    available_memory,
    check_device_name,
    enable_tf32,
    gathered,
    gib,
    init_distributed,
)
from .files import read_json, write_bytes_atomic, write_json_atomic
from .memory import peak_bytes, plan_bytes, resolve_mode
from .model import GPT, Block, GPTConfig, unwrap
from .rundir import lock_run

log = logging.getLogger(__name__)


LrSchedule = Literal["cosine", "linear", "constant"]  # the decay after warm-up
DType = Literal["auto", "float32", "bfloat16"]  # "auto": bf16 autocast on CUDA, fp32 elsewhere
Parallel = Literal["auto", "ddp", "fsdp"]  # how processes started by torchrun share the work


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 600  # optimizer steps: ~2.5 min on 2 CPU cores at the default model size
    batch_size: int = 32  # sequences per micro-batch (per process under DDP)
    grad_accum_steps: int = 1  # micro-batches per step: a bigger effective batch in the same memory
    learning_rate: float = 3e-3  # peak; models this small train fastest at 1e-3..3e-3
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak (Chinchilla uses 0.1)
    warmup_steps: int = 50  # linear warm-up keeps early Adam updates from blowing up
    lr_schedule: LrSchedule = "cosine"  # "cosine" | "linear" | "constant" (after warm-up)
    weight_decay: float = 0.1  # on weight matrices only; not on norms, biases, embeddings
    beta1: float = 0.9
    beta2: float = 0.99  # 0.99 rather than 0.999: small batches give noisy second moments
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    eval_interval: int = 200  # steps between evaluations (and checkpoints, when a run_dir is set)
    eval_batches: int = 20  # batches averaged per evaluation
    log_interval: int = 10  # steps between rows written to metrics.jsonl
    checkpoint_interval: int | None = None  # None = checkpoint at every evaluation
    keep_last: int | None = None  # keep only the newest k checkpoints; None = keep all
    device: str = "auto"  # "auto" = cuda > mps > cpu
    dtype: DType = "auto"  # "auto" = bf16 autocast on CUDA, fp32 elsewhere; or "float32" / "bfloat16"
    compile: bool = False  # torch.compile: faster on GPUs, ~30 s warm-up, no gain for tiny CPU models
    # Under torchrun: "auto"/"ddp" keep a whole copy of weights, gradients and AdamW states in every
    # process (DDP); "fsdp" shards all three across the processes (FSDP2, ZeRO stage 3), for a model
    # whose training state does not fit one device. Without torchrun, "auto" trains in one process.
    parallel: Parallel = "auto"  # under torchrun: "auto"/"ddp" = a whole copy per process, "fsdp" = sharded
    activation_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~1/3 more compute
    seed: int = 1337  # batch sampling (per rank) and dropout
    progress: bool = True  # tqdm progress bar

    def __post_init__(self):
        positive = ("max_steps", "batch_size", "grad_accum_steps", "eval_interval", "eval_batches", "log_interval")
        for name in positive:
            if not _whole(getattr(self, name), 1):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be a positive integer")
        if not _number(self.learning_rate) or not 0 < self.learning_rate < math.inf:
            raise ValueError(f"TrainConfig.learning_rate={self.learning_rate!r} must be a finite number > 0")
        if not _number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"TrainConfig.min_lr_ratio={self.min_lr_ratio!r} must be in [0, 1]")
        if not _whole(self.warmup_steps, 0):
            raise ValueError(f"TrainConfig.warmup_steps={self.warmup_steps!r} must be an integer >= 0")
        if self.lr_schedule not in get_args(LrSchedule):
            raise ValueError(f"TrainConfig.lr_schedule={self.lr_schedule!r}; use 'cosine', 'linear' or 'constant'")
        if not _number(self.weight_decay) or not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay!r} must be a finite number >= 0")
        for name in ("beta1", "beta2"):  # Adam's moment decay rates: 1 would never forget, > 1 diverges
            if not _number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be in [0, 1), e.g. 0.9")
        if self.grad_clip is not None and (not _number(self.grad_clip) or not 0 < self.grad_clip < math.inf):
            raise ValueError(f"TrainConfig.grad_clip={self.grad_clip!r} must be a finite number > 0, or None")
        for name in ("checkpoint_interval", "keep_last"):
            v = getattr(self, name)
            if v is not None and not _whole(v, 1):
                raise ValueError(f"TrainConfig.{name}={v!r} must be None or a positive integer")
        if self.dtype not in get_args(DType):
            raise ValueError(f"TrainConfig.dtype={self.dtype!r}; use 'auto', 'float32' or 'bfloat16'")
        check_device_name(self.device)
        if not _whole(self.seed, 0):
            raise ValueError(f"TrainConfig.seed={self.seed!r} must be an integer >= 0")
        if self.parallel not in get_args(Parallel):
            raise ValueError(f"TrainConfig.parallel={self.parallel!r}; use 'auto', 'ddp' or 'fsdp'")
        for name in ("compile", "progress", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} must be True or False")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)


def _whole(v, least: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then the chosen decay."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    floor = cfg.learning_rate * cfg.min_lr_ratio
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 → 1
    if cfg.lr_schedule == "cosine":
        return floor + 0.5 * (cfg.learning_rate - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.lr_schedule == "linear":
        return cfg.learning_rate - (cfg.learning_rate - floor) * min(progress, 1.0)
    return cfg.learning_rate


# On resume the run's settings come from its checkpoint. These may still change (given explicitly),
# each with a logged warning and a line in the run's config.json; every other field defines the run
# (what is learned, from which batches, at which rates) and a different value is refused.
RESUME_ADJUSTABLE = ("max_steps", "eval_interval", "eval_batches", "log_interval", "checkpoint_interval",
                     "keep_last", "device", "dtype", "compile", "progress", "parallel", "activation_checkpointing")


def resume_changes(saved: dict | None, config: TrainConfig, step: int, where) -> dict[str, tuple]:
    """The settings ``config`` changes against a run's ``saved`` ones (its checkpoint's TrainConfig),
    as ``{field: (saved, new)}``, for a resume at ``step``. Raises ValueError, naming each, for a change
    to a setting that defines the run, and for a ``max_steps`` the run is already past."""
    if saved is None:  # a checkpoint saved without its training settings: nothing to hold them to
        return {}
    changes = {f.name: (saved[f.name], getattr(config, f.name)) for f in fields(TrainConfig)
               if f.name in saved and saved[f.name] != getattr(config, f.name)}
    fixed = {k: v for k, v in changes.items() if k not in RESUME_ADJUSTABLE}
    if fixed:
        shown = ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in fixed.items())
        raise ValueError(f"cannot resume {where} with other settings that define the run: {shown}. A resume "
                         f"continues the run as it was (leave these out: `python -m lmkit train --resume RUN` "
                         f"without those flags, or config=None / TrainConfig.from_dict(read_info(RUN).train_config) "
                         f"in Python); to train on with other settings, start a new run from its weights "
                         f"(lmkit.checkpoint.load). Only {', '.join(RESUME_ADJUSTABLE)} may change on resume")
    if config.max_steps < step:
        raise ValueError(f"cannot resume {where}: the run is already at step {step}, past max_steps="
                         f"{config.max_steps}; give a max_steps above {step} to train on")
    return changes


def parallel_mode(cfg: TrainConfig, world_size: int) -> str:
    """How this process trains: ``"single"``, ``"ddp"`` or ``"fsdp"``, from ``cfg.parallel`` and the
    number of processes torchrun started. ``"ddp"`` or ``"fsdp"`` asked of one process is refused
    (ValueError, saying what to run): there is nothing to share the work with."""
    if world_size == 1 and cfg.parallel != "auto":
        raise ValueError(f"TrainConfig.parallel={cfg.parallel!r} shares the training between processes, but this is "
                         f"one process; start it with torchrun, one process per GPU (or per share of the CPU cores): "
                         f"`torchrun --nproc_per_node=2 -m lmkit train --parallel {cfg.parallel} ...`, or in Python "
                         f"`torchrun --nproc_per_node=2 your_script.py`; parallel='auto' trains in one process")
    return resolve_mode(cfg.parallel, world_size)


def check_first_step_fits(model_cfg, cfg: TrainConfig, device, weights_allocated: bool = False,
                          world_size: int = 1) -> None:
    """Refuse (ValueError, with the figures) a training whose first step cannot fit in the memory
    ``device`` has available, by ``lmkit.memory.plan_bytes`` for this process's share of a job of
    ``world_size`` processes. ``weights_allocated``: the model already sits there (its weights are no
    longer in the available memory). On a CPU the processes of one machine share its memory."""
    device, mode = torch.device(device), parallel_mode(cfg, world_size)
    parts = plan_bytes(model_cfg, cfg, world_size, mode, device=device.type)
    need = peak_bytes(parts, mode) - (parts["parameters"] if weights_allocated else 0)
    have = available_memory(device)
    local = 1 if device.type == "cuda" else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if have is None or local * need <= have:
        return
    shown = ", ".join(f"{name} {gib(n)}" for name, n in parts.items()
                      if n and not (weights_allocated and name == "parameters"))
    shared = f" for each of {local} processes" if local > 1 else ""
    raise ValueError(f"the first training step needs about {gib(need)}{shared} ({shown}; batch_size="
                     f"{cfg.batch_size} × block_size={model_cfg.block_size}; lmkit.memory.memory_plan shows how), but "
                     f"{device} has {gib(have)} available; lower batch_size (grad_accum_steps keeps the effective "
                     f"batch) or block_size, set activation_checkpointing=True, shard with parallel='fsdp' over more "
                     f"processes, or use a smaller model")


def check_token_range(dataset, vocab_size: int, name: str) -> None:
    """Refuse a dataset holding token ids the model has no embedding for (ValueError naming it)."""
    tokens = getattr(dataset, "data", None)
    if tokens is None or not len(tokens):
        return
    top = int(tokens.max())
    if top >= vocab_size or int(tokens.min()) < 0:
        where = getattr(dataset, "path", None) or f"the {name} data"
        raise ValueError(f"{where} holds token id {top}, but the model's vocabulary has {vocab_size} ids "
                         f"(0..{vocab_size - 1}); the data was prepared with another tokenizer: prepare it again "
                         f"with this model's tokenizer, or train a model of that vocabulary")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on Linear weight matrices only: norms, biases and embeddings are left alone."""
    no_decay_types = (torch.nn.Embedding, torch.nn.LayerNorm)
    skip = {id(p) for m in model.modules() if isinstance(m, no_decay_types) for p in m.parameters(recurse=False)}
    decay, other = [], []
    for p in model.parameters():  # each shared (tied) tensor once
        if p.requires_grad:
            (decay if p.dim() >= 2 and id(p) not in skip else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``param_groups``, with the fused kernel on CUDA and CPU: one pass updates every
    parameter instead of a dozen small ops per tensor (on 2 CPU threads 0.8 instead of 4 ms a step
    for the 0.8M-parameter model, 8 % of its step). Elsewhere (MPS) PyTorch's default."""
    fused = torch.device(device).type in ("cuda", "cpu")
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                             betas=(cfg.beta1, cfg.beta2), fused=fused)


class TrainingTerminated(RuntimeError):
    """Training stopped on SIGTERM after saving a checkpoint (the message names it)."""


class TrainingInterrupted(RuntimeError):
    """Raised by the command line when Ctrl-C stopped a run: it saved, but did not finish (exit 130)."""


def _install_stop_handlers(stop: dict) -> dict:
    """SIGINT/SIGTERM set ``stop["signal"]`` so the loop ends between steps, never inside an update
    (a checkpoint is then exactly one step's state). A second SIGINT raises KeyboardInterrupt at once.
    Signal handlers can only be set from the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if signum == signal.SIGINT and stop:
            raise KeyboardInterrupt
        stop["signal"] = signum

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@runtime_checkable
class BatchSource(Protocol):
    """What the Trainer trains and evaluates on: anything that draws a random batch of inputs and
    targets. ``lmkit.data.TokenDataset`` (next-token windows), ``lmkit.classifier.ClassificationData``
    (passages and labels) and ``lmkit.instruct``'s datasets (prompts with answer-only targets) are."""

    def batch(self, batch_size: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``batch_size`` rows drawn with ``generator``, on ``device``."""
        ...


class Trainer:
    """Train ``model`` on ``train_data``; evaluate on ``val_data``; checkpoint into ``run_dir``.

    ``trainer.train()`` returns the metric history as a DataFrame (also ``trainer.metrics``).
    ``resume_from`` (a checkpoint or run folder) continues that run: weights, optimizer, RNG states
    and step are restored, so it goes on with exactly the batches and dropout masks it would have
    had. Its settings are the checkpoint's: ``config=None`` takes them as they are; a ``config``
    that changes one of ``RESUME_ADJUSTABLE`` (``max_steps``, intervals, device, ...) is applied with
    a warning and recorded in ``config.json``, one that changes any other setting is refused (see
    ``resume_changes``). A ``tokenizer`` must be the run's own, and the data's token ids must fit the
    model's vocabulary.
    """

    def __init__(self, model, config: TrainConfig | None, train_data: BatchSource, val_data: BatchSource | None = None,
                 *, tokenizer=None, run_dir=None, callbacks=(), resume_from=None, parent: str | None = None):
        info = ckpt.read_info(resume_from) if resume_from is not None else None
        if config is None:
            if info is None or info.train_config is None:
                raise ValueError("config=None takes the settings of the checkpoint being resumed; pass a "
                                 "TrainConfig" + ("" if info is None else f" ({info.path} holds no training settings)"))
            config = TrainConfig.from_dict(info.train_config)
        self.resume_changes = resume_changes(info.train_config, config, info.step, info.path) if info else {}
        vocab_size = getattr(getattr(unwrap(model), "config", None), "vocab_size", None)
        for name, data in (("training", train_data), ("validation", val_data)):
            if data is not None and not isinstance(data, BatchSource):
                raise TypeError(f"the {name} data is a {type(data).__name__}, which has no batch(batch_size, generator, "
                                f"device) method; give a lmkit.data.TokenDataset (e.g. from load_prepared) or another "
                                f"BatchSource")
            if data is not None and vocab_size is not None:  # a MiniLM classifier has its own vocabulary
                check_token_range(data, vocab_size, name)
        self.config = cfg = config
        self.dist, self.device = init_distributed(cfg.device)
        self.parallel = parallel_mode(cfg, self.dist.world_size)  # "single", "ddp" or "fsdp"
        if self.device.type == "cuda":
            enable_tf32()
        self.amp_dtype = autocast_dtype(self.device, cfg.dtype)
        self.model = unwrap(model)  # the plain module: what gets saved
        if self.parallel != "fsdp":  # FSDP moves each process's shard to the device, never the whole model
            self.model = self.model.to(self.device)
        if isinstance(getattr(self.model, "config", None), GPTConfig):
            check_first_step_fits(self.model.config, cfg, self.device, weights_allocated=self.parallel != "fsdp",
                                  world_size=self.dist.world_size)
        for module in self.model.modules():  # a GPT, or the one inside a classifier
            if isinstance(module, GPT):
                module.activation_checkpointing = cfg.activation_checkpointing
        self.train_data, self.val_data, self.tokenizer = train_data, val_data, tokenizer
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.parent = parent
        self.step = 0
        self.history: list[dict] = []
        self.interrupted = False
        self._resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self._history_log_interval: int | None = None  # the resumed run's own, for rows rewritten from history
        self.batch_generator = torch.Generator().manual_seed(cfg.seed + 7919 * self.dist.rank)
        if self.run_dir is not None and self.dist.is_main and self.run_dir.is_dir():
            lock_run(self.run_dir)  # before anything is read or written: a second writer fails here
            ckpt.clean_stale(self.run_dir)
        if resume_from is None and self.run_dir is not None and ckpt.list_checkpoints(self.run_dir):
            raise ValueError(f"{self.run_dir} already holds checkpoints of an earlier run; start a fresh folder "
                             f"(lmkit.runs.new_run) or pass resume_from={str(self.run_dir)!r} to continue it")
        if info is not None:  # the weights go in before sharding: every process reads the whole file
            self._restore_weights(info)
        self._ddp = None
        forward = self.model
        if self.parallel == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # gradient_as_bucket_view: the all-reduce buckets are the gradients, not a second copy of them
            self._ddp = forward = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        elif self.parallel == "fsdp":
            self._shard()
        self.optimizer = make_optimizer(self.model, cfg, self.device)  # over the shards, under FSDP
        if info is not None:
            self._restore_state(info)
        else:
            torch.manual_seed(cfg.seed + self.dist.rank)  # dropout masks
        self._forward = torch.compile(forward) if cfg.compile else forward
        if self.run_dir is not None and self.dist.is_main:
            self._start_run_dir()

    def _shard(self) -> None:
        """FSDP2: each block, then the whole model, sharded over a 1-D mesh of the processes
        (``fully_shard``; nccl on CUDA, gloo on CPU), then rank 0's weights copied into every
        process's shard (DDP does the same at its start), so all processes start from one model.
        On CUDA with bf16, blocks compute in bf16 and gradients are reduced in fp32."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # FSDP2 warns of any block output that is a view, in case the caller changes it in place; the
        # blocks' value tensors are views, and nothing in lmkit changes a block's output in place
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        full = self.model.state_dict() if self.dist.is_main else {}
        mesh = init_device_mesh(self.device.type, (self.dist.world_size,))
        policy = MixedPrecisionPolicy()
        if self.amp_dtype == torch.bfloat16:
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in [m for m in self.model.modules() if isinstance(m, Block)]:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(self.model, mesh=mesh, mp_policy=policy)
        set_model_state_dict(self.model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def _agree_on_stop(self, stop: dict) -> None:
        """Every process stops after the same step: a signal reaches the processes of a job at slightly
        different times, and one that stopped alone would leave the others waiting in a collective."""
        import torch.distributed as dist

        flag = torch.tensor([stop.get("signal", 0)], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # SIGTERM (15) outranks SIGINT (2)
        if int(flag) and "signal" not in stop:
            stop["signal"] = signal.Signals(int(flag))

    def _parameter_names(self) -> list[str]:
        """The name of each parameter in the optimizer's order: the ids a plain ``state_dict`` uses."""
        names = {id(p): name for name, p in self.model.named_parameters()}
        return [names[id(p)] for group in self.optimizer.param_groups for p in group["params"]]

    # ------------------------------------------------------------------------------------- loop
    def train(self) -> pd.DataFrame:
        """Run until ``max_steps``; return the metrics.

        Ctrl-C (SIGINT, the notebook's stop button) finishes the current step, saves a checkpoint and
        returns (a second Ctrl-C stops at once). SIGTERM does the same, then raises TrainingTerminated,
        so a batch job exits non-zero with a checkpoint to resume from.
        """
        cfg = self.config
        self._emit("on_train_start")
        # a refresh a second: each one is a message to the notebook's front end (tqdm's default is ten)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="training", unit="step", mininterval=1.0,
                   disable=not (cfg.progress and self.dist.is_main))
        stop: dict = {}
        previous = _install_stop_handlers(stop)
        try:
            while self.step < cfg.max_steps and not stop:
                m = self.train_step()
                if self.dist.enabled:
                    self._agree_on_stop(stop)
                bar.update(1)
                bar.set_postfix(loss=f"{m['train_loss']:.3f}", lr=f"{m['lr']:.2e}",
                                tok_s=f"{m['tokens_per_sec']:.0f}", refresh=False)
                last = self.step == cfg.max_steps
                if self.step % cfg.eval_interval == 0 or last:
                    e = self.evaluate()
                    if "val_loss" in e and not bar.disable:
                        bar.write(f"step {self.step}: val loss {e['val_loss']:.4f}")
                every = cfg.checkpoint_interval or cfg.eval_interval
                if self.run_dir is not None and (self.step % every == 0 or last):
                    self.save_checkpoint()
        except KeyboardInterrupt:  # raised by a callback, or a second Ctrl-C
            stop.setdefault("signal", signal.SIGINT)
        finally:
            _restore_handlers(previous)
            bar.close()
        if stop:
            self.interrupted = True
            saved = self.save_checkpoint() if self.run_dir is not None and self.step > 0 else None
            where = f"; checkpoint {saved}" if saved else ""
            if stop["signal"] == signal.SIGTERM:
                fix = (f"continue with resume_from={str(self.run_dir)!r}" if saved else
                       "nothing was saved (no run_dir): pass run_dir=lmkit.runs.new_run(...) to be able to resume")
                raise TrainingTerminated(f"terminated by SIGTERM at step {self.step}{where}; {fix}")
            log.warning("interrupted at step %d%s", self.step, where)
        self._emit("on_train_end")
        return self.metrics

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum_steps`` micro-batches; returns its metrics row."""
        cfg, t0 = self.config, time.perf_counter()
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum_steps):
            x, y = self.train_data.batch(cfg.batch_size, self.batch_generator, self.device)
            syncing = self._ddp is None or micro == cfg.grad_accum_steps - 1  # all-reduce once per step
            with (contextlib.nullcontext() if syncing else self._ddp.no_sync()):
                with autocast(self.device, self.amp_dtype):
                    loss = self._forward(x, y).loss / cfg.grad_accum_steps
                loss.backward()
            total += loss.detach()
        clip = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        grad_norm = float(gathered(norm))  # FSDP: a DTensor
        if self.dist.enabled:  # log the loss of the global batch, not this process's part
            import torch.distributed as dist

            dist.all_reduce(total)  # SUM: gloo has no AVG
            total /= self.dist.world_size
        loss_value = float(total)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad(set_to_none=True)
            raise FloatingPointError(
                f"non-finite loss ({loss_value}) or gradient norm ({grad_norm}) at step {self.step + 1}; "
                f"the update was skipped and no checkpoint was written. Lower learning_rate "
                f"(now {lr:.3g}) or set grad_clip, then resume from the last checkpoint.")
        self._emit("on_before_update")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        dt = time.perf_counter() - t0
        tokens = x.numel() * cfg.grad_accum_steps * self.dist.world_size
        row = {"step": self.step, "train_loss": loss_value, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_sec": tokens / dt, "step_time": dt}
        self._record(row, write=self.step % cfg.log_interval == 0)
        self._emit("on_step", row)
        return row

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over ``eval_batches`` fixed batches of each split (same batches every time)."""
        cfg = self.config
        self.model.eval()
        row = {"step": self.step}
        for split, data in (("train", self.train_data), ("val", self.val_data)):
            if data is None:
                continue
            g = torch.Generator().manual_seed(cfg.seed + 1)  # fixed: evaluations are comparable
            losses = []
            for _ in range(cfg.eval_batches):
                x, y = data.batch(cfg.batch_size, g, self.device)
                with autocast(self.device, self.amp_dtype):
                    losses.append(float(self.model(x, y).loss))
            row[f"{split}_eval_loss" if split == "train" else "val_loss"] = sum(losses) / len(losses)
        if self.parallel == "fsdp":  # without a backward pass the root keeps its weights gathered: shard them again
            self.model.reshard()
        self.model.train()
        self._record(row, write=True)
        self._emit("on_eval", row)
        return row

    # ------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> tuple[dict, dict]:
        """Everything but the weights needed to resume exactly: ``(tensors, JSON-able meta)``.

        Under DDP and FSDP this is a collective call: every rank's batch-sampling and dropout RNG
        states are gathered, so each rank resumes on its own stream; under FSDP the optimizer's
        shards too (``torch.distributed.checkpoint``'s full state dict, offloaded to rank 0's CPU),
        keyed as a single process keys it, so the checkpoint resumes with any number of processes.
        """
        if self.parallel == "fsdp":  # the whole state gathered on rank 0, in a plain state_dict's form
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            self.model.reshard()  # a forward pass without backward (a callback's probe) leaves the root gathered

            full = get_optimizer_state_dict(self.model, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            index = {name: i for i, name in enumerate(self._parameter_names())}
            optimizer_state = {"state": {index[name]: st for name, st in full.get("state", {}).items()},
                               "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                                                for g in full.get("param_groups", [])]}
        else:
            optimizer_state = self.optimizer.state_dict()
        tensors, meta = ckpt.flatten_optimizer_state(optimizer_state)
        rng_tensors, rng_meta = ckpt.capture_rng()
        tensors.update(rng_tensors)
        tensors["rng.batch"] = self.batch_generator.get_state()
        if self.dist.enabled:
            import torch.distributed as dist

            per_rank = [None] * self.dist.world_size
            dist.all_gather_object(per_rank, (self.batch_generator.get_state(), torch.get_rng_state()))
            for rank, (batch_state, torch_state) in enumerate(per_rank):
                tensors[f"rng.batch.rank{rank}"], tensors[f"rng.torch.rank{rank}"] = batch_state, torch_state
        meta.update(rng_meta, step=self.step, world_size=self.dist.world_size)
        return tensors, meta

    def save_checkpoint(self, path=None) -> Path | None:
        """Save into ``run_dir/checkpoints/step_NNNNNN``; returns the path (None on ranks other than 0,
        which only contribute their RNG states)."""
        state = self.state_dict()
        weights = None
        if self.parallel == "fsdp":  # every process gives its shard; rank 0 receives the whole, on its CPU
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            weights = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            return None
        if path is None:
            if self.run_dir is None:
                raise ValueError("save_checkpoint needs a path when the Trainer has no run_dir")
            path = self.run_dir / "checkpoints" / f"step_{self.step:06d}"
        path = ckpt.save(path, self.model, self.tokenizer, step=self.step, train_config=self.config.to_dict(),
                         trainer_state=state, metrics=self.history, parent=self.parent, weights=weights)
        self._apply_retention(keep=path)
        self.last_checkpoint = path
        self._emit("on_checkpoint", path)
        return path

    def _apply_retention(self, keep: Path) -> None:
        k = self.config.keep_last
        if k is None:
            return
        for old in ckpt.list_checkpoints(self.run_dir)[:-k]:
            if old != keep and old != self._resumed_from:
                shutil.rmtree(old, ignore_errors=True)

    def _restore_weights(self, info: ckpt.CheckpointInfo) -> None:
        """The checkpoint's weights into the plain model (before DDP or FSDP wraps it)."""
        if info.model_config != self.model.config:
            a, b = info.model_config.to_dict(), self.model.config.to_dict()
            diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
            raise ValueError(f"cannot resume from {info.path}: its model config differs from this model's "
                             f"(checkpoint vs model): {diff}")
        saved_tokenizer = ckpt.load_tokenizer_of(info)
        if saved_tokenizer is not None:
            if self.tokenizer is not None:
                ckpt.check_same_tokenizer(info, saved_tokenizer, self.tokenizer, "the tokenizer given to the Trainer")
            else:
                self.tokenizer = saved_tokenizer  # its checkpoints keep the run's tokenizer
        self._saved_state = ckpt.load_trainer_state(info.path)  # refused here, before any process shards or trains
        ckpt.load_weights(self.model, info.path, "cpu" if self.parallel == "fsdp" else self.device)

    def _restore_state(self, info: ckpt.CheckpointInfo) -> None:
        """Optimizer, RNG states and step from the checkpoint (after the optimizer exists)."""
        tensors, meta = self._saved_state
        del self._saved_state
        state = ckpt.unflatten_optimizer_state(tensors, meta)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for pid, entries in state["state"].items():  # a state tensor of another shape would fail inside the update
            for name, value in entries.items():
                if torch.is_tensor(value) and value.dim() and pid < len(params) and value.shape != params[pid].shape:
                    raise ckpt.CheckpointError(f"{info.path}: optimizer state {name} has shape {tuple(value.shape)}"
                                               f" for a parameter of shape {tuple(params[pid].shape)}")
        if self.parallel == "fsdp":  # a plain state_dict's ids → names; each process keeps its shard of it
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            names = self._parameter_names()
            try:
                state = {"state": {names[pid]: st for pid, st in state["state"].items()},
                         "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
            except IndexError:
                raise ckpt.CheckpointError(f"{info.path}: the optimizer state holds more parameters than the model "
                                           f"({len(names)})") from None
            set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state)
        ckpt.restore_rng(tensors, meta)
        self.batch_generator.set_state(tensors["rng.batch"])
        if self.dist.enabled:
            own = f"rng.batch.rank{self.dist.rank}"
            if own in tensors and meta.get("world_size") == self.dist.world_size:
                self.batch_generator.set_state(tensors[own])
                torch.set_rng_state(tensors[f"rng.torch.rank{self.dist.rank}"])
            else:  # a different number of processes: a fresh stream per rank, no longer bit-exact
                log.warning("resuming with world_size=%d from a checkpoint of world_size=%s: batches are "
                            "resampled", self.dist.world_size, meta.get("world_size"))
                self.batch_generator.manual_seed(self.config.seed + 7919 * self.dist.rank + self.step)
        self.step = int(meta["step"])
        self.history = [r for r in info.metrics if r.get("step", 0) <= self.step]
        self._resumed_from = info.path
        log.info("resumed from %s at step %d", info.path, self.step)
        saved = TrainConfig.from_dict(info.train_config) if info.train_config else self.config
        self._history_log_interval = saved.log_interval
        for name, (old, new) in self.resume_changes.items():
            if name == "progress":
                continue
            note = ""
            if name == "max_steps" and self.config.lr_schedule != "constant":
                note = (f" (the {self.config.lr_schedule} schedule now ends at step {new}: learning rate "
                        f"{lr_at(self.step, saved):.3g} → {lr_at(self.step, self.config):.3g} at the next step)")
            log.warning("resuming with %s %r → %r%s; recorded in the run's config.json", name, old, new, note)

    # ---------------------------------------------------------------------------------- records
    @property
    def metrics(self) -> pd.DataFrame:
        """The history: one row per step, evaluation rows carry ``val_loss``."""
        return pd.DataFrame(self.history)

    def _start_run_dir(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock_run(self.run_dir)
        config_path = self.run_dir / "config.json"
        config = read_json(config_path, "run config", missing={})  # {}: a run folder made by hand
        if not config or self._resumed_from is not None:
            config.setdefault("model", self.model.config.to_dict())
            config["train"] = self.config.to_dict()
            if self._resumed_from is not None:
                config.setdefault("resumes", []).append(
                    {"from": str(self._resumed_from), "step": self.step,
                     "changed": {k: list(v) for k, v in self.resume_changes.items()}})
            write_json_atomic(config_path, config)
        metrics = self.run_dir / "metrics.jsonl"
        if self._resumed_from is not None and metrics.is_file():
            # a resumed run keeps its rows up to the checkpoint as they were; later ones belonged to lost steps
            lines = [line for line in metrics.read_text(encoding="utf-8").splitlines(keepends=True)
                     if _row_step(line) is not None and _row_step(line) <= self.step]
        else:  # a new folder (or a run resumed into one without metrics): rows as the run logged them
            every = self._history_log_interval or self.config.log_interval
            lines = [json.dumps(r) + "\n" for r in self.history if "train_loss" not in r or r["step"] % every == 0]
        write_bytes_atomic(metrics, "".join(lines).encode("utf-8"))

    def _record(self, row: dict, write: bool) -> None:
        self.history.append(row)
        if write and self.run_dir is not None and self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)


def _row_step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line that is not a complete row (a torn write)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    step = row.get("step") if isinstance(row, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
