"""DDP under torchrun on CPU (gloo): the CLI trains unchanged, only rank 0 writes, ranks stay in sync."""

import json
import os
import subprocess
import sys

import pytest

from lmkit import checkpoint, data

from .test_cli import TINY

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


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


GLOBAL_BATCHES = r"""
import os, sys, torch, torch.distributed as dist

VOCAB, T = 24, 16
TOKENS = torch.randint(0, VOCAB, (4096,), generator=torch.Generator().manual_seed(123))


class GlobalBatches:
    # call k builds the k-th global batch (batch_size * world_size windows, fixed by k) and returns
    # this process's rows: rank r gets rows [r*B:(r+1)*B]; a single process gets all of them
    def __init__(self):
        self.calls = 0

    def batch(self, batch_size, generator, device):
        world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
        g = torch.Generator().manual_seed(1000 + self.calls)
        self.calls += 1
        starts = torch.randint(0, len(TOKENS) - T - 1, (batch_size * world,), generator=g)
        x = torch.stack([TOKENS[s:s + T] for s in starts])
        y = torch.stack([TOKENS[s + 1:s + 1 + T] for s in starts])
        rows = slice(rank * batch_size, (rank + 1) * batch_size)
        return x[rows].to(device), y[rows].to(device)
"""  # the head of the parity workers here and in test_fsdp.py

PARITY_WORKER = GLOBAL_BATCHES + r"""
from lmkit import GPT, GPTConfig, Trainer, TrainConfig

out, batch_size = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)  # same init in both runs (DDP also broadcasts rank 0's weights)
model = GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
cfg = TrainConfig(max_steps=6, batch_size=batch_size, grad_accum_steps=2, warmup_steps=0, eval_interval=6,
                  eval_batches=1, progress=False, device="cpu")
t = Trainer(model, cfg, GlobalBatches())
t.train()
losses = [r["train_loss"] for r in t.history if "train_loss" in r]
flat = torch.cat([p.detach().flatten() for p in t.model.parameters()])
name = f"ddp_rank{dist.get_rank()}" if dist.is_initialized() else "single"
torch.save({"losses": losses, "weights": flat}, os.path.join(out, name + ".pt"))
"""


def test_ddp_matches_single_process_on_the_same_global_batches(tmp_path):
    """2 ranks x batch B (with grad accumulation, so no_sync is used) == 1 process x batch 2B: the same
    logged per-step losses (averaged over ranks) and the same final weights, up to float reduction order."""
    import torch

    worker = tmp_path / "parity_worker.py"
    worker.write_text(PARITY_WORKER)
    done = torchrun(str(worker), str(tmp_path), "4")
    assert done.returncode == 0, done.stderr[-3000:]
    single = subprocess.run([sys.executable, str(worker), str(tmp_path), "8"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "WORLD_SIZE": "1"})  # no torchrun: one process
    assert single.returncode == 0, single.stderr[-3000:]

    r0, r1, ref = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("ddp_rank0", "ddp_rank1", "single"))
    assert torch.equal(r0["weights"], r1["weights"])
    assert len(ref["losses"]) == 6
    assert r0["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert r1["losses"] == r0["losses"]  # the all-reduced loss is logged on every rank
    torch.testing.assert_close(r0["weights"], ref["weights"], rtol=1e-5, atol=1e-6)
