"""Scaling laws: fit a power law to loss against model size or training compute.

Kaplan et al. 2020, "Scaling Laws for Neural Language Models" (arXiv:2001.08361), found that the
test loss of a language model trained to convergence falls as a power of its non-embedding
parameter count N, ``L(N) = (N_c / N) ** alpha_N`` with ``alpha_N ≈ 0.076`` (``N_c ≈ 8.8e13``),
and as a power of the compute C of a compute-efficient run, ``L(C) = (C_c / C) ** alpha_C`` with
``alpha_C ≈ 0.050`` (C in PF-days). Over a small range, a power law is a straight line on a
log-log plot: ``log L = log a - alpha · log x``; alpha is its slope. An alpha of 0.076 means that
ten times the parameters multiply the loss by ``10 ** -0.076 ≈ 0.84``.

Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (Chinchilla,
arXiv:2203.15556), fit model size N and training tokens D together with an irreducible term,
``L(N, D) = E + A / N ** alpha + B / D ** beta`` (alpha ≈ 0.34, beta ≈ 0.28, E ≈ 1.69 nats for
their data), and found that, for a given compute budget, the loss is lowest with about 20
training tokens per parameter. ``fit_power_law(..., offset=True)`` fits the one-variable form
``L = c + a · x ** -alpha``, where c plays the role of E.

Training compute: C ≈ 6·N·D FLOPs (Kaplan et al. 2020, section 2.1): per token and per
parameter, 2 FLOPs in the forward pass (a multiply and an add) and 4 in the backward pass
(gradients with respect to activations and to weights). ``GPT.flops_per_token`` adds the
attention-score term; the 6·N·D rule leaves it out, as both papers do.

What a bigger model costs in memory rather than compute is ``memory_plan`` (from ``lmkit.memory``:
weights, gradients, AdamW states and activations per process, for one process, DDP or FSDP).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .memory import memory_plan  # noqa: F401  (lmkit.scaling.memory_plan: what training a model costs in memory)

log = logging.getLogger(__name__)

# Published values (the units and the data differ from ours; they are yardsticks, not targets).
KAPLAN_ALPHA_N = 0.076  # loss vs non-embedding parameters, models trained to convergence
KAPLAN_ALPHA_C = 0.050  # loss vs compute, compute-efficient training (Kaplan's alpha_C^min)
KAPLAN_N_C = 8.8e13  # parameters, in L(N) = (N_c / N) ** alpha_N
CHINCHILLA_ALPHA = 0.34  # exponent of N in L = E + A/N^alpha + B/D^beta
CHINCHILLA_BETA = 0.28  # exponent of D (training tokens)
CHINCHILLA_E = 1.69  # irreducible loss (nats per token) of their data
TOKENS_PER_PARAMETER = 20  # Chinchilla's compute-optimal ratio D / N

SYMBOLS = {"parameters": "N", "train_tokens": "D", "train_flops": "C"}  # the papers' letters


@dataclass(frozen=True)
class PowerLaw:
    """``y = a · x ** -alpha + c``, fitted to ``n`` points.

    ``c`` is the irreducible loss (0 when fitted without an offset); ``r2`` is the coefficient of
    determination of log y, the space the fit works in (1 is a perfect straight line on a
    log-log plot).
    """

    a: float
    alpha: float
    c: float = 0.0
    r2: float = math.nan
    n: int = 0

    def __call__(self, x: Any) -> np.ndarray | float:
        """The predicted y at ``x`` (a number or an array)."""
        y = self.a * np.power(np.asarray(x, dtype=float), -self.alpha) + self.c
        return float(y) if np.ndim(y) == 0 else y

    def formula(self, symbol: str = "N", y: str = "L") -> str:
        """The law as text: ``"L = 3.1 · N^-0.076 + 1.2"`` (``symbol`` names x, ``y`` the left side)."""
        text = f"{y} = {self.a:.3g} · {symbol}^{-self.alpha:.3g}"
        return text + (f" + {self.c:.3g}" if self.c else "")

    def __str__(self) -> str:
        return self.formula()


def compute_flops(params: Any, tokens: Any) -> float | np.ndarray:
    """Training compute C ≈ 6·N·D FLOPs for N parameters trained on D tokens (numbers or arrays).

    6 = 2 FLOPs per parameter per token forward (multiply + add) + 4 backward (gradients for the
    activations and for the weights); Kaplan et al. 2020, section 2.1. Attention scores and
    embeddings are left out, as in the papers.
    """
    flops = 6 * np.asarray(params, dtype=float) * np.asarray(tokens, dtype=float)
    return float(flops) if flops.ndim == 0 else flops


def compute_optimal(flops: float, tokens_per_parameter: float = TOKENS_PER_PARAMETER) -> tuple[float, float]:
    """Chinchilla's compute-optimal split of a budget of ``flops``: ``(parameters, tokens)`` with
    ``tokens = tokens_per_parameter · parameters`` and ``6 · parameters · tokens = flops``."""
    if not (isinstance(flops, int | float) and math.isfinite(flops) and flops > 0):
        raise ValueError(f"compute_optimal needs a positive number of FLOPs; got {flops!r}")
    if not tokens_per_parameter > 0:
        raise ValueError(f"tokens_per_parameter={tokens_per_parameter!r} must be > 0")
    params = math.sqrt(flops / (6 * tokens_per_parameter))
    return params, tokens_per_parameter * params


def _positive_finite(v: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=float)
    except (TypeError, ValueError) as e:
        raise ValueError(f"fit_power_law: {what} must be numbers; got {v!r}") from e
    if arr.ndim != 1:
        raise ValueError(f"fit_power_law: {what} must be one-dimensional; got shape {arr.shape}")
    for i, value in enumerate(arr):
        if not math.isfinite(value):
            raise ValueError(f"fit_power_law: {what}[{i}] = {value} is not finite; drop that point (a failed run?)")
        if value <= 0:
            raise ValueError(f"fit_power_law: {what}[{i}] = {value} is not positive; a power law is fitted "
                             "on a log-log scale, which needs values > 0")
    return arr


def _r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((observed - observed.mean()) ** 2))
    residual = float(np.sum((observed - predicted) ** 2))
    return 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)


def _line(log_x: np.ndarray, log_y: np.ndarray) -> tuple[float, float]:
    """Least-squares line through (log x, log y) → (log a, alpha)."""
    slope, intercept = np.polyfit(log_x, log_y, 1)
    return float(intercept), float(-slope)


def fit_power_law(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                  offset: bool = False) -> PowerLaw:
    """Fit ``y = a · x ** -alpha`` (``offset=True``: ``y = a · x ** -alpha + c``) and return a ``PowerLaw``.

    Without an offset this is least squares on ``log y`` against ``log x``: a straight line on a
    log-log plot, exact and fast. With an offset, ``scipy.optimize.curve_fit`` minimises the same
    log-space residuals with ``0 <= c < min(y)``; x is divided by its geometric mean first, so the
    parameters are of order one, and the fit starts from several values of c, each with the
    straight-line fit of ``y - c`` as its initial guess, keeping the best.

    Needs at least 3 points (4 with an offset: it has three parameters), all x and y finite and
    positive, and at least two distinct x.
    """
    x_arr, y_arr = _positive_finite(x, "x"), _positive_finite(y, "y")
    if len(x_arr) != len(y_arr):
        raise ValueError(f"fit_power_law: x and y must have the same length; got {len(x_arr)} and {len(y_arr)}")
    needed = 4 if offset else 3
    if len(x_arr) < needed:
        raise ValueError(f"fit_power_law needs at least {needed} points{' with offset=True' if offset else ''}; "
                         f"got {len(x_arr)}")
    if np.ptp(x_arr) == 0:
        raise ValueError(f"fit_power_law: every x is {x_arr[0]}; a slope needs at least two different x values")
    log_x, log_y = np.log(x_arr), np.log(y_arr)
    if not offset:
        log_a, alpha = _line(log_x, log_y)
        r2 = _r2(log_y, log_a - alpha * log_x)
        return PowerLaw(a=math.exp(log_a), alpha=alpha, c=0.0, r2=r2, n=len(x_arr))
    return _fit_with_offset(x_arr, y_arr)


def _fit_with_offset(x: np.ndarray, y: np.ndarray) -> PowerLaw:
    from scipy.optimize import curve_fit

    log_x0 = float(np.mean(np.log(x)))  # x / x0 is of order 1 whatever the units (parameters or FLOPs)
    u, log_y = np.log(x) - log_x0, np.log(y)
    c_max = float(y.min()) * (1 - 1e-9)

    def model(u, log_b, alpha, c):  # log(c + b · (x/x0)^-alpha)
        return np.log(c + np.exp(log_b - alpha * u))

    best = None
    for share in (0.0, 0.25, 0.5, 0.75, 0.9):  # starting points for c, as shares of min(y)
        c0 = share * c_max
        log_b0, alpha0 = _line(u, np.log(y - c0))
        try:
            p, _ = curve_fit(model, u, log_y, p0=(log_b0, alpha0, c0),
                             bounds=([-np.inf, -np.inf, 0.0], [np.inf, np.inf, c_max]), max_nfev=10_000)
        except RuntimeError:  # this start did not converge; another one may
            continue
        sse = float(np.sum((log_y - model(u, *p)) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p)
    if best is None:
        raise ValueError("fit_power_law(offset=True) did not converge from any starting point; "
                         "try offset=False or more points")
    log_b, alpha, c = (float(v) for v in best[1])
    c = 0.0 if c < 1e-6 * c_max else c  # at its bound: the data show no floor (trf never returns exactly 0)
    return PowerLaw(a=math.exp(log_b + alpha * log_x0), alpha=alpha, c=c, r2=_r2(log_y, model(u, log_b, alpha, c)),
                    n=len(x))


def usable_runs(runs: pd.DataFrame, columns: Sequence[str] = ("parameters", "val_loss")
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a sweep table (``lmkit.runs.sweep``) into ``(ok, left_out)``: the runs a fit can use
    (status "ok", every one of ``columns`` finite and positive) and the others.

    A missing column is a ValueError (a misspelt name), unless no run finished: a sweep whose runs
    all failed has no summary columns, and then every run is left out.
    """
    if not isinstance(runs, pd.DataFrame):
        raise TypeError(f"usable_runs needs a pandas DataFrame (a sweep's table); got a {type(runs).__name__}")
    finished = runs["status"].eq("ok") if "status" in runs.columns else pd.Series(True, index=runs.index)
    missing = [c for c in columns if c not in runs.columns]
    if missing and finished.any():
        raise ValueError(f"usable_runs: the table has no column {missing}; got columns {list(runs.columns)}")
    good = finished & (not missing)
    for c in set(columns) - set(missing):
        values = pd.to_numeric(runs[c], errors="coerce")
        good &= np.isfinite(values) & (values > 0)
    if not good.all():
        log.info("left out of the fit: %d of %d runs (failed, or no positive %s)", int((~good).sum()), len(runs),
                 " / ".join(columns))
    return runs[good], runs[~good]


def exponent_table(alpha_params: PowerLaw, alpha_compute: PowerLaw) -> pd.DataFrame:
    """Our fitted exponents next to Kaplan et al. 2020's, one row per law."""
    rows = [("loss vs parameters (alpha_N)", alpha_params, KAPLAN_ALPHA_N),
            ("loss vs compute (alpha_C)", alpha_compute, KAPLAN_ALPHA_C)]
    return pd.DataFrame(
        [{"law": name, "this sweep": fit.alpha, "Kaplan et al. 2020": ref, "R² (log-log)": fit.r2, "runs": fit.n}
         for name, fit, ref in rows]
    ).set_index("law")
