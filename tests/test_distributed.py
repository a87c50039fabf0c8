"""DDP under torchrun on CPU (gloo): the CLI trains unchanged, only rank 0 writes, ranks stay in sync."""

import json
import subprocess
import sys

import pytest

from lmkit import checkpoint, data

from .test_cli import TINY

pytestmark = pytest.mark.slow


def torchrun(*args, cwd=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture
def prepared(tmp_path):
    texts = [f"Scene {i}. Enter a messenger with news of battle number {i}.\n" * 30 for i in range(4)]
    data.prepare_dataset(texts, tmp_path / "prepared", val_fraction=0.25)
    return tmp_path / "prepared"


def test_cli_train_under_torchrun_writes_one_run_from_rank_zero(prepared, tmp_path):
    runs = tmp_path / "runs"
    done = torchrun("-m", "lmkit", "train", "--data", str(prepared), "--runs-root", str(runs), *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs.iterdir()  # one folder, although two processes ran
    assert "2 process(es)" in done.stdout
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == list(range(1, 7))  # each step logged once
    _, meta = checkpoint.load_trainer_state(checkpoint.resolve(run))
    assert meta["world_size"] == 2

    longer = [a if a != "6" else "8" for a in TINY]
    resumed = torchrun("-m", "lmkit", "train", "--data", str(prepared), "--resume", str(run), *longer)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint.resolve(run).name == "step_000008"


WORKER = r"""
import sys, torch, torch.distributed as dist
from lmkit import GPT, GPTConfig, Trainer, TrainConfig
from lmkit.data import load_prepared
train, val, tok, _ = load_prepared(sys.argv[1], 16)
torch.manual_seed(dist.get_rank() if dist.is_initialized() else 0)  # different init per rank on purpose
model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
t = Trainer(model, TrainConfig(max_steps=5, batch_size=4, grad_accum_steps=2, eval_interval=5, eval_batches=1,
                               progress=False, device="cpu"), train, val)
t.train()
flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
torch.save(flat, f"{sys.argv[2]}/rank{dist.get_rank()}.pt")
"""


def test_ranks_end_with_identical_weights(prepared, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    done = torchrun(str(tmp_path / "worker.py"), str(prepared), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    import torch

    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(a, b)  # DDP broadcast rank 0's initial weights, then all-reduced every step
