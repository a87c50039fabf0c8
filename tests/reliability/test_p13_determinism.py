"""13. The same seed twice gives identical losses and weight hashes on CPU; a different seed differs.
Through Trainer, through the command line as typed and through the README's quickstart."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from lmkit import Trainer
from lmkit import checkpoint as ckpt
from lmkit.data import prepare_dataset
from lmkit.files import sha256

from ..conftest import make_config, make_model


def run(train, val, seed):
    trainer = Trainer(make_model(), make_config(seed=seed), train, val)
    losses = trainer.train()["train_loss"].dropna().tolist()
    h = hashlib.sha256()
    for p in trainer.model.parameters():
        h.update(p.detach().numpy().tobytes())
    return losses, h.hexdigest()


def test_same_seed_same_run_different_seed_different_run(token_data):
    train, val = token_data
    a, b, c = run(train, val, 1), run(train, val, 1), run(train, val, 2)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]


# --- as a user runs it: the command line as typed, and the README's quickstart, each in a fresh process

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "2",
        "--max-steps", "3", "--eval-interval", "3", "--eval-batches", "1", "--log-interval", "1",
        "--progress", "false", "--samples", "0", "--dropout", "0.1"]


def cli_run(prepared, runs, seed):
    done = subprocess.run([sys.executable, "-m", "lmkit", "train", "--data", str(prepared), "--runs-root", str(runs),
                           "--name", f"seed{seed}", "--seed", str(seed), *TINY], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    run = max(runs.glob(f"*-seed{seed}*"), key=lambda p: p.stat().st_mtime_ns)
    losses = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in line]
    return losses, sha256(ckpt.resolve(run) / "model.safetensors")


def test_the_command_line_gives_the_same_run_for_the_same_seed(tmp_path):
    prepared = tmp_path / "prepared"
    prepare_dataset(["To be, or not to be: that is the question.\n" * 60] * 3, prepared, val_fraction=0.34)
    a, b, c = (cli_run(prepared, tmp_path / "runs", seed) for seed in (1, 1, 2))
    assert a == b  # losses and final weights, from two separate processes
    assert a[0] != c[0] and a[1] != c[1]


def test_the_readme_quickstart_gives_the_same_weights_twice(tmp_path):
    section = (Path(__file__).resolve().parents[2] / "README.md").read_text().split("## Quickstart in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    code = code.replace("max_steps=600", "max_steps=2, eval_interval=2, eval_batches=1, progress=False")
    code = code.replace('prepare_dataset(fetch_shakespeare(), "data/prepared/shakespeare-char")',
                        'prepare_dataset(["ROMEO: To be, or not to be: that is the question.\\n" * 400] * 3, '
                        '"data/prepared/shakespeare-char", val_fraction=0.34)')
    code += "\nimport hashlib\nprint('WEIGHTS', hashlib.sha256(b''.join(p.detach().numpy().tobytes() " \
            "for p in model.parameters())).hexdigest())\n"
    hashes = []
    for i in range(2):
        folder = tmp_path / f"user{i}"
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        hashes.append(done.stdout.split("WEIGHTS ")[1].strip())
    assert hashes[0] == hashes[1]
