"""Pure metrics: numbers in, numbers out, no model. Bits per character from a loss; accuracy,
macro-F1, per-class tables, ROC-AUC and the confusion matrix (scikit-learn underneath); expected
calibration error and its reliability table (Guo et al. 2017, "On Calibration of Modern Neural
Networks": equal-width confidence bins, weighted by count).

A leaf below ``lmkit.evaluate`` (which scores models with these) and ``lmkit.finetune``.

Bits per character (bpc) divides the total negative log-likelihood, in bits, by the number of
characters the tokens stand for, so a character-level and a BPE model are comparable on one table
(Graves 2013 reports enwik8 in bpc; the same conversion is used for byte-level models).

Shapes: N predictions, K classes.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd

from .params import is_int

__all__ = ["bits_per_char", "classification_metrics", "calibration_bins"]


def bits_per_char(loss: float, tokens: int, chars: int) -> float:
    """Mean loss in nats per token → bits per character: ``loss / ln 2 × tokens / chars``.

    ``tokens``: how many tokens the text was encoded into; ``chars``: how many characters that text
    has. A character-level model has tokens == chars, so its bpc is its bits per token; a BPE model
    with ~4 characters per token divides its bits per token by ~4.
    """
    for name, value in (("tokens", tokens), ("chars", chars)):
        if not is_int(value, 1):
            raise ValueError(f"{name}={value!r} must be a positive int (a count of {name} in the evaluated text)")
    if isinstance(loss, bool) or not isinstance(loss, numbers.Real) or loss < 0:
        raise ValueError(f"loss={loss!r} must be a mean cross-entropy in nats per token, a real number >= 0")
    return loss / math.log(2) / (chars / tokens)


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
    from sklearn import metrics  # a second to import: only when classes are scored

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


def calibration_bins(confidence, correct, n_bins: int = 15) -> dict:
    """Expected calibration error and the reliability table of predictions with ``confidence`` (N,)
    in [0, 1] (the probability given to the predicted class) and ``correct`` (N,) bool.

    Equal-width bins on [0, 1], each (lower, upper] (the first also holds 0), as
    ``sklearn.calibration.calibration_curve(strategy="uniform")`` bins them. ECE = Σ_b (n_b / N) ·
    |accuracy_b − confidence_b| (Guo et al. 2017): 0 for a perfectly calibrated model.

    Returns ``ece``, ``accuracy`` (share correct), ``mean_confidence``, ``tokens`` (N) and ``bins``:
    a DataFrame with one row per bin: ``lower``, ``upper``, ``count``, ``confidence`` (mean),
    ``accuracy`` (NaN for an empty bin).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct)
    if confidence.ndim != 1 or confidence.shape != correct.shape or confidence.size == 0:
        raise ValueError(f"calibration_bins: confidence and correct must be non-empty 1-D arrays of one length; "
                         f"got shapes {confidence.shape} and {correct.shape}")
    if not np.isin(correct, (0, 1)).all():
        raise ValueError("calibration_bins: correct must hold booleans (or 0/1): was each prediction right?")
    if not ((confidence >= 0) & (confidence <= 1)).all():
        raise ValueError(f"calibration_bins: confidence must lie in [0, 1]; got values in "
                         f"[{np.nanmin(confidence):.4g}, {np.nanmax(confidence):.4g}] (probabilities, not logits)")
    if not is_int(n_bins, 1):
        raise ValueError(f"calibration_bins: n_bins={n_bins!r} must be a positive int (15 is the usual choice)")
    correct = correct.astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], confidence)  # (N,) bin of each prediction: (lower, upper]
    count = np.bincount(ids, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(ids, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(ids, weights=correct, minlength=n_bins) / count
    used = count > 0
    ece = float(np.sum(count[used] / confidence.size * np.abs(accuracy[used] - mean_conf[used])))
    bins = pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count, "confidence": mean_conf,
                         "accuracy": accuracy})
    return {"ece": ece, "accuracy": float(correct.mean()), "mean_confidence": float(confidence.mean()),
            "tokens": int(confidence.size), "bins": bins}
