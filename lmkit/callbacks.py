"""The Trainer's hooks: subclass ``Callback`` and override what you need; the Trainer calls each hook
on every callback in order. Notebooks attach plots this way (``lmkit.widgets.LiveLossPlot``), and so do
attention snapshots and training diagnostics, without the trainer knowing about any of them.

A leaf module, so that what plugs into training does not have to import the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from .trainer import Trainer

__all__ = ["Callback", "TensorBoardCallback"]


class Callback:
    """Override any of these; each gets the trainer, so it can read ``trainer.step``, ``.model``, ..."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_before_update(self, trainer: Trainer) -> None: ...  # gradients ready (clipped), weights not yet moved
    def on_step(self, trainer: Trainer, metrics: dict) -> None: ...
    def on_eval(self, trainer: Trainer, metrics: dict) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


class TensorBoardCallback(Callback):
    """The trainer's scalars, per step, as TensorBoard event files in ``run_dir/tensorboard/``.

    Tags: ``loss/train`` (each step's training loss), ``loss/val`` and ``loss/train_eval`` (each
    evaluation), ``lr``, ``grad_norm``, ``tokens_per_sec``. Each run writes into its own folder, so
    ``tensorboard --logdir runs/`` (or ``%tensorboard --logdir runs`` in JupyterLab after
    ``%load_ext tensorboard``) compares every run and every run of a sweep. A resumed run drops the
    events logged after its checkpoint (TensorBoard's ``purge_step``), as ``metrics.jsonl`` does.
    Only the main process writes under DDP. Needs the optional package ``tensorboard``.
    """

    def __init__(self, log_dir: str | Path | None = None, flush_secs: int = 10):
        self.log_dir = Path(log_dir) if log_dir is not None else None  # None: run_dir/tensorboard
        self.flush_secs = flush_secs  # a live TensorBoard sees new points this often
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        self._open(trainer)  # a missing folder or package is refused before the first step

    def _open(self, trainer: Trainer):
        """The event writer, made on the first event (an evaluation before ``train()`` counts)."""
        if self.writer is not None or not trainer.dist.is_main:
            return self.writer
        folder = self.log_dir or (trainer.run_dir / "tensorboard" if trainer.run_dir is not None else None)
        if folder is None:
            raise ValueError("TensorBoardCallback writes into the Trainer's run_dir/tensorboard: pass "
                             "run_dir=lmkit.runs.new_run(...) to the Trainer, or TensorBoardCallback(log_dir=...)")
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: only TensorBoard's users need it
        except ImportError:
            raise ImportError("TensorBoardCallback needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(folder), purge_step=trainer.step or None, flush_secs=self.flush_secs)
        return self.writer

    def on_step(self, trainer: Trainer, metrics: dict) -> None:
        writer = self._open(trainer)
        if writer is None:  # not the main process
            return
        step = metrics["step"]
        writer.add_scalar("loss/train", metrics["train_loss"], step)
        for key in ("lr", "grad_norm", "tokens_per_sec"):
            writer.add_scalar(key, metrics[key], step)

    def on_eval(self, trainer: Trainer, metrics: dict) -> None:
        writer = self._open(trainer)
        if writer is None:
            return
        for key, tag in (("val_loss", "loss/val"), ("train_eval_loss", "loss/train_eval")):
            if key in metrics:
                writer.add_scalar(tag, metrics[key], metrics["step"])
        writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
