"""7. A NaN/inf loss stops the step before the optimizer update, reports the step, and never
overwrites the last good checkpoint with non-finite weights."""

import pytest
import torch

from lmkit import Callback, Trainer

from ..conftest import make_config, make_model


def test_non_finite_loss_stops_before_the_update(token_data, tmp_path):
    train, val = token_data
    model = make_model()
    trainer = Trainer(model, make_config(), train, val, run_dir=tmp_path)

    class Poison(Callback):
        def on_step(self, trainer, metrics):
            if trainer.step == 5:
                model.lm_head.register_forward_hook(lambda m, i, o: o * float("nan"))
                trainer.snapshot = [p.detach().clone() for p in model.parameters()]

    trainer.callbacks.append(Poison())
    with pytest.raises(FloatingPointError, match="step 6"):
        trainer.train()
    assert trainer.step == 5
    for p, q in zip(model.parameters(), trainer.snapshot, strict=False):
        assert torch.equal(p, q)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_000004"]
