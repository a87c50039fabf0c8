"""Generation speed: new tokens per second with and without the KV cache.

What is measured: ``GPT.generate`` producing 256 new tokens from a 64-token prompt on the default
model width and depth (``GPTConfig(vocab_size=65, block_size=512)``, so prompt + new tokens fit in
the context and the cache never has to be cropped), batch size 1 (``--batch 1 8`` adds a batch of 8).

How: the model is randomly initialised (speed does not depend on the weights), in eval mode under
``torch.no_grad``, decoding greedily (``top_k=1``) so the cached and uncached paths must produce the
same tokens; that is asserted before timing. ``common.alternate`` times the two paths in
alternating rounds (default 5) after one warm-up call each. Tokens/s = batch × new tokens / median
seconds of one ``generate`` call.

Target: the cache makes generation at least 3× faster (``speedup`` = cached / uncached tokens/s).
"""

from __future__ import annotations

import argparse

import pandas as pd
import torch

from lmkit.device import auto_device
from lmkit.model import GPT, GPTConfig

from .common import alternate, median, record

NAME = "generation"
TARGET_SPEEDUP = 3.0
VOCAB_SIZE = 65  # tinyshakespeare's character set; only the embedding size depends on it
QUICK = {"prompt": 16, "new_tokens": 16, "rounds": 2}  # a smoke check: seconds, not a measurement


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes for a smoke check ({QUICK['prompt']}-token prompt, "
                             f"{QUICK['new_tokens']} new tokens, {QUICK['rounds']} rounds)")
    parser.add_argument("--device", default="cpu", help='"cpu", "cuda", "mps" or "auto" (default: cpu)')
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per path (default: 5)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch size(s) (default: 1; e.g. 1 8)")
    parser.add_argument("--prompt", type=int, default=64, help="prompt length in tokens (default: 64)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens to generate (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the prompt")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def main(args: argparse.Namespace) -> pd.DataFrame:
    device = auto_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    prompt_len, new_tokens, rounds = args.prompt, args.new_tokens, args.rounds
    if args.quick:
        prompt_len, new_tokens, rounds = QUICK["prompt"], QUICK["new_tokens"], QUICK["rounds"]
    block_size = 512
    if prompt_len + new_tokens > block_size:
        raise ValueError(f"--prompt {prompt_len} + --new-tokens {new_tokens} exceeds block_size={block_size}; "
                         "the cache would be cropped and the comparison would no longer be like for like")
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(vocab_size=VOCAB_SIZE, block_size=block_size)).to(device).eval()
    rows = [_measure(model, batch, prompt_len, new_tokens, rounds, device, args.seed) for batch in args.batch]
    return record(NAME, rows, device)


def _measure(model: GPT, batch: int, prompt_len: int, new_tokens: int, rounds: int, device: torch.device,
             seed: int) -> dict:
    """One table row: cached and uncached tokens/s for one batch size."""
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(VOCAB_SIZE, (batch, prompt_len), generator=gen).to(device)  # (B, T)

    def run(use_cache: bool) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(prompt, new_tokens, top_k=1, use_cache=use_cache)

    cached, uncached = run(True), run(False)
    assert torch.equal(cached, uncached), "greedy decoding with and without the KV cache gave different tokens"
    times = alternate({"cached": lambda: run(True), "uncached": lambda: run(False)}, rounds, device)
    tokens = batch * new_tokens
    cached_tps, uncached_tps = tokens / median(times["cached"]), tokens / median(times["uncached"])
    speedup = cached_tps / uncached_tps
    return {"batch": batch, "prompt": prompt_len, "new_tokens": new_tokens, "rounds": rounds,
            "cached_tok_s": cached_tps, "uncached_tok_s": uncached_tps, "speedup": speedup,
            "target": f">= {TARGET_SPEEDUP:g}x", "met": speedup >= TARGET_SPEEDUP}
