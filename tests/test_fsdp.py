"""FSDP2 under torchrun on CPU (gloo, 2 processes): the same losses as one process and as DDP,
checkpoints in the one format (they load in one process and resume under any parallelism), exact
resume after SIGTERM, kill -9, and the errors of asking for it without torchrun."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import torch

from lmkit import GPT, GPTConfig, TrainConfig, Trainer, checkpoint
from lmkit.data import TokenDataset

from .test_cli import TINY
from .test_distributed import GLOBAL_BATCHES, prepared, torchrun  # noqa: F401  (prepared: a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

PARITY_WORKER = GLOBAL_BATCHES + r"""
from lmkit import CharTokenizer, GPT, GPTConfig, Trainer, TrainConfig
from lmkit.attention import AttentionSnapshots
from lmkit.diagnostics import Diagnostics

out, batch_size, parallel, checkpointing = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=VOCAB, block_size=T, n_layer=2, n_head=2, n_embd=16, dropout=0.0))
cfg = TrainConfig(max_steps=6, batch_size=batch_size, grad_accum_steps=2, warmup_steps=0, eval_interval=3,
                  eval_batches=1, progress=False, device="cpu", parallel=parallel,
                  activation_checkpointing=checkpointing)
name = f"{parallel}{int(checkpointing)}"
diagnostics, snapshots = Diagnostics(interval=2), AttentionSnapshots("abcdefgh")  # lmkit's own callbacks
t = Trainer(model, cfg, GlobalBatches(), GlobalBatches(), run_dir=os.path.join(out, "run_" + name),
            tokenizer=CharTokenizer("abcdefghijklmnopqrstuvwx"), callbacks=[diagnostics, snapshots])
t.train()
with torch.no_grad():  # under FSDP every process takes part in the forward pass
    logits = t.model(TOKENS[:T].view(1, T)).logits
if t.dist.is_main:
    torch.save({"losses": [r["train_loss"] for r in t.history if "train_loss" in r], "logits": logits,
                "checkpoint": str(t.last_checkpoint), "diagnostics": diagnostics.frame()[["grad_norm", "update_ratio"]]
                .to_numpy().tolist(), "snapshots": [torch.from_numpy(a.astype("float32")) for _, a in snapshots.snapshots]},
               os.path.join(out, name + ".pt"))
"""


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    out = tmp_path_factory.mktemp("parity")
    worker = out / "worker.py"
    worker.write_text(PARITY_WORKER)
    for parallel, checkpointing in (("fsdp", "0"), ("ddp", "0"), ("fsdp", "1"), ("ddp", "1")):
        done = torchrun(str(worker), str(out), "4", parallel, checkpointing)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "returned a view tensor" not in done.stderr, done.stderr[-3000:]
    single = subprocess.run([sys.executable, str(worker), str(out), "8", "auto", "0"], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "WORLD_SIZE": "1"})
    assert single.returncode == 0, single.stderr[-3000:]
    return {name: torch.load(out / f"{name}.pt", weights_only=True) for name in ("fsdp0", "ddp0", "fsdp1", "ddp1", "auto0")}


def test_fsdp_losses_equal_one_process_and_ddp_on_the_same_global_batches(parity):
    """2 processes × batch 4 (with gradient accumulation) == 1 process × batch 8, up to the order of
    float reductions: 1e-5 relative; FSDP and DDP reduce in the same order to 1e-6."""
    fsdp, ddp, single = parity["fsdp0"]["losses"], parity["ddp0"]["losses"], parity["auto0"]["losses"]
    assert len(fsdp) == 6
    assert fsdp == pytest.approx(single, rel=1e-5)
    assert fsdp == pytest.approx(ddp, rel=1e-6)
    assert parity["fsdp1"]["losses"] == pytest.approx(fsdp, rel=1e-6)  # activation checkpointing under FSDP
    assert parity["ddp1"]["losses"] == pytest.approx(ddp, rel=1e-6)  # and under DDP


def test_lmkit_callbacks_see_the_same_model_under_fsdp(parity):
    """Diagnostics (per-layer gradient norms and update ratios over every process's shard) and
    AttentionSnapshots (a probe every process runs, rank 0 records) give one process's figures."""
    fsdp, single = parity["fsdp0"], parity["auto0"]
    assert len(fsdp["diagnostics"]) == len(single["diagnostics"]) > 0
    for a, b in zip(fsdp["diagnostics"], single["diagnostics"], strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    assert len(fsdp["snapshots"]) == len(single["snapshots"]) == 2
    for a, b in zip(fsdp["snapshots"], single["snapshots"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-3)  # float16 snapshots


def test_a_checkpoint_saved_under_fsdp_loads_in_one_process_with_identical_logits(parity):
    path = checkpoint.resolve(parity["fsdp0"]["checkpoint"])
    checkpoint.verify(path)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        p.name for p in checkpoint.resolve(parity["auto0"]["checkpoint"]).iterdir())  # the one format
    model, _ = checkpoint.load(path)
    with torch.no_grad():
        tokens = torch.randint(0, 24, (4096,), generator=torch.Generator().manual_seed(123))[:16].view(1, 16)
        logits = model(tokens).logits
    torch.testing.assert_close(logits, parity["fsdp0"]["logits"], rtol=0, atol=1e-6)
    single, _ = checkpoint.load(checkpoint.resolve(parity["auto0"]["checkpoint"]))
    for (name, a), b in zip(model.state_dict().items(), single.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    tensors, meta = checkpoint.load_trainer_state(path)
    one_tensors, one_meta = checkpoint.load_trainer_state(checkpoint.resolve(parity["auto0"]["checkpoint"]))
    assert meta["world_size"] == 2
    assert meta["param_groups"] == one_meta["param_groups"] and meta["scalars"] == one_meta["scalars"]
    optimizer = sorted(k for k in tensors if k.startswith("optim."))
    assert optimizer == sorted(k for k in one_tensors if k.startswith("optim."))  # keyed as one process keys it
    for key in optimizer:
        assert tensors[key].shape == one_tensors[key].shape


RESUME_WORKER = r"""
import os, signal, sys, numpy as np, torch, torch.distributed as dist
from lmkit import Callback, GPT, GPTConfig, Trainer, TrainConfig
from lmkit.data import TokenDataset
from lmkit.trainer import TrainingTerminated

run, parallel, stop_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
resume = len(sys.argv) > 4
data = TokenDataset(np.random.default_rng(0).integers(0, 24, 5000).astype(np.int64), 16)


class TermRankZero(Callback):  # SIGTERM reaches rank 0 alone: every process must still stop at the same step
    def on_step(self, trainer, row):
        if trainer.step == stop_at and trainer.dist.rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)


torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1))
cfg = TrainConfig(max_steps=8, batch_size=4, warmup_steps=2, eval_interval=4, checkpoint_interval=2, eval_batches=1, log_interval=1,
                  progress=False, device="cpu", parallel=parallel)
t = Trainer(model, None if resume else cfg, data, data, run_dir=run, resume_from=run if resume else None,
            callbacks=[TermRankZero()])
try:
    t.train()
except TrainingTerminated as e:
    print(f"rank {t.dist.rank} stopped at step {t.step}: {e}", flush=True)
    sys.exit(3)
"""


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_fsdp_resume_after_sigterm_continues_with_the_uninterrupted_losses(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(RESUME_WORKER)
    whole = torchrun(str(worker), str(tmp_path / "whole"), "fsdp", "0")
    assert whole.returncode == 0, whole.stderr[-3000:]

    stopped = torchrun(str(worker), str(tmp_path / "cut"), "fsdp", "3")
    assert stopped.returncode != 0
    assert "rank 0 stopped at step 3" in stopped.stdout and "rank 1 stopped at step 3" in stopped.stdout, stopped.stdout
    assert checkpoint.resolve(tmp_path / "cut").name == "step_000003"
    resumed = torchrun(str(worker), str(tmp_path / "cut"), "fsdp", "0", "resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    want, got = _losses(tmp_path / "whole"), _losses(tmp_path / "cut")
    assert sorted(got) == list(range(1, 9))
    assert [got[s] for s in range(1, 9)] == pytest.approx([want[s] for s in range(1, 9)], rel=1e-6)


def test_cli_fsdp_run_samples_in_one_process_and_resumes_under_one_process_ddp_and_fsdp(prepared, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    done = torchrun("-m", "lmkit", "train", "--data", str(prepared), "--runs-root", str(runs), *TINY,
                    "--parallel", "fsdp", "--activation-checkpointing", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation (all" in done.stdout  # the report, on the gathered model
    (run,) = runs.iterdir()
    sample = subprocess.run([sys.executable, "-m", "lmkit", "sample", "--checkpoint", str(run), "--max-new-tokens", "20"],
                            capture_output=True, text=True, timeout=120)
    assert sample.returncode == 0, sample.stderr[-2000:]
    longer = [a if a != "6" else "8" for a in TINY]
    one = subprocess.run([sys.executable, "-m", "lmkit", "train", "--data", str(prepared), "--resume", str(run), *longer,
                          "--parallel", "auto"], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    ddp = torchrun("-m", "lmkit", "train", "--data", str(prepared), "--resume", str(run),
                   *[a if a != "6" else "10" for a in TINY], "--parallel", "ddp")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = torchrun("-m", "lmkit", "train", "--data", str(prepared), "--resume", str(run),
                    *[a if a != "6" else "12" for a in TINY], "--parallel", "fsdp")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert checkpoint.resolve(run).name == "step_000012"
    config = json.loads((run / "config.json").read_text())
    assert [r["changed"].get("parallel") for r in config["resumes"]] == [["fsdp", "auto"], ["auto", "ddp"], ["ddp", "fsdp"]]


def test_kill_9_under_fsdp_leaves_an_intact_checkpoint_to_resume_from(prepared, tmp_path):  # noqa: F811
    runs = tmp_path / "runs"
    many = [a if a not in ("6", "3") else {"6": "4000", "3": "1"}[a] for a in TINY]  # a checkpoint every step
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmkit", "train",
           "--data", str(prepared), "--runs-root", str(runs), *many, "--parallel", "fsdp"]
    job = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            folders = list(runs.glob("*/checkpoints/step_*")) if runs.is_dir() else []
            if len(folders) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoints within 120 s")
    finally:  # the agent and both workers at once, mid-step or mid-save (torchrun starts its workers in their own sessions)
        processes = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
        for p in processes:
            p.kill()
        psutil.wait_procs(processes, timeout=60)
    (run,) = runs.iterdir()
    newest = checkpoint.newest_intact_checkpoint(run)
    checkpoint.verify(newest)
    step = int(newest.name.split("_")[1])
    longer = [a if a != "6" else str(step + 2) for a in TINY]
    resumed = torchrun("-m", "lmkit", "train", "--data", str(prepared), "--resume", str(run), *longer, "--parallel", "fsdp")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint.resolve(run).name == f"step_{step + 2:06d}"


def test_fsdp_or_ddp_in_one_process_says_to_use_torchrun(prepared, tmp_path):  # noqa: F811
    model = GPT(GPTConfig(vocab_size=24, block_size=16, n_layer=1, n_head=2, n_embd=16))
    data = TokenDataset(np.arange(100) % 24, 16)
    for parallel in ("fsdp", "ddp"):
        with pytest.raises(ValueError, match=rf"parallel='{parallel}' .* one process; start it with torchrun.*"
                                             rf"torchrun --nproc_per_node=2 -m lmkit train --parallel {parallel}"):
            Trainer(model, TrainConfig(parallel=parallel, device="cpu"), data)
    with pytest.raises(ValueError, match="parallel='zero'; use 'auto', 'ddp' or 'fsdp'"):
        TrainConfig(parallel="zero")
    runs = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-m", "lmkit", "train", "--data", str(prepared), "--runs-root", str(runs),
                           *TINY, "--parallel", "fsdp"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "WORLD_SIZE": "1"})
    assert done.returncode == 2 and "start it with torchrun" in done.stderr and "Traceback" not in done.stderr
    assert not runs.exists()  # refused before a run folder was made
