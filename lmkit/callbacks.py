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

__all__ = ["Callback"]


class Callback:
    """Override any of these; each gets the trainer, so it can read ``trainer.step``, ``.model``, ..."""

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_before_update(self, trainer: Trainer) -> None: ...  # gradients ready (clipped), weights not yet moved
    def on_step(self, trainer: Trainer, metrics: dict) -> None: ...
    def on_eval(self, trainer: Trainer, metrics: dict) -> None: ...
    def on_checkpoint(self, trainer: Trainer, path: Path) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
