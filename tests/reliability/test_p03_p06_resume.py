"""3. Resume after interruption reproduces the uninterrupted run bit for bit (dropout and random
batches on), continuing on exactly the next batch.
6. A bad resume request is refused before any step, naming the problem, changing nothing on disk."""

import json
import os
import signal

import pytest
import torch

from lmkit import Callback, Trainer
from lmkit import checkpoint as ckpt

from ..conftest import make_config, make_model


def test_resume_reproduces_uninterrupted_run_bit_for_bit(token_data, tmp_path):
    train, val = token_data
    full = Trainer(make_model(), make_config(), train, val, run_dir=tmp_path / "full").train()

    class StopAt(Callback):
        def on_step(self, trainer, metrics):
            if trainer.step == 6:
                raise KeyboardInterrupt

    first = Trainer(make_model(), make_config(), train, val, run_dir=tmp_path / "cut", callbacks=[StopAt()])
    first.train()
    assert first.interrupted and first.step == 6
    assert (tmp_path / "cut" / "checkpoints" / "step_000006").is_dir()
    torch.manual_seed(999)  # whatever the caller's RNG does meanwhile must not matter
    resumed = Trainer(make_model(), make_config(), train, val, run_dir=tmp_path / "cut",
                      resume_from=tmp_path / "cut")
    assert resumed.step == 6
    after = resumed.train()
    assert after["train_loss"].dropna().tolist() == full["train_loss"].dropna().tolist()  # exact, not approx
    assert after["val_loss"].dropna().tolist() == full["val_loss"].dropna().tolist()
    for p, q in zip(resumed.model.parameters(), Trainer(make_model(), make_config(), train, val,
                                                        resume_from=tmp_path / "full").model.parameters(), strict=False):
        assert torch.equal(p, q)
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 13))  # no duplicated steps


def test_real_sigint_stops_at_a_step_boundary_and_resume_is_exact(token_data, tmp_path):
    train, val = token_data
    full = Trainer(make_model(), make_config(), train, val).train()["train_loss"].dropna().tolist()

    class CtrlC(Callback):
        def on_step(self, trainer, metrics):
            if trainer.step == 5:
                os.kill(os.getpid(), signal.SIGINT)  # what the notebook's stop button sends

    cut = Trainer(make_model(), make_config(), train, val, run_dir=tmp_path, callbacks=[CtrlC()])
    cut.train()  # returns instead of raising
    assert cut.interrupted and cut.step == 5
    assert ckpt.resolve(tmp_path).name == "step_000005"
    resumed = Trainer(make_model(), make_config(), train, val, run_dir=tmp_path, resume_from=tmp_path)
    assert resumed.train()["train_loss"].dropna().tolist() == full


def snapshot(folder):
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_resume_refuses_a_different_model(token_data, tmp_path):
    train, val = token_data
    Trainer(make_model(), make_config(max_steps=4), train, val, run_dir=tmp_path).train()
    before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match=r"n_layer.*\(2, 3\)"):
        Trainer(make_model(n_layer=3), make_config(), train, val, resume_from=tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("case", ["bogus_path", "empty_run", "block_size", "vocab_size"])
def test_bad_resume_requests_change_nothing(case, token_data, tmp_path):
    train, val = token_data
    run = tmp_path / "run"
    Trainer(make_model(), make_config(max_steps=4), train, val, run_dir=run).train()
    if case == "empty_run":
        run = tmp_path / "empty"
        (run / "checkpoints").mkdir(parents=True)
    before = snapshot(tmp_path)
    target = {"bogus_path": tmp_path / "no-such-run"}.get(case, run)
    model = make_model(**{"block_size": {"block_size": 16}, "vocab_size": {"vocab_size": 12}}.get(case, {}))
    expected = {"bogus_path": "no such checkpoint", "empty_run": "no checkpoints yet",
                "block_size": r"block_size.*\(8, 16\)", "vocab_size": r"vocab_size.*\(11, 12\)"}[case]
    with pytest.raises(ValueError, match=expected):
        Trainer(model, make_config(), train, val, resume_from=target)
    assert snapshot(tmp_path) == before


def test_a_used_run_folder_is_not_overwritten(token_data, tmp_path):
    train, val = token_data
    Trainer(make_model(), make_config(max_steps=4), train, val, run_dir=tmp_path).train()
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(make_model(), make_config(max_steps=4), train, val, run_dir=tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics
