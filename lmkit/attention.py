"""Attention maps: capture them from lmkit and Hugging Face models, then read them.

``capture`` returns attention in the Hugging Face ``output_attentions`` convention (one
``(1, nh, T, T)`` tensor of post-softmax probabilities per layer), so bertviz and our plots accept
it unchanged, for lmkit's ``GPT`` and any Hugging Face model alike. On top of that:

- ``rollout``: attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers"), how much each token's input reaches each position through the layers;
- ``head_scores``: one row of descriptive numbers per head (entropy, distance, previous-token and
  first-token "attention sink" scores);
- ``induction_scores``: how strongly each head attends to the token *after* the previous occurrence
  of the current token on repeated random sequences, the induction-head signature (Olsson et al.
  2022, "In-context Learning and Induction Heads");
- ``AttentionSnapshots``: a Trainer callback that records the attention on a probe text at every
  evaluation (safetensors + JSON in the run folder), and ``load_snapshots`` to read them back.

Shape vocabulary (as in ``lmkit.model``): L layers, H = nh heads per layer, B batch, T tokens.
An "attention array" is ``(L, H, T, T)``: entry ``[l, h, i, j]`` is how much query ``i`` attends to
key ``j``; each row sums to 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import checkpoint as ckpt
from .callbacks import Callback
from .files import write_json_atomic
from .model import GPT, unwrap
from .params import is_int
from .pretrained import load_hf_model, load_minilm  # re-exported: 02_attention loads models through here

__all__ = ["capture", "as_array", "load_hf_model", "load_minilm", "rollout", "head_scores", "induction_pattern",
           "induction_score", "induction_scores", "AttentionSnapshots", "load_snapshots", "attention_by_hand",
           "snapshots_from_checkpoints"]

log = logging.getLogger(__name__)

Attentions = tuple[torch.Tensor, ...]  # one (B, nh, T, T) tensor per layer: Hugging Face's convention


# ----------------------------------------------------------------------------------------- capture
def capture(model, text: str | Sequence[int], tokenizer=None, *, max_tokens: int | None = None,
            device=None) -> tuple[Attentions, list[str]]:
    """Attention of ``model`` on ``text``: ``(attentions, tokens)``.

    ``model`` is an lmkit ``GPT`` (``tokenizer``: an lmkit tokenizer; each token is the decoded text
    of its id, so for a ``CharTokenizer`` the tokens join back to the text) or any Hugging Face model
    (``tokenizer``: its Hugging Face tokenizer; tokens from ``convert_ids_to_tokens``, special tokens
    included). ``text`` may also be a sequence of token ids (then ``tokenizer`` only names them).
    A Hugging Face model is switched to eager attention for the call (its default ``sdpa`` returns
    no weights) and switched back afterwards.

    Text longer than ``max_tokens`` or the model's context (``block_size``, or
    ``max_position_embeddings``) is cropped to its *last* tokens, with a warning (Hugging Face
    special tokens such as ``[CLS]``/``[SEP]`` are kept). ``device``: where the ids go (default: the
    model's device); the model itself is not moved.

    Returns one ``(1, nh, T, T)`` float32 CPU tensor per layer (rows sum to 1) and the T tokens.
    """
    inner = unwrap(model)
    if isinstance(inner, GPT):
        ids, tokens = _lmkit_ids(inner, text, tokenizer, max_tokens)
    else:
        ids, tokens = _hf_ids(inner, text, tokenizer, max_tokens)
    if device is None:
        device = _model_device(inner)
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    return _attention_forward(inner, idx), tokens


def as_array(attentions, batch_index: int = 0) -> np.ndarray:
    """``(L, H, T, T)`` float32 array of sequence ``batch_index`` from per-layer ``(B, nh, T, T)``
    attentions (``capture``'s or Hugging Face's ``output.attentions``); an ``(L, H, T, T)`` array or
    tensor passes through (checked). ValueError saying what to fix when shapes do not fit."""
    if isinstance(attentions, (np.ndarray, torch.Tensor)):
        arr = _to_numpy(attentions)
        if arr.ndim != 4:
            raise ValueError(
                f"an attention array must be (L, H, T, T), got shape {tuple(arr.shape)}; pass the per-layer "
                "tuple of (B, nh, T, T) tensors (output.attentions) or stack the layers first")
        _check_square(arr.shape, "the attention array")
        return arr
    if attentions is None or len(attentions) == 0:
        raise ValueError(
            "no attention maps (None or an empty tuple): run the model with output_attentions=True; a Hugging "
            "Face model must use eager attention (lmkit.attention.capture switches it for you)")
    first = None
    layers = []
    for i, layer in enumerate(attentions):
        if layer is None:
            raise ValueError(f"layer {i} has no attention map (None); run the model with output_attentions=True")
        a = _to_numpy(layer)
        if a.ndim != 4:
            raise ValueError(
                f"layer {i} has shape {tuple(a.shape)}; each layer must be (B, nh, T, T) as returned by "
                "output_attentions=True (add the batch axis with a[None] for a single (nh, T, T) map)")
        _check_square(a.shape, f"layer {i}")
        if first is None:
            first = a.shape
        elif a.shape != first:
            raise ValueError(f"layer {i} has shape {tuple(a.shape)} but layer 0 has {tuple(first)}; "
                             "all layers must share (B, nh, T, T): pass the layers of one forward pass")
        layers.append(a)
    if not -first[0] <= batch_index < first[0]:
        raise ValueError(f"batch_index={batch_index} is out of range for a batch of {first[0]}; "
                         f"use 0..{first[0] - 1}")
    return np.stack([a[batch_index] for a in layers])  # (L, H, T, T)


# ------------------------------------------------------------------------------------- analysis
def rollout(attn, residual: bool = True) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): ``(L, T, T)``, entry ``[l, i, j]`` the share of
    token j's input in position i after layer l.

    Heads are averaged per layer; with ``residual`` the skip connection is modelled as
    ``A' = 0.5 A + 0.5 I`` (rows re-normalised), and layers compose by matrix product:
    ``rollout[0] = A'_0``, ``rollout[l] = A'_l @ rollout[l-1]``.

    Caveat: rollout assumes attention mixes token representations linearly and ignores the MLPs and
    the value vectors (a head that attends strongly but writes little counts fully). Read it as a
    heuristic picture of information flow, not as an attribution of the output to the inputs.
    """
    a = as_array(attn).astype(np.float64).mean(axis=1)  # (L, T, T)
    if residual:
        a = 0.5 * a + 0.5 * np.eye(a.shape[-1])
        a = a / a.sum(axis=-1, keepdims=True)
    out = np.empty_like(a)
    out[0] = a[0]
    for layer in range(1, len(a)):
        out[layer] = a[layer] @ out[layer - 1]
    return out


def head_scores(attn, *, first_token: bool = True) -> pd.DataFrame:
    """One row per (layer, head) of an ``(L, H, T, T)`` attention array (or per-layer tuple):

    - ``entropy``: mean over query rows of the row's entropy in nats (masked keys, probability 0,
      add nothing): 0 for a head that looks at one token, ln(i+1) for uniform causal attention;
    - ``mean_distance``: mean over rows of ``sum_j a_ij |i - j|``, how far back (or ahead) it looks;
    - ``previous_token``: mean over rows i >= 1 of ``a_{i,i-1}``; 1 for a pure previous-token head;
    - ``first_token`` (when ``first_token=True``): mean over rows of ``a_{i,0}``, the "attention
      sink" score (heads that park their attention on the first token when nothing else fits).

    All means include query row 0, which in a causal model can only attend to itself.
    """
    a = as_array(attn).astype(np.float64)  # (L, H, T, T)
    L, H, T, _ = a.shape
    pos = np.arange(T)
    entropy = -(a * np.log(np.where(a > 0, a, 1.0))).sum(-1).mean(-1)  # (L, H)
    distance = (a * np.abs(pos[:, None] - pos[None, :])).sum(-1).mean(-1)
    previous = a[..., pos[1:], pos[:-1]].mean(-1) if T > 1 else np.full((L, H), np.nan)
    cols = {"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
            "entropy": entropy.ravel(), "mean_distance": distance.ravel(), "previous_token": previous.ravel()}
    if first_token:
        cols["first_token"] = a[..., :, 0].mean(-1).ravel()
    return pd.DataFrame(cols)


def induction_pattern(seq_len: int, repeats: int = 2) -> np.ndarray:
    """``(T, T)`` attention of an ideal induction head on a sequence of ``seq_len`` tokens repeated
    ``repeats`` times (T = seq_len * repeats): each token of a later copy attends to the token right
    after its previous occurrence (key ``i - seq_len + 1``); first-copy tokens, which have no
    earlier occurrence, attend to the first token."""
    T = seq_len * repeats
    a = np.zeros((T, T), dtype=np.float32)
    a[:seq_len, 0] = 1.0
    rows = np.arange(seq_len, T)
    a[rows, rows - seq_len + 1] = 1.0
    return a


def induction_score(attn, seq_len: int) -> np.ndarray:
    """``(L, H)`` mean attention from each token of the second and later copies to the token after its
    previous occurrence, for attention (``(L, H, T, T)`` or per-layer tuple) on a sequence repeated with
    period ``seq_len``; ``induction_pattern`` scores 1."""
    a = as_array(attn)
    return _induction_rows(a, seq_len)


def induction_scores(model, *, seq_len: int = 32, repeats: int = 2, batch: int = 4, seed: int = 0,
                     vocab_size: int | None = None) -> np.ndarray:
    """``(L, H)`` induction scores of ``model`` (Olsson et al. 2022), in [0, 1].

    Feeds ``batch`` sequences of ``seq_len`` uniformly random tokens (ids below ``vocab_size``,
    default the model's), each repeated ``repeats`` times, and averages over sequences and over the
    tokens of the later copies the attention to the token right after the previous occurrence.
    Random tokens make the repeat the only usable signal, so only a head that has learned to copy
    from the earlier context scores high. Seeded: the same ``seed`` gives the same scores.
    Works for lmkit ``GPT`` and Hugging Face causal language models.
    """
    for name, value, low in (("seq_len", seq_len, 2), ("repeats", repeats, 2), ("batch", batch, 1)):
        if not is_int(value, low):
            raise ValueError(f"induction_scores: {name}={value!r} must be an integer >= {low}")
    inner = unwrap(model)
    limit = _context_limit(inner)
    if limit is not None and seq_len * repeats > limit:
        raise ValueError(f"induction_scores: seq_len * repeats = {seq_len * repeats} tokens exceeds the model's "
                         f"context of {limit}; lower seq_len (at most {limit // repeats}) or repeats")
    vocab = vocab_size if vocab_size is not None else getattr(inner.config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 2:
        raise ValueError(f"induction_scores: vocab_size={vocab!r}; pass vocab_size= (an int >= 2) for this model")
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, seq_len), generator=g)  # (B, seq_len)
    idx = x.repeat(1, repeats).to(_model_device(inner))  # (B, T)
    a = np.stack([_to_numpy(layer) for layer in _attention_forward(inner, idx)])  # (L, B, H, T, T)
    return _induction_rows(a, seq_len).mean(axis=1)  # (L, H)


# ----------------------------------------------------------------------------- training snapshots
class AttentionSnapshots(Callback):
    """Record the model's attention on ``probe_text`` at every evaluation.

    Each ``on_eval`` appends ``(step, array)`` to ``.snapshots`` (array ``(L, H, T, T)`` in ``dtype``;
    float16 halves the memory and is exact enough to plot) and sets ``.tokens``. When the trainer
    has a ``run_dir``, it also writes ``run_dir/attention/step_NNNNNN.safetensors`` (tensor
    ``"attention"``) and ``run_dir/attention/tokens.json``; ``load_snapshots(run_dir)`` reads them.
    ``tokenizer`` defaults to the trainer's. The probe is cropped to its last ``max_tokens`` tokens
    (and to the model's ``block_size``).
    """

    def __init__(self, probe_text: str, tokenizer=None, max_tokens: int | None = 64, dtype: str = "float16"):
        if not isinstance(probe_text, str) or not probe_text:
            raise ValueError(f"AttentionSnapshots needs a non-empty probe text, got {probe_text!r}")
        if np.dtype(dtype) not in (np.float16, np.float32):
            raise ValueError(f"AttentionSnapshots: dtype={dtype!r}; use 'float16' or 'float32'")
        _check_max_tokens(max_tokens)
        self.probe_text, self.tokenizer, self.max_tokens = probe_text, tokenizer, max_tokens
        self.dtype = np.dtype(dtype)
        self.snapshots: list[tuple[int, np.ndarray]] = []
        self.tokens: list[str] | None = None

    def on_eval(self, trainer, metrics: dict) -> None:
        dist = getattr(trainer, "dist", None)
        recorder = dist is None or dist.is_main  # one recorder under DDP and FSDP: rank 0
        if not recorder and getattr(trainer, "parallel", None) != "fsdp":
            return
        tokenizer = self.tokenizer if self.tokenizer is not None else trainer.tokenizer
        if tokenizer is None:
            raise ValueError("AttentionSnapshots needs a tokenizer: pass AttentionSnapshots(probe_text, tokenizer=tok) "
                             "or Trainer(..., tokenizer=tok)")
        # a model sharded with FSDP computes only with every process, so all of them run the probe
        attentions, tokens = capture(trainer.model, self.probe_text, tokenizer, max_tokens=self.max_tokens)
        if not recorder:
            return
        array = as_array(attentions).astype(self.dtype)  # (L, H, T, T)
        self.snapshots.append((trainer.step, array))
        self.tokens = tokens
        if trainer.run_dir is not None:
            folder = Path(trainer.run_dir) / "attention"
            write_json_atomic(folder / "tokens.json", {"tokens": tokens, "probe_text": self.probe_text})
            _save_safetensors_atomic(folder / f"step_{trainer.step:06d}.safetensors", array, trainer.step)


def load_snapshots(run_dir: str | os.PathLike) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
    """``([(step, (L, H, T, T) array), ...], tokens)`` written by ``AttentionSnapshots``, sorted by step."""
    from safetensors.numpy import load_file

    folder = Path(run_dir) / "attention"
    files = [(int(m.group(1)), p) for p in folder.glob("step_*.safetensors")
             if (m := re.fullmatch(r"step_(\d+)\.safetensors", p.name))]
    if not files:
        raise FileNotFoundError(f"no attention snapshots in {folder}; attach AttentionSnapshots(probe_text) "
                                "as a callback to a Trainer that has a run_dir")
    tokens_file = folder / "tokens.json"
    if not tokens_file.is_file():
        raise FileNotFoundError(f"{tokens_file} is missing: the snapshots in {folder} have no token labels")
    tokens = json.loads(tokens_file.read_text(encoding="utf-8"))["tokens"]
    return [(step, load_file(str(p))["attention"]) for step, p in sorted(files)], tokens


# ------------------------------------------------------------------------------------- internals
def _check_max_tokens(max_tokens) -> None:
    if max_tokens is not None and (not is_int(max_tokens, 1)):
        raise ValueError(f"max_tokens={max_tokens!r} must be None or a positive integer")


def _check_square(shape, what: str) -> None:
    if shape[-1] != shape[-2]:
        raise ValueError(f"{what} has shape {tuple(shape)}: queries ({shape[-2]}) != keys ({shape[-1]}); pass "
                         "attention over the whole sequence in one forward pass (no KV cache)")


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def _model_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _context_limit(model) -> int | None:
    if isinstance(model, GPT):
        return model.config.block_size
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def _crop_limit(model, max_tokens) -> tuple[int | None, str]:
    _check_max_tokens(max_tokens)
    context = _context_limit(model)
    limits = [n for n in (context, max_tokens) if n is not None]
    return (min(limits) if limits else None), f"context={context}, max_tokens={max_tokens}"


def _lmkit_ids(model: GPT, text, tokenizer, max_tokens) -> tuple[list[int], list[str]]:
    if isinstance(text, str):
        if tokenizer is None:
            raise ValueError("capture: pass the model's lmkit tokenizer (tokenizer=tok) to capture text, or pass ids")
        ids = tokenizer.encode(text)
    else:
        ids = [int(i) for i in text]
    if not ids:
        raise ValueError("capture: the text is empty (no tokens); pass at least one token")
    limit, why = _crop_limit(model, max_tokens)
    if limit is not None and len(ids) > limit:
        warnings.warn(f"capture: text of {len(ids)} tokens cropped to its last {limit} ({why})", stacklevel=3)
        ids = ids[-limit:]
    if tokenizer is None:
        return ids, [str(i) for i in ids]
    chars = getattr(tokenizer, "chars", None)  # CharTokenizer: one character per id, no decode call
    tokens = [chars[i] for i in ids] if chars is not None else [tokenizer.decode([i]) for i in ids]
    return ids, tokens


def _hf_ids(model, text, tokenizer, max_tokens) -> tuple[list[int], list[str]]:
    if isinstance(text, str):
        if tokenizer is None:
            raise ValueError("capture: pass the model's Hugging Face tokenizer (tokenizer=tok) to capture text")
        enc = tokenizer(text, return_special_tokens_mask=True)
        ids, special = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    else:
        ids = [int(i) for i in text]
        special = [0] * len(ids)
    if not ids:
        raise ValueError("capture: the text is empty (no tokens); pass at least one token")
    limit, why = _crop_limit(model, max_tokens)
    if limit is not None and len(ids) > limit:
        lead = next((k for k, s in enumerate(special) if not s), len(ids))  # e.g. [CLS]
        trail = next((k for k, s in enumerate(reversed(special)) if not s), 0)  # e.g. [SEP]
        keep = limit - lead - trail
        if keep < 1:
            raise ValueError(f"capture: max_tokens={max_tokens} leaves no room beside {lead + trail} special tokens")
        warnings.warn(f"capture: text of {len(ids)} tokens cropped to its last {keep} (+ {lead + trail} special "
                      f"tokens; {why})", stacklevel=3)
        ids = ids[:lead] + ids[lead:len(ids) - trail][-keep:] + ids[len(ids) - trail:]
    tokens = tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(i) for i in ids]
    return ids, list(tokens)


@contextlib.contextmanager
def _inference(model):
    """eval mode, no_grad and (for Hugging Face models) eager attention; all restored on exit."""
    was_training = model.training
    cfg = getattr(model, "config", None)
    switch = not isinstance(model, GPT) and cfg is not None and getattr(cfg, "_attn_implementation", None) != "eager"
    previous = getattr(cfg, "_attn_implementation", None) if switch else None
    if switch:  # transformers 5's default sdpa returns an empty tuple for output_attentions, silently
        log.debug("switching %s to eager attention for the capture", type(model).__name__)
        _set_attn_implementation(model, "eager")
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        if switch and previous is not None:
            _set_attn_implementation(model, previous)


def _set_attn_implementation(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


def _attention_forward(model, idx: torch.Tensor) -> Attentions:
    """Per-layer (B, nh, T, T) float32 CPU attention of ``model`` on ids ``idx`` (B, T)."""
    with _inference(model):
        if isinstance(model, GPT):
            attentions = model(idx, output_attentions=True).attentions
        else:
            attentions = model(input_ids=idx, output_attentions=True).attentions
    if not attentions or any(a is None for a in attentions):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise ValueError(
            f"{type(model).__name__} returned no attention weights (attn_implementation={impl!r}); load it with "
            "attn_implementation='eager' (lmkit.attention.load_hf_model does) or use a model that supports "
            "output_attentions=True")
    return tuple(a.detach().float().cpu() for a in attentions)


def _induction_rows(a: np.ndarray, seq_len: int) -> np.ndarray:
    """Mean over later-copy rows i of a[..., i, i - seq_len + 1]; a is (..., T, T)."""
    T = a.shape[-1]
    if not 2 <= seq_len < T:
        raise ValueError(f"seq_len={seq_len} must be at least 2 and shorter than the sequence (T={T}): "
                         "the sequence must hold at least one full repeat")
    rows = np.arange(seq_len, T)
    return a[..., rows, rows - seq_len + 1].mean(-1)


def _save_safetensors_atomic(path: Path, array: np.ndarray, step: int) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        save_file({"attention": np.ascontiguousarray(array)}, str(tmp), metadata={"step": str(step)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# Teaching helpers
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def attention_by_hand(model, ids, *, layer: int = 0, head: int = 0) -> dict[str, np.ndarray]:
    """Every step of one head of an lmkit GPT, computed by hand from the layer's own weights.

    Returns ``x`` (T, C) the layer's input after its LayerNorm, ``q``/``k``/``v`` (T, hs) the head's
    projections, ``scores`` = q·kᵀ, ``scaled`` = scores/√hs, ``masked`` (future keys as NaN, i.e. −∞
    before the softmax), ``weights`` = softmax over keys, ``output`` = weights·v, and
    ``module_weights``: the same head's weights from ``model(ids, output_attentions=True)`` to
    check the hand computation against. Learned or sinusoidal positions only (RoPE rotates q and k).
    """
    cfg = model.config
    if cfg.pos_encoding == "rope":
        raise ValueError("attention_by_hand shows learned/sinusoidal positions; build the model with "
                         "pos_encoding='learned' (RoPE rotates q and k inside the head)")
    was_training = model.training
    model.eval()
    idx = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)  # (1, T)
    T, hs = idx.size(1), cfg.head_size
    h = model.transformer.wte(idx)
    h = h + (model.transformer.wpe(torch.arange(T)) if cfg.pos_encoding == "learned" else model.pe[:T])
    for block in model.transformer.h[:layer]:
        h, _, _ = block(h)
    block = model.transformer.h[layer]
    x = block.ln_1(h) if cfg.norm_first else h  # (1, T, C)
    q, k, v = block.attn.c_attn(x).split(cfg.n_embd, dim=2)
    q, k, v = (t[0, :, head * hs:(head + 1) * hs] for t in (q, k, v))  # (T, hs) each
    scores = q @ k.T  # (T, T)
    scaled = scores / math.sqrt(hs)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    if cfg.attn_window is not None:
        allowed &= ~torch.ones(T, T, dtype=torch.bool).tril(-cfg.attn_window)
    masked = scaled.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(masked, dim=-1)
    module = model(idx, output_attentions=True).attentions[layer][0, head]
    model.train(was_training)
    out = {"x": x[0], "q": q, "k": k, "v": v, "scores": scores, "scaled": scaled,
           "masked": masked.masked_fill(~allowed, float("nan")), "weights": weights, "output": weights @ v,
           "module_weights": module}
    return {name: t.detach().float().numpy() for name, t in out.items()}


def snapshots_from_checkpoints(run_dir, text: str, *, max_tokens: int = 64) -> tuple[list[tuple[int, np.ndarray]], list[str]]:
    """``(step, (L, H, T, T))`` for ``text`` at every intact checkpoint of a run, oldest first:
    the attention-evolution data for any run, even one trained without ``AttentionSnapshots``."""
    snapshots, tokens = [], []
    for path in ckpt.list_checkpoints(run_dir):
        try:
            info = ckpt.read_info(path)
            model, tokenizer = ckpt.load(info)
        except ckpt.CheckpointError:
            continue
        attentions, tokens = capture(model, text, tokenizer, max_tokens=max_tokens)
        snapshots.append((info.step, as_array(attentions)))
    if not snapshots:
        raise ValueError(f"{run_dir}: no intact checkpoints to take attention snapshots from")
    return snapshots, tokens
