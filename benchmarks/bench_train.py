"""Training-step throughput: lmkit against Hugging Face ``GPT2LMHeadModel`` at equal size.

Three models train on the same random windows of a text (char level), one optimizer step at a time:
lmkit at GPT-2's architecture (learned position table, so its parameters match HF's one for one),
lmkit with its default RoPE (no position table: 98k fewer parameters at config B, q and k rotated in
every layer), both through ``Trainer.train_step`` (the loop the notebooks use: AdamW, clipping,
autocast on CUDA), and ``GPT2LMHeadModel`` through the plain loop a Hugging Face user writes
(forward with labels, backward, clip, AdamW). Rounds alternate lmkit / lmkit RoPE / HF / a 1024²
matmul, so a change in machine load hits all of them alike; each figure is the median over rounds.
The target compares like with like (the GPT-2 architecture); the RoPE columns show what lmkit's
default costs on top.

- tokens/s = batch × context × steps / seconds;
- MFU = tokens/s × training FLOPs per token (6N + attention, ``GPT.flops_per_token``) / peak, where
  the peak is the GPU's published bf16 figure when ``lmkit.device.PEAK_FLOPS`` knows it (H100 989
  TFLOP/s, A100 312), else the FLOP/s of a 1024² matmul measured in the same rounds (fp32 on the
  CPU, bf16 on an unknown GPU); ``peak_source`` says which.

Configs (issue 8): A = 4 layers, 4 heads, 128 wide, context 64, batch 12 (nanoGPT's CPU recipe);
B = 6 layers, 6 heads, 384 wide, context 256, batch 8. Targets on a 2-thread CPU: lmkit ≥ 1.15× HF
at both, MFU ≥ 50 % (A) and ≥ 80 % (B).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from lmkit import GPT, GPTConfig, TrainConfig, Trainer
from lmkit.data import TokenDataset
from lmkit.device import auto_device, peak_flops

from .common import TINY_SHAKESPEARE, alternate, median, record, text_file

CONFIGS = {
    "A": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "B": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=8),
}
TARGET_RATIO = 1.15
TARGET_MFU = {"A": 0.50, "B": 0.80}


def char_tokens(path: Path | None, n: int = 1_000_000) -> tuple[np.ndarray, int]:
    """Character ids of a text file (its first ``n`` characters) and the vocabulary size; random ids
    over 65 symbols when there is no file (throughput does not depend on the text)."""
    if path is not None and Path(path).is_file():
        text = Path(path).read_text(encoding="utf-8")[:n]
        chars = sorted(set(text))
        lookup = {c: i for i, c in enumerate(chars)}
        return np.array([lookup[c] for c in text], dtype=np.int64), len(chars)
    return np.random.default_rng(0).integers(0, 65, n), 65


def hf_model(vocab_size: int, cfg: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size, n_positions=cfg["block_size"], n_embd=cfg["n_embd"],
                        n_layer=cfg["n_layer"], n_head=cfg["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def hf_train_step(data: TokenDataset, vocab_size: int, name: str, device: torch.device, compile: bool = False):
    """``(step, model)``: one Hugging Face GPT-2 training step at config ``name`` on random windows of
    ``data``, as a function — the plain loop an HF user writes (forward with labels, backward, clip,
    AdamW; bf16 autocast on CUDA) — and the model it trains."""
    cfg = CONFIGS[name]
    hf = hf_model(vocab_size, cfg).to(device).train()
    forward = torch.compile(hf) if compile else hf
    optimizer = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(1)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        x, _ = data.batch(cfg["batch_size"], generator, device)
        with amp:
            loss = forward(input_ids=x, labels=x).loss  # HF shifts the labels itself: T - 1 targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, hf


def reference_peak(device: torch.device, measured: float) -> tuple[float, str]:
    """The FLOP/s MFU is read against, and where it comes from: the published bf16 peak of a known GPU,
    else the matmul measured in this run."""
    published = peak_flops(device)
    return (published, "published") if published else (measured, "measured matmul")


def measure(name: str, tokens: np.ndarray, vocab_size: int, device: torch.device, rounds: int, steps: int,
            compile: bool = False) -> dict:
    cfg = CONFIGS[name]
    B, T = cfg["batch_size"], cfg["block_size"]
    data = TokenDataset(tokens, T)

    def lmkit_trainer(pos_encoding: str) -> tuple[GPT, Trainer]:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=vocab_size, block_size=T, n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                              n_embd=cfg["n_embd"], dropout=0.0, pos_encoding=pos_encoding))
        return model, Trainer(model, TrainConfig(max_steps=10**9, batch_size=B, learning_rate=1e-3, warmup_steps=0,
                                                 device=str(device), compile=compile, progress=False), data)

    model, trainer = lmkit_trainer("learned")  # GPT-2's architecture: HF's parameters, one for one
    rope_model, rope_trainer = lmkit_trainer("rope")  # lmkit's default: no position table, q and k rotated
    hf_step, hf = hf_train_step(data, vocab_size, name, device, compile)

    size = 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = alternate({
        "lmkit": lambda: [trainer.train_step() for _ in range(steps)],
        "lmkit_rope": lambda: [rope_trainer.train_step() for _ in range(steps)],
        "hf": lambda: [hf_step() for _ in range(steps)],
        "matmul": lambda: [a @ b for _ in range(8)],
    }, rounds=rounds, device=device)
    matmul = 2 * size**3 * 8 / median(times["matmul"])
    peak, peak_source = reference_peak(device, matmul)
    flops = model.flops_per_token()  # the same for both lmkit models: position tables are not counted
    tok = {k: B * T * steps / median(times[k]) for k in ("lmkit", "lmkit_rope", "hf")}
    mfu = {k: v * flops / peak for k, v in tok.items()}
    ratio = tok["lmkit"] / tok["hf"]
    return {"config": name, "layers": cfg["n_layer"], "width": cfg["n_embd"], "context": T, "batch": B,
            "lmkit_params": sum(p.numel() for p in model.parameters()), "hf_params": sum(p.numel() for p in hf.parameters()),
            "lmkit_tok_s": tok["lmkit"], "hf_tok_s": tok["hf"], "ratio": ratio,
            "peak_gflops": peak / 1e9, "peak_source": peak_source, "matmul_gflops": matmul / 1e9, "lmkit_mfu": mfu["lmkit"], "hf_mfu": mfu["hf"],
            "target_ratio": TARGET_RATIO, "target_mfu": TARGET_MFU[name],
            "met": ratio >= TARGET_RATIO and mfu["lmkit"] >= TARGET_MFU[name],
            "rope_tok_s": tok["lmkit_rope"], "rope_ratio": tok["lmkit_rope"] / tok["hf"], "rope_mfu": mfu["lmkit_rope"],
            "rounds": rounds, "steps_per_round": steps, "compile": compile}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--text", type=Path, default=TINY_SHAKESPEARE, help="text file whose characters are the data")
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds; the median is reported")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 step: checks that it runs")


def main(args: argparse.Namespace):
    device = auto_device(args.device)
    tokens, vocab = char_tokens(text_file(args.text))
    rows = []
    for name in args.configs:
        steps = 1 if args.quick else {"A": 20, "B": 4}[name] * (10 if device.type == "cuda" else 1)
        rows.append(measure(name, tokens, vocab, device, 1 if args.quick else args.rounds, steps, args.compile))
    return record("train_throughput", rows, device)
