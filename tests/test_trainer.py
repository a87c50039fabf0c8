"""The trainer: schedule, parameter groups, learning, callbacks, metrics, accumulation, exact resume."""

import json
import math

import pytest
import torch

from lmkit import Callback, TrainConfig, Trainer
from lmkit.trainer import lr_at, param_groups

from .conftest import make_config, make_model


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half-way down the cosine: (1 + 0.1) / 2
    assert lr_at(110, cfg) == pytest.approx(0.1)
    lrs = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    linear = TrainConfig(max_steps=110, warmup_steps=10, learning_rate=1.0, min_lr_ratio=0.0, lr_schedule="linear")
    assert lr_at(60, linear) == pytest.approx(0.5)
    assert lr_at(50, TrainConfig(warmup_steps=10, learning_rate=2.0, lr_schedule="constant")) == 2.0


def test_weight_decay_only_on_matrices():
    model = make_model()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed and all(n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for n in decayed)
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "transformer.wte.weight" in skipped and "transformer.wpe.weight" in skipped
    assert any(n.endswith("ln_1.weight") for n in skipped) and any(n.endswith("c_attn.bias") for n in skipped)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_training_lowers_validation_loss(token_data):
    train, val = token_data
    trainer = Trainer(make_model(), make_config(max_steps=60, eval_interval=20), train, val)
    df = trainer.train()
    evals = df.dropna(subset=["val_loss"])
    assert list(evals["step"]) == [20, 40, 60]
    assert evals["val_loss"].iloc[-1] < math.log(11) - 0.8


def test_callbacks_metrics_and_checkpoints(token_data, tmp_path):
    seen = {"step": 0, "eval": [], "ckpt": [], "start": 0, "end": 0}

    class Spy(Callback):
        def on_train_start(self, trainer):
            seen["start"] += 1

        def on_step(self, trainer, metrics):
            seen["step"] += 1
            assert metrics["step"] == trainer.step and metrics["tokens_per_sec"] > 0

        def on_eval(self, trainer, metrics):
            seen["eval"].append(metrics["step"])

        def on_checkpoint(self, trainer, path):
            seen["ckpt"].append(path.name)

        def on_train_end(self, trainer):
            seen["end"] += 1

    train, val = token_data
    Trainer(make_model(), make_config(), train, val, run_dir=tmp_path, callbacks=[Spy()]).train()
    assert seen == {"step": 12, "eval": [4, 8, 12], "ckpt": ["step_000004", "step_000008", "step_000012"],
                    "start": 1, "end": 1}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [4, 8, 12]
    assert len([r for r in rows if "train_loss" in r]) == 12
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["n_layer"] == 2 and config["train"]["max_steps"] == 12


def test_keep_last_retention(token_data, tmp_path):
    train, val = token_data
    Trainer(make_model(), make_config(keep_last=2), train, val, run_dir=tmp_path).train()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000008", "step_000012"]


def test_gradient_accumulation_equals_big_batch(token_data):
    train, _ = token_data
    a = Trainer(make_model(dropout=0.0), make_config(batch_size=8, max_steps=3), train)
    b = Trainer(make_model(dropout=0.0), make_config(batch_size=4, grad_accum_steps=2, max_steps=3), train)
    la, lb = a.train()["train_loss"].dropna().tolist(), b.train()["train_loss"].dropna().tolist()
    assert la == pytest.approx(lb, rel=1e-5)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=False):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad, message", [
    (dict(max_steps=0), "max_steps"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(lr_schedule="step"), "lr_schedule"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(batch_size=2.5), "batch_size"),
])
def test_train_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_train_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="learnig_rate"):
        TrainConfig.from_dict({"learnig_rate": 1e-3})




def test_sigterm_names_the_checkpoint_to_resume_from_or_says_nothing_was_saved(token_data, tmp_path):
    import os
    import signal

    from lmkit.trainer import TrainingTerminated

    class TermAt(Callback):
        def on_step(self, trainer, metrics):
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingTerminated, match=r"step 3; nothing was saved \(no run_dir\)"):
        Trainer(make_model(), make_config(), *token_data, callbacks=[TermAt()]).train()
    run = tmp_path / "run"
    with pytest.raises(TrainingTerminated, match=r"checkpoint .*step_000003; continue with resume_from="):
        Trainer(make_model(), make_config(), *token_data, run_dir=run, callbacks=[TermAt()]).train()


def test_data_without_a_batch_method_is_refused_naming_what_to_give(token_data):
    from lmkit import Trainer

    train, _ = token_data
    with pytest.raises(TypeError, match=r"the validation data is a list, which has no batch\(batch_size"):
        Trainer(make_model(), make_config(), train, [1, 2, 3])
