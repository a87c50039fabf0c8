"""8. KeyboardInterrupt in a training cell saves a checkpoint and returns control (see
test_p03_p06_resume for a real SIGINT); SIGTERM saves within a bounded time and exits non-zero;
the next run resumes from that checkpoint."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmkit import checkpoint as ckpt
from lmkit import data

pytestmark = pytest.mark.slow

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--eval-interval", "100000", "--log-interval", "1", "--progress", "false", "--samples", "0"]


def start_training(tmp_path, *extra) -> tuple[subprocess.Popen, Path, list[str]]:
    """``python -m lmkit train`` of a million steps in a subprocess, returned once it has logged a step:
    (the process, its runs folder, the command without the training flags)."""
    data.prepare_dataset(["To be, or not to be: that is the question.\n" * 60] * 3, tmp_path / "prep",
                         val_fraction=0.34)
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "lmkit", "train", "--data", str(tmp_path / "prep"), "--runs-root", str(runs)]
    proc = subprocess.Popen([*cmd, *TINY, *extra, "--max-steps", "1000000"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(runs.glob("*/metrics.jsonl")) or not list(runs.glob("*/metrics.jsonl"))[0].stat().st_size:
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    return proc, runs, cmd


def test_sigterm_saves_then_exits_non_zero_and_the_run_resumes(tmp_path):
    proc, runs, cmd = start_training(tmp_path)
    proc.send_signal(signal.SIGTERM)
    sent = time.time()
    out, err = proc.communicate(timeout=30)
    assert time.time() - sent < 10  # bounded: the current step, then one save
    assert proc.returncode == 143, err[-2000:]
    assert "terminated by SIGTERM at step" in err and "Traceback" not in err
    (run,) = runs.iterdir()
    saved = ckpt.resolve(run)
    step = ckpt.read_info(saved).step
    assert saved.name == f"step_{step:06d}" and step > 0
    more = subprocess.run([*cmd, "--resume", str(run), *TINY, "--max-steps", str(step + 3)],
                          capture_output=True, text=True, timeout=120)
    assert more.returncode == 0, more.stderr[-2000:]
    assert ckpt.resolve(run).name == f"step_{step + 3:06d}"


def test_ctrl_c_on_the_command_line_saves_says_interrupted_and_exits_130(tmp_path):
    """The notebook gets control back after Ctrl-C; the command line must not report a finished run."""
    proc, runs, _ = start_training(tmp_path, "--samples", "2")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: Ctrl-C at step" in err and "--resume" in err and "Traceback" not in err
    (run,) = runs.iterdir()
    assert ckpt.read_info(ckpt.resolve(run)).step > 0  # it saved
    assert not (run / "final_metrics.json").exists() and not (run / "samples.txt").exists()  # not a finished run
    assert "bits per character" not in out
