"""Time to loss: how long lmkit's default CPU recipe takes to reach a validation loss on a text file.

The text is split as nanoGPT's ``shakespeare_char`` splits it (first 90 % train, last 10 % val, one
character per token). The default recipe is ``03_training``'s: 4 layers × 128 wide with RoPE, context
128, batch 8, AdamW at 3e-3 with 50 warm-up steps and a cosine decay to 10 %; the cosine's length is
the budget (``--max-steps``, 800 here, as nanoGPT's recipe sets its decay to its 2000 iterations;
03 runs 2000). It trains with ``Trainer.train_step``; every ``--eval-every`` steps the loss is
computed over the *whole* validation split (``lmkit.evaluate.lm_loss``, untimed), and the run stops
at the first evaluation at or below ``--target`` (1.88: nanoGPT's CPU recipe ends at 1.8857 on
tiny-shakespeare).

The reference is nanoGPT's recipe on the same machine: 2000 iterations × its step time. nanoGPT is
not installed here, so its step time is estimated from Hugging Face ``GPT2LMHeadModel`` at the same
config (4 layers, 128 wide, context 64, batch 12), timed in this run: HF trains at 0.87–0.93× nanoGPT's
tokens/s on this kind of machine (issue 8), so nanoGPT's step ≈ 0.9 × HF's. Target: ≤ 60 % of it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from lmkit import GPT, GPTConfig, TrainConfig, Trainer
from lmkit.data import TokenDataset, load_prepared, prepare_dataset
from lmkit.device import auto_device
from lmkit.evaluate import lm_loss

from .bench_train import CONFIGS, hf_train_step
from .common import TINY_SHAKESPEARE, alternate, median, record, text_file

NANOGPT_ITERS = 2000
HF_VS_NANOGPT = 0.9  # HF GPT2LMHeadModel's tokens/s as a share of nanoGPT's (0.87–0.93 measured, issue 8)
TARGET_SHARE = 0.60


def hf_step_seconds(tokens, vocab_size: int, device: torch.device, rounds: int = 5, steps: int = 10) -> float:
    """Median seconds of one HF GPT-2 training step at nanoGPT's CPU config (A) on ``tokens``, measured now."""
    step, _ = hf_train_step(TokenDataset(tokens, CONFIGS["A"]["block_size"]), vocab_size, "A", device)
    times = alternate({"hf": lambda: [step() for _ in range(steps)]}, rounds=rounds, device=device)
    return median(times["hf"]) / steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", type=Path, default=TINY_SHAKESPEARE, help="any UTF-8 text file (default: tiny-shakespeare)")
    parser.add_argument("--target", type=float, default=1.88, help="validation loss to reach (nats per character)")
    parser.add_argument("--max-steps", type=int, default=800, help="the recipe's schedule length (its cosine ends here)")
    parser.add_argument("--eval-every", type=int, default=25, help="steps between whole-split evaluations")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--pos-encoding", default="rope", choices=["rope", "learned", "sinusoidal"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--quick", action="store_true", help="20 steps on the first 200k characters: checks that it runs")


def main(args: argparse.Namespace):
    text_file(args.text)
    device = auto_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        return _run(args, device, Path(tmp))


def _run(args: argparse.Namespace, device: torch.device, tmp: Path):
    source = Path(args.text)
    if args.quick:
        source = tmp / "quick.txt"
        source.write_text(Path(args.text).read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    prepare_dataset(str(source), tmp / "data", val_fraction=0.1)
    train, val, tok, meta = load_prepared(tmp / "data", args.block_size)
    max_steps = 20 if args.quick else args.max_steps
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=args.block_size, pos_encoding=args.pos_encoding))
    trainer = Trainer(model, TrainConfig(max_steps=max_steps, batch_size=args.batch_size,
                                         learning_rate=args.learning_rate, warmup_steps=min(50, max_steps // 4),
                                         device=str(device), progress=False), train)
    trained, reached, history = 0.0, None, []
    while trainer.step < max_steps and reached is None:
        t0 = time.perf_counter()
        for _ in range(min(args.eval_every, max_steps - trainer.step)):
            trainer.train_step()
        trained += time.perf_counter() - t0
        loss = lm_loss(model, val.data, batch_size=64)["loss"]
        history.append((trainer.step, round(loss, 4)))
        print(f"step {trainer.step}: val loss {loss:.4f} after {trained:.1f} s of training", flush=True)
        if loss <= args.target:
            reached = trainer.step
    hf_step = hf_step_seconds(train.data, tok.vocab_size, device, rounds=2 if args.quick else 5)
    nanogpt_s = NANOGPT_ITERS * hf_step * HF_VS_NANOGPT
    row = {"text": Path(args.text).name, "chars": meta["train_chars"] + meta["val_chars"], "target": args.target,
           "reached": reached is not None, "steps": reached or trainer.step, "train_s": trained,
           "final_val_loss": history[-1][1], "hf_step_ms": hf_step * 1e3, "nanogpt_est_s": nanogpt_s,
           "share_of_nanogpt": trained / nanogpt_s if reached else float("nan"), "target_share": TARGET_SHARE,
           "met": reached is not None and trained / nanogpt_s <= TARGET_SHARE,
           "recipe": f"{args.pos_encoding} ctx{args.block_size} b{args.batch_size} lr{args.learning_rate} cos{max_steps}"}
    return record("time_to_loss", [row], device)
