"""Evaluation: language-modelling loss, perplexity and bits per character over a whole split;
classifiers scored on labelled passages (``evaluate_classifier``; the pure metrics behind it and
behind bits per character are in ``lmkit.metrics``, re-exported here); generation scores
(BLEU and chrF through sacrebleu) on held-out continuations; robustness of a classifier to
character noise; and calibration of next-token probabilities.

Bits per character (bpc) divides the total negative log-likelihood, in bits, by the number of
characters the tokens stand for, so a character-level and a BPE model are comparable on one table
(Graves 2013 reports enwik8 in bpc; the same conversion is used for byte-level models).

BLEU (Papineni et al. 2002) and chrF (Popović 2015) come from sacrebleu (Post 2018, "A Call for
Clarity in Reporting BLEU Scores"), whose signature records the tokenisation, so a score can be
reproduced with its command-line tool. Calibration is the expected calibration error of Guo et al.
2017 ("On Calibration of Modern Neural Networks"): equal-width confidence bins, weighted by count.

Shapes: N scored positions (or passages), T tokens per window, V vocabulary size.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .classifier import ClassificationData
from .data import default_prepared_dir, load_prepared
from .metrics import bits_per_char, calibration_bins, classification_metrics
from .params import is_int
from .rundir import flatten_config, read_config
from .tokenizer import CharTokenizer

log = logging.getLogger(__name__)


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
    if stride is None:
        stride = T
    if not is_int(stride, 1, T):
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
def _scored_windows(model, tokens: np.ndarray, stride: int | None, batch_size: int, device, progress: bool):
    """Yield ``(logits (B, T, V) float32, targets (B, T))`` over ``sliding_windows``; targets already
    scored by an earlier window are -100, so every token after the first counts exactly once."""
    if not is_int(batch_size, 1):
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer (windows per forward pass)")
    T = model.config.block_size
    windows = sliding_windows(len(tokens), T, stride)
    T = min(T, len(tokens) - 1)
    was_training = model.training
    model.eval()
    try:
        for i in tqdm(range(0, len(windows), batch_size), desc="evaluating", mininterval=1.0, disable=not progress):
            chunk = windows[i:i + batch_size]
            block = torch.from_numpy(np.stack([tokens[s:s + T + 1] for s, _ in chunk]).astype(np.int64))
            x, y = block[:, :-1].contiguous().to(device), block[:, 1:].contiguous().to(device)  # (B, T) each
            for row, (s, first) in enumerate(chunk):
                y[row, : first - s - 1] = -100  # already scored by an earlier window
            yield model(x).logits.float(), y
    finally:
        model.train(was_training)


@torch.no_grad()
def lm_loss(model, tokens, *, stride: int | None = None, batch_size: int = 32, n_chars: int | None = None,
            device=None, progress: bool = False) -> dict:
    """Mean next-token loss over *all* of ``tokens`` (1-D ids), with perplexity and bits per token/char.

    ``n_chars``: characters of text the tokens encode (for bpc); defaults to one per token.
    """
    device = device or next(model.parameters()).device
    tokens = np.asarray(tokens)
    total, count = 0.0, 0
    for logits, y in _scored_windows(model, tokens, stride, batch_size, device, progress):
        total += float(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100,
                                       reduction="sum"))
        count += int((y != -100).sum())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "bits_per_char": bits_per_char(loss, len(tokens), n_chars or len(tokens)), "tokens": count}


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


def stream_text(model, tokenizer, prompt: str = "\n", seed: int = 0, **generate_kwargs) -> Iterator[str]:
    """One sampled continuation of ``prompt``, as text pieces the moment their tokens are sampled
    (``GPT.stream``): the prompt first, then the new text. A token that ends inside a multi-byte
    character (byte-level BPE) waits for the rest of it, so every piece is whole text."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(prompt)], dtype=torch.long, device=device)
    generator = torch.Generator(device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        yield prompt
        pending: list[int] = []
        for next_id in model.stream(ids, generator=generator, **generate_kwargs):
            pending.append(int(next_id[0, 0]))
            text = tokenizer.decode(pending)
            if not text.endswith("\ufffd") or len(pending) >= 4:  # 4 bytes: the longest UTF-8 character
                yield text
                pending = []
        if pending:
            yield tokenizer.decode(pending)
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# Generation: held-out continuations scored with BLEU and chrF
# ---------------------------------------------------------------------------------------------

def _text_list(values, who: str, what: str) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{who}: {what} must be a list of str, not one str; wrap it in a list")
    values = list(values)
    bad = [type(v).__name__ for v in values if not isinstance(v, str)]
    if bad:
        raise TypeError(f"{who}: {what} must hold str only; got {bad[:5]}")
    return values


def generation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Corpus BLEU and chrF of ``predictions`` (N,) against one reference each (N,), via sacrebleu.

    Both scores are on sacrebleu's 0-100 scale with its defaults (BLEU: 13a tokenisation, 4-grams,
    exponential smoothing; chrF: character 6-grams, beta 2), so ``sacrebleu refs.txt -i preds.txt -m
    bleu chrf`` prints the same numbers. Returns ``bleu``, ``chrf``, ``bleu_precisions`` (the four
    n-gram precisions, %), ``brevity_penalty``, ``n`` (pairs scored) and the two ``*_signature``
    strings that name the settings.
    """
    from sacrebleu.metrics import BLEU, CHRF

    predictions = _text_list(predictions, "generation_scores", "predictions")
    references = _text_list(references, "generation_scores", "references")
    if not predictions or len(predictions) != len(references):
        raise ValueError(f"generation_scores needs one reference per prediction and at least one pair; got "
                         f"{len(predictions)} predictions and {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(predictions, [references])
    chrf_score = chrf.corpus_score(predictions, [references])
    return {"bleu": float(bleu_score.score), "chrf": float(chrf_score.score),
            "bleu_precisions": [float(p) for p in bleu_score.precisions], "brevity_penalty": float(bleu_score.bp),
            "n": len(predictions), "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def _prompt_ids(tokenizer, prompt: str, who: str) -> list[int]:
    if isinstance(tokenizer, CharTokenizer):
        ids = [tokenizer.stoi[c] for c in prompt if c in tokenizer.stoi]
        if len(ids) < len(prompt):
            unknown = sorted({c for c in prompt if c not in tokenizer.stoi})
            log.info("%s: dropped %d prompt character(s) outside the tokenizer's vocabulary: %r",
                     who, len(prompt) - len(ids), "".join(unknown[:20]))
        return ids
    return list(tokenizer.encode(prompt))


@torch.no_grad()
def spread_passages(texts: Sequence[str], n: int, length: int) -> list[str]:
    """``n`` passages of ``length`` characters at even steps through ``texts`` joined by blank lines:
    held-out text to continue, drawn from all of it rather than from its start."""
    if not is_int(n, 1) or not is_int(length, 1):
        raise ValueError(f"spread_passages: n={n!r} and length={length!r} must be positive ints")
    joined = "\n\n".join(_text_list(texts, "spread_passages", "texts"))
    step = max(1, (len(joined) - length) // n)
    return [joined[i * step:i * step + length] for i in range(n)]


def continuations(model, tokenizer, texts: Sequence[str], prompt_chars: int = 128, new_chars: int = 64, *,
                  temperature: float = 1.0, top_k: int | None = None, seed: int = 0, batch_size: int = 32):
    """Cut each held-out passage into a prompt and a reference continuation; let the model continue.

    Passage i gives ``prompt = texts[i][:prompt_chars]`` and ``reference =
    texts[i][prompt_chars:prompt_chars + new_chars]``; the model reads the prompt's last
    ``block_size`` tokens and samples ``new_chars`` tokens (``GPT.generate`` with ``temperature``
    and ``top_k``; ``top_k=1`` is greedy), decoded and cut to ``new_chars`` characters, so a
    character-level model and a BPE model are judged on the same span of text. Prompts of equal
    token length are generated together, up to ``batch_size`` at a time (no padding is needed, so
    greedy results equal one-by-one generation). One ``torch.Generator`` seeded with ``seed`` drives
    all batches, in order: same seed, same table.
    A ``CharTokenizer`` drops prompt characters outside its vocabulary (logged at INFO).

    Returns a DataFrame (N rows): ``prompt``, ``reference``, ``prediction`` — pass the last two to
    ``generation_scores``.
    """
    import pandas as pd

    texts = _text_list(texts, "continuations", "texts")
    for name, value in (("prompt_chars", prompt_chars), ("new_chars", new_chars), ("batch_size", batch_size)):
        if not is_int(value, 1):
            raise ValueError(f"continuations: {name}={value!r} must be a positive int")
    if not texts:
        raise ValueError("continuations needs at least one passage in texts")
    short = [(i, len(t)) for i, t in enumerate(texts) if len(t) < prompt_chars + new_chars]
    if short:
        raise ValueError(f"continuations: passages {[i for i, _ in short[:10]]} have {[n for _, n in short[:10]]} "
                         f"characters, fewer than prompt_chars + new_chars = {prompt_chars + new_chars}; "
                         f"pass longer passages or lower prompt_chars/new_chars")
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    block = model.config.block_size
    was_training = model.training
    model.eval()
    prompts = [text[:prompt_chars] for text in texts]
    ids = []
    for i, prompt in enumerate(prompts):
        row = _prompt_ids(tokenizer, prompt, "continuations")[-block:]
        if not row:
            raise ValueError(f"continuations: the prompt of passage {i} ({prompt!r}) has no character the "
                             f"tokenizer knows; evaluate on text from the model's own corpus")
        ids.append(row)
    groups: dict[int, list[int]] = {}  # prompt length → its passages, in order
    for i, row in enumerate(ids):
        groups.setdefault(len(row), []).append(i)
    predictions = [""] * len(texts)
    try:
        for length, members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                idx = torch.tensor([ids[i] for i in chunk], dtype=torch.long, device=device)  # (B, length)
                out = model.generate(idx, new_chars, temperature=temperature, top_k=top_k, generator=generator)
                for row, i in enumerate(chunk):
                    predictions[i] = tokenizer.decode(out[row, length:].tolist())[:new_chars]
    finally:
        model.train(was_training)
    references = [text[prompt_chars:prompt_chars + new_chars] for text in texts]
    return pd.DataFrame({"prompt": prompts, "reference": references, "prediction": predictions},
                        columns=["prompt", "reference", "prediction"])


# ---------------------------------------------------------------------------------------------
# Robustness: a classifier's scores as character noise grows
# ---------------------------------------------------------------------------------------------

def _check_rate(rate, who: str) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate <= 1:
        raise ValueError(f"{who}: rate={rate!r} must be a probability in [0, 1] (0: clean text, 1: every "
                         f"character corrupted)")
    return float(rate)


def add_char_noise(text: str, rate: float, seed: int, alphabet: str | None = None) -> str:
    """``text`` with each character, independently with probability ``rate``, corrupted: half of
    the corrupted characters are deleted, half substituted by a different character of
    ``alphabet`` (default: the characters of ``text`` itself, so no unseen character appears).

    The noise is nested: one uniform draw per character (``numpy.random.default_rng(seed)``) is
    compared with ``rate``, and the kind of corruption and the substitute are drawn once per
    character too, so for one seed a higher rate corrupts a superset of the positions a lower rate
    corrupts, in the same way. A curve over rates then degrades one fixed corruption, not fresh noise
    at every rate. ``rate=0`` returns ``text`` unchanged.
    """
    if not isinstance(text, str):
        raise TypeError(f"add_char_noise: text must be a str, got {type(text).__name__}")
    rate = _check_rate(rate, "add_char_noise")
    if not is_int(seed):
        raise ValueError(f"add_char_noise: seed={seed!r} must be an int")
    symbols = sorted(set(text if alphabet is None else alphabet))
    if rate > 0 and len(symbols) < 2:
        raise ValueError(f"add_char_noise: the alphabet has {len(symbols)} distinct character(s); substitution "
                         f"needs at least 2; pass alphabet= with the characters to substitute from")
    rng = np.random.default_rng(seed)
    corrupt = rng.random(len(text)) < rate  # (N,) the nested draw: higher rate, superset
    delete = rng.random(len(text)) < 0.5  # (N,) deletion or substitution, fixed per position
    pick = rng.random(len(text))  # (N,) which other character substitutes
    out = []
    for c, bad, gone, u in zip(text, corrupt, delete, pick, strict=True):
        if not bad:
            out.append(c)
        elif not gone:
            others = [s for s in symbols if s != c]
            out.append(others[int(u * len(others))])
    return "".join(out)


def _require_passages(frame, who: str):
    import pandas as pd

    if not isinstance(frame, pd.DataFrame) or not {"text", "label"} <= set(frame.columns) or frame.empty:
        raise ValueError(f"{who}: frame must be a non-empty DataFrame with columns 'text' and 'label' "
                         f"(lmkit.finetune.genre_passages); got {type(frame).__name__} with columns "
                         f"{list(getattr(frame, 'columns', []))}")
    return frame


def noise_frame(frame, rate: float, seed: int = 0):
    """A copy of ``frame`` (columns ``text``, ``label``, ...) whose ``text`` column has
    ``add_char_noise`` at ``rate``. Passage i gets its own seed, the i-th drawn from
    ``numpy.random.SeedSequence(seed)``, so passages are noised independently, and the same seed
    with a higher rate corrupts a superset of every passage's positions."""
    frame = _require_passages(frame, "noise_frame")
    rate = _check_rate(rate, "noise_frame")
    row_seeds = np.random.SeedSequence(seed).generate_state(len(frame))  # (N,) one stream per passage
    texts = [add_char_noise(t, rate, int(s)) for t, s in zip(frame["text"], row_seeds, strict=True)]
    return frame.assign(text=texts)


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


def robustness_curve(classifier, tokenizer, frame, rates: Sequence[float], seed: int = 0, tokens: int | None = None,
                     batch_size: int = 64):
    """Accuracy and macro-F1 of ``classifier`` on ``frame`` with its texts noised at each of ``rates``.

    ``frame``: a DataFrame with ``text`` and ``label`` columns (``lmkit.finetune.genre_passages``).
    At each rate, ``noise_frame(frame, rate, seed)`` corrupts the passages (one seed for the whole
    curve, so the noise is nested: a higher rate adds corruption, it does not redraw it), and the
    result is encoded with ``ClassificationData.from_frame(df, tokenizer, tokens, classifier.labels)``
    (``tokens``: default the longest clean passage in characters) and scored by
    ``evaluate_classifier``.

    Returns a DataFrame with one row per rate, in the given order: ``rate``, ``accuracy``,
    ``macro_f1``.
    """
    frame = _require_passages(frame, "robustness_curve")
    classes = getattr(classifier, "labels", None)
    if not classes:
        raise TypeError(f"robustness_curve: classifier must name its classes in .labels (a GPTClassifier or "
                        f"MiniLMClassifier); got {type(classifier).__name__}")
    if isinstance(rates, (str, numbers.Number)):
        raise TypeError(f"robustness_curve: rates must be a list of noise rates, e.g. [0, 0.05, 0.1]; got {rates!r}")
    rates = [_check_rate(r, "robustness_curve") for r in rates]
    if not rates:
        raise ValueError("robustness_curve needs at least one noise rate, e.g. rates=[0, 0.05, 0.1, 0.2]")
    tokens = tokens or int(frame["text"].str.len().max())
    rows = []
    for rate in rates:
        data = ClassificationData.from_frame(noise_frame(frame, rate, seed), tokenizer, tokens, classes)
        result = evaluate_classifier(classifier, data, batch_size=batch_size)
        rows.append({"rate": rate, "accuracy": result["accuracy"], "macro_f1": result["macro_f1"]})
    return pd.DataFrame(rows, columns=["rate", "accuracy", "macro_f1"])


# ---------------------------------------------------------------------------------------------
# Calibration of next-token probabilities
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def next_token_confidence(model, tokens, *, stride: int | None = None, batch_size: int = 32,
                          max_tokens: int | None = None, device=None) -> tuple[np.ndarray, np.ndarray]:
    """``(confidence, correct)``, each (N,), for every next-token prediction over the 1-D ``tokens``
    (the first ``max_tokens`` of them when given), with ``lm_loss``'s windows: N = len(tokens) − 1.
    confidence = the largest softmax probability at a position; correct = its argmax is the target."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array of ids; got shape {tokens.shape}")
    if max_tokens is not None:
        if not is_int(max_tokens, 2):
            raise ValueError(f"max_tokens={max_tokens!r} must be an int >= 2 (one prediction needs two tokens), "
                             f"or None for all {len(tokens)}")
        tokens = tokens[:max_tokens]
    device = device or next(model.parameters()).device
    confidences, hits = [], []
    for logits, y in _scored_windows(model, tokens, stride, batch_size, device, progress=False):
        scored = y != -100  # (B, T)
        top = logits.softmax(dim=-1).max(dim=-1)  # values, indices: (B, T) each
        confidences.append(top.values[scored].double().cpu())
        hits.append((top.indices == y)[scored].cpu())
    return torch.cat(confidences).numpy(), torch.cat(hits).numpy()


def calibration(model, tokens, n_bins: int = 15, stride: int | None = None, batch_size: int = 32,
                max_tokens: int | None = None) -> dict:
    """How well the model's next-token confidence matches its accuracy over the 1-D ``tokens``.

    Every token after the first is predicted once, with ``lm_loss``'s sliding windows (``stride``
    as there); ``max_tokens`` keeps only the first N tokens, for a quick look. Confidence is the
    largest softmax probability at a position, correct means its argmax is the next token.

    Returns ``calibration_bins``'s dict: ``ece`` (expected calibration error, equal-width bins
    weighted by count; Guo et al. 2017), ``accuracy``, ``mean_confidence``, ``tokens`` (predictions
    scored) and ``bins`` (DataFrame: lower, upper, count, confidence, accuracy) for
    ``lmkit.viz.reliability_diagram``.
    """
    confidence, correct = next_token_confidence(model, tokens, stride=stride, batch_size=batch_size,
                                                max_tokens=max_tokens)
    return calibration_bins(confidence, correct, n_bins)


# ---------------------------------------------------------------------------------------------
# A checkpoint on its validation split
# ---------------------------------------------------------------------------------------------

def evaluate_checkpoint(path, data_dir=None, *, stride: int | None = None, max_tokens: int | None = None,
                        batch_size: int = 32, device="cpu", progress: bool = False) -> dict:
    """Loss, perplexity and bits per character of a checkpoint (or a run folder: its newest intact
    checkpoint) over the validation split of prepared data (``lmkit.data.prepare_dataset``).

    ``data_dir`` defaults to ``data/prepared/shakespeare-<tokenizer type>`` (what 01_data writes).
    The tokenizer saved with the checkpoint must be the prepared data's, or the ids would mean other
    characters: ValueError otherwise, naming both. ``stride`` as in ``lm_loss`` (None: the context
    length, no overlap). ``max_tokens`` scores only the first N validation tokens (its characters
    estimated from the split's characters per token) for a quicker look.

    Returns ``checkpoint``, ``step``, ``parameters``, ``tokenizer``, ``vocab_size``, ``loss``,
    ``perplexity``, ``bits_per_token``, ``bits_per_char``, ``tokens`` (scored) and ``data_dir``.
    """
    info = ckpt.read_info(path)  # the checkpoint, or a run's newest intact one: verified once
    found = info.path
    model, tokenizer = ckpt.load(info, device)
    if tokenizer is None:
        raise ValueError(f"{found} holds no tokenizer.json, so its token ids cannot be matched to any prepared data")
    kind = tokenizer.to_dict()["type"]
    data_dir = Path(data_dir) if data_dir is not None else default_prepared_dir(kind)
    if not (data_dir / "meta.json").is_file():
        raise ValueError(f"no prepared data at {data_dir} for {found} ({kind} tokenizer); run 01_data with "
                         f"tokenizer={kind!r} or pass data_dir=")
    _, val, data_tokenizer, meta = load_prepared(data_dir, model.config.block_size)
    if data_tokenizer.to_dict() != tokenizer.to_dict():
        raise ValueError(f"{found} was trained with a different {kind} tokenizer (vocabulary {tokenizer.vocab_size}) "
                         f"than the data in {data_dir} (vocabulary {data_tokenizer.vocab_size}); pass the data_dir "
                         f"it was trained on")
    tokens = val.data if max_tokens is None else val.data[: max(2, int(max_tokens))]
    chars = round(len(tokens) * meta["val_chars"] / meta["val_tokens"])
    result = lm_loss(model, tokens, stride=stride, batch_size=batch_size, n_chars=chars, progress=progress)
    return {"checkpoint": str(found), "step": info.step, "parameters": model.num_params(),
            "tokenizer": kind, "vocab_size": tokenizer.vocab_size, **result, "data_dir": str(data_dir)}


RUN_SETTINGS = ("model.n_layer", "model.n_embd", "model.block_size", "model.pos_encoding", "train.learning_rate")


def evaluate_runs(runs, data_dir=None, *, root=None, stride: int | None = None, max_tokens: int | None = None,
                  device="cpu", progress: bool = False):
    """``evaluate_checkpoint`` for each run folder (e.g. ``lmkit.runs.pretraining_runs(root)``), on one table.

    Returns ``(table, skipped)``: one row per scored run — ``run`` (its path under ``root``, else its
    folder name), the ``evaluate_checkpoint`` columns, and the settings in ``RUN_SETTINGS`` from its
    ``config.json`` (``n_layer``, ``n_embd``, ``block_size``, ``pos_encoding``, ``learning_rate``) —
    sorted by bits per character, best first; and ``{run: reason}`` for runs that cannot be scored on
    ``data_dir`` (no prepared data for their tokenizer, or a different vocabulary).
    """
    rows, skipped = [], {}
    for run in map(Path, runs):
        name = run.relative_to(root).as_posix() if root is not None else run.name
        try:
            scores = evaluate_checkpoint(run, data_dir, stride=stride, max_tokens=max_tokens, device=device,
                                         progress=progress)
        except ValueError as e:
            skipped[name] = str(e)
            continue
        config = flatten_config(read_config(run))  # {"model.n_layer": 4, ...}, as load_runs reads it
        rows.append({"run": name, **scores, **{key.split(".")[1]: config.get(key) for key in RUN_SETTINGS}})
    if not rows:
        return pd.DataFrame(columns=["run", "bits_per_char"]), skipped
    return pd.DataFrame(rows).sort_values("bits_per_char", kind="stable").reset_index(drop=True), skipped
