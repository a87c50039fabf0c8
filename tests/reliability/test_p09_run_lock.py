"""9. Two runs on one run folder: exactly one gets it, the other fails fast and touches nothing.
keep-last-k never deletes the checkpoint being resumed from."""

import os
import signal
import subprocess
import sys
import time

import pytest

from lmkit import Trainer
from lmkit import checkpoint as ckpt
from lmkit.runs import RunInUseError, lock_run

from ..conftest import make_config, make_model

CLAIM = "import sys, time; from lmkit.runs import lock_run; lock_run(sys.argv[1]); print('got it', flush=True); time.sleep(3)"


def test_exactly_one_of_two_simultaneous_runs_gets_the_folder(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0
    loser = results[[p.returncode for p in procs].index(codes[1])]
    assert "RunInUseError" in loser[1] and "is in use by process" in loser[1]
    assert not (tmp_path / ".lock").exists()  # the winner released it on exit


def test_a_lock_whose_owner_has_not_written_its_pid_yet_is_not_taken_over(tmp_path):
    """Between the first process's exclusive create and its writing the pid the lock is empty for an
    instant; a second process that took that for a stale lock would share the folder (seen once in
    make test). An empty lock left long ago by a process that died in that instant is taken over."""
    lock = tmp_path / ".lock"
    lock.touch()
    with pytest.raises(RunInUseError, match="being claimed by another process right now"):
        lock_run(tmp_path)
    assert lock.read_text() == ""  # untouched
    old = time.time() - 60
    os.utime(lock, (old, old))
    assert lock_run(tmp_path).read_text() == str(os.getpid())


@pytest.mark.slow
def test_second_trainer_fails_fast_and_touches_nothing(token_data, tmp_path):
    train, val = token_data
    holder = subprocess.Popen([sys.executable, "-c", CLAIM.replace("time.sleep(3)", "time.sleep(30)"),
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "got it"
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    started = time.time()
    with pytest.raises(RunInUseError, match=str(holder.pid)):
        Trainer(make_model(), make_config(), train, val, run_dir=tmp_path)
    assert time.time() - started < 5
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert lock_run(tmp_path).read_text() == str(os.getpid())  # a dead owner's lock is taken over


def test_retention_never_deletes_the_checkpoint_being_resumed_from(token_data, tmp_path):
    train, val = token_data
    Trainer(make_model(), make_config(max_steps=8, keep_last=1), train, val, run_dir=tmp_path).train()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000008"]
    resumed = Trainer(make_model(), make_config(max_steps=12, keep_last=1), train, val, run_dir=tmp_path,
                      resume_from=tmp_path)
    resumed.train()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000008", "step_000012"]
