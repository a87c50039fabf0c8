"""Attention capture: latency of ``output_attentions=True`` on 256 tokens, and of one explorer update.

What is measured, on the default model width and depth with a 256-token context
(``GPTConfig(vocab_size=V, block_size=256)``, V from a ``CharTokenizer`` over the text) and a
256-character Shakespeare text (the start of ``data/tinyshakespeare/input.txt``, shipped in the
repository):

- ``forward``: ``model(idx)`` without attentions (the fused attention kernel), for comparison;
- ``forward+attentions``: ``model(idx, output_attentions=True)``;
- ``capture``: ``lmkit.attention.capture(model, text, tokenizer)``: tokenising, the forward pass
  with attentions and the copy to float32 CPU tensors;
- ``explorer update``: one redraw of ``lmkit.widgets.AttentionExplorer`` after moving its head
  slider (attention is cached, so this is building the figure and sending it to the
  ``FigureWidget``; no browser is involved). Both the wall time of the slider change and the
  explorer's own ``last_update_ms`` are reported.

How: ``common.alternate`` times all four in alternating rounds (default 20) after a warm-up call;
forward passes run in eval mode under ``torch.no_grad``. Medians in milliseconds.

Targets: capture < 50 ms; one explorer update < 200 ms.
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from lmkit.attention import capture
from lmkit.device import auto_device
from lmkit.model import GPT, GPTConfig
from lmkit.tokenizer import CharTokenizer
from lmkit.widgets import VIEWS, AttentionExplorer

from .common import TINY_SHAKESPEARE, alternate, median, record, text_file

NAME = "attention"
TARGET_CAPTURE_MS = 50.0
TARGET_UPDATE_MS = 200.0
QUICK = {"tokens": 64, "rounds": 3}  # a smoke check: seconds, not a measurement


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes for a smoke check ({QUICK['tokens']} tokens, {QUICK['rounds']} rounds)")
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda", "mps" or "auto" (default: cpu)')
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds (default: 20)")
    parser.add_argument("--tokens", type=int, default=256, help="text length in characters = tokens (default: 256)")
    parser.add_argument("--view", default="heatmap", choices=VIEWS, help="explorer view to redraw (default: heatmap)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def sample_text(n_chars: int) -> str:
    """The first ``n_chars`` characters of tiny Shakespeare."""
    return text_file(TINY_SHAKESPEARE).read_text(encoding="utf-8")[:n_chars]


def main(args: argparse.Namespace) -> pd.DataFrame:
    device = auto_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n_tokens, rounds = (QUICK["tokens"], QUICK["rounds"]) if args.quick else (args.tokens, args.rounds)
    text = sample_text(n_tokens)
    tok = CharTokenizer.train(text)
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=n_tokens)).to(device).eval()
    idx = torch.tensor([tok.encode(text)], dtype=torch.long, device=device)  # (1, T)
    assert idx.size(1) == n_tokens

    explorer = AttentionExplorer({"model": (model, tok)}, text, view=args.view, max_tokens=n_tokens)
    n_heads = explorer.head.max + 1
    update_ms: list[float] = []

    def forward(output_attentions: bool):
        with torch.no_grad():
            return model(idx, output_attentions=output_attentions)

    def explorer_update() -> None:
        explorer.head.value = (explorer.head.value + 1) % n_heads  # one slider change = one redraw
        update_ms.append(explorer.last_update_ms)

    assert n_heads > 1, "the explorer needs two heads for a slider change to redraw"
    times = alternate({"forward": lambda: forward(False), "forward+attentions": lambda: forward(True),
                       "capture": lambda: capture(model, text, tok), "explorer update": explorer_update},
                      rounds, device)
    ms = {name: 1000 * median(t) for name, t in times.items()}
    timed_updates = update_ms[-rounds:]  # the first entry is the warm-up call
    rows = [
        _row("forward", n_tokens, rounds, ms["forward"]),
        _row("forward+attentions", n_tokens, rounds, ms["forward+attentions"]),
        _row("capture", n_tokens, rounds, ms["capture"], TARGET_CAPTURE_MS),
        _row(f"explorer update ({args.view})", n_tokens, rounds, ms["explorer update"], TARGET_UPDATE_MS),
        _row(f"explorer last_update_ms ({args.view})", n_tokens, rounds, median(timed_updates), TARGET_UPDATE_MS),
    ]
    return record(NAME, rows, device)


def _row(what: str, tokens: int, rounds: int, median_ms: float, target_ms: float | None = None) -> dict:
    met = None if target_ms is None else median_ms < target_ms
    return {"what": what, "tokens": tokens, "rounds": rounds, "median_ms": median_ms,
            "target_ms": target_ms, "met": met}
