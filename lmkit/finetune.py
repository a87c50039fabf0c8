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

The classifier models and their data live in ``lmkit.classifier`` (re-exported here): checkpoints
load them without importing fine-tuning.

Shapes: B batch, T tokens per passage, C width, K number of classes.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .classifier import (  # re-exported: the classifier models and their data, as before
    PAD_ID,
    ClassificationData,
    Classifier,
    ClassifierOutput,
    GPTClassifier,
    MiniLMClassifier,
    balanced_class_weights,
    encode_passages,
    masked_mean,
)
from .corpus import describe_documents
from .data import Document
from .device import Measure
from .evaluate import evaluate_classifier
from .metrics import classification_metrics
from .model import GPT
from .params import is_int
from .pretrained import minilm_path
from .rundir import read_config
from .trainer import Trainer

__all__ = [
    # fine-tuning
    "PLAY_GENRES", "METHODS", "EDITIONS", "genre_passages", "split_by_play", "majority_baseline",
    "trainable_parameters", "freeze_backbone", "add_lora", "merge_lora", "make_classifier", "measure",
    "train_classifier", "REFERENCE", "MINILM_TOKENS", "fine_tune", "fine_tuned_classifiers", "results_table",
    # re-exported: the classifier models and their data (lmkit.classifier), their scoring (lmkit.evaluate)
    "PAD_ID", "ClassificationData", "Classifier", "ClassifierOutput", "GPTClassifier", "MiniLMClassifier",
    "balanced_class_weights", "encode_passages", "masked_mean", "evaluate_classifier", "minilm_path",
]

log = logging.getLogger(__name__)

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
        if not is_int(value, 1):
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
# Methods: what trains
# ---------------------------------------------------------------------------------------------

def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (a tied tensor counts once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def freeze_backbone(model: Classifier) -> Classifier:
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

    if not is_int(r, 1):
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

measure = Measure  # the old name (a class, so now capitalised), kept for one release


def train_classifier(model: nn.Module, train_data: ClassificationData, val_data: ClassificationData | None,
                     config, **trainer_kwargs) -> dict:
    """Train with lmkit's ``Trainer`` (``config``: a TrainConfig; ``trainer_kwargs`` go to Trainer,
    e.g. ``run_dir``, ``tokenizer``, ``parent``, ``callbacks``) while measuring time and memory.

    Returns ``history`` (the Trainer's metrics DataFrame), ``wall_s``, ``peak_mb``, ``memory``
    (what peak_mb measures, see ``lmkit.device.Measure``), ``trainable`` and ``total`` parameter counts, and
    ``trainer``.
    """
    trainer = Trainer(model, config, train_data, val_data, **trainer_kwargs)
    with Measure(trainer.device) as m:
        history = trainer.train()
    trainable, total = trainable_parameters(model)
    return {"history": history, **m.as_dict(), "trainable": trainable, "total": total, "trainer": trainer}


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
        final = ckpt.newest_intact_checkpoint(run_dir)
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
