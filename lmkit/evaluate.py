"""Evaluation: language-modelling loss, perplexity and bits per character over a whole split;
classification metrics (``classification_metrics``, scikit-learn underneath).

Bits per character (bpc) divides the total negative log-likelihood, in bits, by the number of
characters the tokens stand for, so a character-level and a BPE model are comparable on one table
(Graves 2013 reports enwik8 in bpc; the same conversion is used for byte-level models).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def sliding_windows(n_tokens: int, block_size: int, stride: int | None = None) -> list[tuple[int, int]]:
    """``(start, first_scored)`` for windows over a sequence of ``n_tokens`` tokens.

    Window ``start`` feeds tokens ``[start, start + T)`` and predicts ``[start + 1, start + T]``;
    of those, only positions from ``first_scored`` on are counted, so every token after the first is
    predicted exactly once. A stride below T gives each prediction more context (stride = T: none
    overlap, fastest; stride = 1: full context for every token, slowest).
    """
    T = min(block_size, n_tokens - 1)
    if T < 1:
        raise ValueError(f"need at least 2 tokens to evaluate, got {n_tokens}")
    stride = stride or T
    if not 1 <= stride <= T:
        raise ValueError(f"stride={stride} must be in [1, {T}] (the window length); a larger one skips tokens")
    starts = sorted(set(range(0, n_tokens - 1 - T, stride)) | {n_tokens - 1 - T})
    windows, covered = [], 0  # target positions 1..covered are already scored
    for s in starts:
        first = max(covered + 1, s + 1)
        if first <= s + T:
            windows.append((s, first))
            covered = s + T
    return windows


@torch.no_grad()
def lm_loss(model, tokens, *, stride: int | None = None, batch_size: int = 32, n_chars: int | None = None,
            device=None, progress: bool = False) -> dict:
    """Mean next-token loss over *all* of ``tokens`` (1-D ids), with perplexity and bits per token/char.

    ``n_chars``: characters of text the tokens encode (for bpc); defaults to one per token.
    """
    device = device or next(model.parameters()).device
    tokens = np.asarray(tokens)
    T = model.config.block_size
    windows = sliding_windows(len(tokens), T, stride)
    T = min(T, len(tokens) - 1)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in tqdm(range(0, len(windows), batch_size), desc="evaluating", disable=not progress):
        chunk = windows[i:i + batch_size]
        block = torch.from_numpy(np.stack([tokens[s:s + T + 1] for s, _ in chunk]).astype(np.int64))
        x, y = block[:, :-1].contiguous().to(device), block[:, 1:].contiguous().to(device)  # (B, T) each
        for row, (s, first) in enumerate(chunk):
            y[row, : first - s - 1] = -100  # already scored by an earlier window
        logits = model(x).logits.float()
        total += float(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100,
                                       reduction="sum"))
        count += int((y != -100).sum())
    model.train(was_training)
    loss = total / count
    chars_per_token = (n_chars or len(tokens)) / len(tokens)
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_char": loss / math.log(2) / chars_per_token, "tokens": count}


@torch.no_grad()
def sample_texts(model, tokenizer, prompt: str = "\n", n: int = 1, seed: int = 0, **generate_kwargs) -> list[str]:
    """``n`` sampled continuations of ``prompt`` (decoded, prompt included); ``generate_kwargs`` go to
    ``GPT.generate`` (``max_new_tokens``, ``temperature``, ``top_k``, ``top_p``)."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt)] * n, dtype=torch.long, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = model.generate(ids, generator=generator, **generate_kwargs)
    model.train(was_training)
    return [tokenizer.decode(row.tolist()) for row in out]


def classification_metrics(y_true, y_pred, probabilities=None, labels=None) -> dict:
    """Accuracy, macro-F1, a per-class table, one-vs-rest ROC-AUC and the confusion matrix, all from
    scikit-learn.

    ``y_true``/``y_pred``: (N,) class labels (ints or strings). ``labels``: every class, in the
    column order of ``probabilities`` (default: the sorted labels seen in y_true and y_pred).
    ``probabilities`` (N, K): predicted class probabilities; gives ``roc_auc``, the macro average of
    one-vs-rest AUCs over the classes that occur in y_true (NaN for a class that does not, or when
    y_true holds a single class: AUC is undefined there).

    Returns ``accuracy``, ``macro_f1``, ``per_class`` (DataFrame indexed by label: precision,
    recall, f1, support, and roc_auc with probabilities), ``confusion`` (DataFrame, rows = true
    label, columns = predicted) and ``roc_auc`` (None without probabilities).
    """
    import pandas as pd
    from sklearn import metrics

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D arrays of one length; got shapes "
                         f"{y_true.shape} and {y_pred.shape}")
    labels = list(np.unique(np.concatenate([y_true, y_pred]))) if labels is None else list(labels)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    per_class = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": support},
                             index=pd.Index(labels, name="label"))
    confusion = pd.DataFrame(metrics.confusion_matrix(y_true, y_pred, labels=labels),
                             index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))
    roc_auc = None
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.shape != (len(y_true), len(labels)):
            raise ValueError(f"probabilities has shape {probabilities.shape}; expected (N, K) = "
                             f"({len(y_true)}, {len(labels)}), one column per label in `labels`")
        # one-vs-rest per class (sklearn's multi_class="ovr" does the same, but refuses a split in
        # which some class never occurs); defined only for classes with positives and negatives
        per_class["roc_auc"] = [
            float(metrics.roc_auc_score(y_true == c, probabilities[:, i])) if 0 < (y_true == c).sum() < len(y_true)
            else float("nan") for i, c in enumerate(labels)]
        defined = per_class["roc_auc"].dropna()
        roc_auc = float(defined.mean()) if len(defined) else float("nan")
    return {
        "accuracy": float(metrics.accuracy_score(y_true, y_pred)),
        "macro_f1": float(metrics.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "per_class": per_class,
        "confusion": confusion,
        "roc_auc": roc_auc,
    }
