"""2. `kill -9` of a training process at random moments during saves, several times: the newest
complete checkpoint loads, leftover temp folders are ignored and cleaned, only steps since it are lost."""

import random
import subprocess
import sys
import time

import pytest

from lmkit import checkpoint as ckpt

pytestmark = pytest.mark.slow

WORKER = r"""
import sys
import numpy as np
from lmkit import GPT, GPTConfig, Trainer, TrainConfig, checkpoint
from lmkit.data import TokenDataset
run = sys.argv[1]
data = TokenDataset(np.tile(np.arange(11, dtype=np.uint16), 300), 8)
model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
resume = run if checkpoint.list_checkpoints(run) else None
cfg = TrainConfig(max_steps=100_000, batch_size=2, eval_interval=100_000, checkpoint_interval=1, keep_last=3,
                  progress=False, device="cpu")
Trainer(model, cfg, data, run_dir=run, resume_from=resume).train()
"""


def test_kill_9_during_saves_loses_only_unsaved_steps(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    run = tmp_path / "run"
    rng = random.Random(0)
    last_step = 0
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(run)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until this process has saved past the previous step
            newest = ckpt.list_checkpoints(run)
            if newest and int(newest[-1].name.split("_")[1]) > last_step + 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.2))  # saves happen every step: this lands in or near one
        proc.kill()  # SIGKILL: no handler, no cleanup
        proc.wait()
        good = ckpt.newest_intact_checkpoint(run)
        assert good is not None, f"round {round_}: no loadable checkpoint"
        model, _ = ckpt.load(good)
        step = ckpt.read_info(good).step
        assert step >= last_step  # nothing saved before is lost
        last_step = step
    leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    ckpt.clean_stale(run)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], leftovers
    # keep_last=3, + the one resumed from, + one more when the kill fell between a save and the retention
    # that follows it (or inside its rmtree): the next save of a resumed run removes it
    assert len(ckpt.list_checkpoints(run)) <= 5


def test_clean_stale_removes_unfinished_saves_and_restores_a_half_swapped_one(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_000004", ".step_000005.tmp-123-abcd", ".step_000006.old-ef01", ".step_000004.old-2345"):
        (root / name).mkdir(parents=True)
    (root / ".step_000006.old-ef01" / "model.safetensors").write_bytes(b"old copy")
    ckpt.clean_stale(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["step_000004", "step_000006"]
    assert (root / "step_000006" / "model.safetensors").read_bytes() == b"old copy"
