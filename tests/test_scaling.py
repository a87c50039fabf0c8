"""Tests for lmkit.scaling (power-law fits, 6·N·D) and the scaling figure in lmkit.viz."""

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lmkit import viz
from lmkit.scaling import (
    KAPLAN_ALPHA_C,
    KAPLAN_ALPHA_N,
    PowerLaw,
    compute_flops,
    compute_optimal,
    exponent_table,
    fit_power_law,
    usable_runs,
)

N = np.geomspace(2e4, 4e6, 8)  # model sizes of a CPU sweep and a bit beyond


def test_exact_power_law_gives_back_its_constants():
    fit = fit_power_law(N, 3.1 * N ** -0.076)
    assert fit.a == pytest.approx(3.1, rel=1e-9)
    assert fit.alpha == pytest.approx(0.076, rel=1e-9)
    assert fit.c == 0.0 and fit.n == len(N) and fit.r2 == pytest.approx(1.0)


def test_noisy_power_law_recovers_its_exponent():
    rng = np.random.default_rng(0)
    y = 5.0 * N ** -0.12 * np.exp(rng.normal(0.0, 0.01, N.size))  # 1% multiplicative noise
    fit = fit_power_law(N, y)
    assert fit.alpha == pytest.approx(0.12, abs=0.01)
    assert 0.9 < fit.r2 < 1.0


def test_offset_fit_recovers_the_irreducible_loss():
    y = 40.0 * N ** -0.3 + 1.2
    fit = fit_power_law(N, y, offset=True)
    assert (fit.a, fit.alpha, fit.c) == (pytest.approx(40.0, rel=1e-3), pytest.approx(0.3, rel=1e-3),
                                         pytest.approx(1.2, rel=1e-3))
    plain = fit_power_law(N, y)
    assert plain.alpha < 0.2, "without the offset the floor flattens the slope"


def test_offset_fit_finds_a_floor_that_dwarfs_the_power_law_term():
    """Started at c = 0 alone, the fit stalls there with alpha ≈ 0; the other starting points find it."""
    fit = fit_power_law(N, 0.5 * N ** -0.5 + 3.0, offset=True)
    assert (fit.alpha, fit.c) == (pytest.approx(0.5, rel=1e-3), pytest.approx(3.0, rel=1e-3))


def test_offset_fit_on_noisy_data_stays_close():
    rng = np.random.default_rng(1)
    y = (40.0 * N ** -0.3 + 1.2) * np.exp(rng.normal(0.0, 0.003, N.size))
    fit = fit_power_law(N, y, offset=True)
    assert fit.alpha == pytest.approx(0.3, abs=0.05)
    assert fit.c == pytest.approx(1.2, abs=0.1)
    assert 0 <= fit.c < y.min()


def test_offset_fit_of_a_pure_power_law_finds_no_floor():
    fit = fit_power_law(N, 3.1 * N ** -0.076, offset=True)
    assert fit.c == 0.0 and fit.alpha == pytest.approx(0.076, rel=1e-3)


def test_prediction_and_formula():
    law = PowerLaw(a=2.0, alpha=0.5, c=1.0)
    assert law(4.0) == pytest.approx(2.0)  # 2 · 4^-0.5 + 1
    assert isinstance(law(4.0), float)
    np.testing.assert_allclose(law([1.0, 100.0]), [3.0, 1.2])
    assert law.formula("C") == "L = 2 · C^-0.5 + 1"
    assert str(PowerLaw(a=3.1, alpha=0.076)) == "L = 3.1 · N^-0.076"
    fit = fit_power_law(N, 3.1 * N ** -0.076)
    np.testing.assert_allclose(fit(N), 3.1 * N ** -0.076)


@pytest.mark.parametrize("x, y, offset, message", [
    ([1, 2], [2, 1], False, "at least 3 points"),
    ([1, 2, 3], [3, 2, 1], True, "at least 4 points"),
    ([1, 2, 3], [3, 2], False, "same length"),
    ([1, -2, 3], [3, 2, 1], False, r"x\[1\] = -2.0 is not positive"),
    ([1, 2, 3], [3, 0, 1], False, r"y\[1\] = 0.0 is not positive"),
    ([1, 2, math.nan], [3, 2, 1], False, r"x\[2\] = nan is not finite"),
    ([1, 2, 3], [3, math.inf, 1], False, r"y\[1\] = inf is not finite"),
    ([5, 5, 5], [3, 2, 1], False, "two different x"),
    ([[1, 2], [3, 4]], [1, 2], False, "one-dimensional"),
])
def test_bad_input_is_a_value_error_that_names_it(x, y, offset, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y, offset=offset)


def test_compute_is_six_n_d():
    assert compute_flops(1e6, 2e7) == 1.2e14
    np.testing.assert_array_equal(compute_flops(np.array([1, 2]), 10), [60.0, 120.0])
    params, tokens = compute_optimal(compute_flops(1e6, 2e7))
    assert tokens == pytest.approx(20 * params)
    assert compute_flops(params, tokens) == pytest.approx(1.2e14)
    with pytest.raises(ValueError, match="positive"):
        compute_optimal(-1.0)


def sweep_table() -> pd.DataFrame:
    params = np.array([28_288, 105_728, 232_320, 408_064])
    loss = 6.0 * params ** -0.045
    return pd.DataFrame({
        "run": [f"0{i}-n_embd={e}" for i, e in enumerate((32, 64, 96, 128))],
        "status": ["ok"] * 4, "parameters": params, "val_loss": loss,
        "train_flops": compute_flops(params, 200 * 16 * 64),
    })


def test_usable_runs_leaves_out_failed_and_missing():
    runs = sweep_table()
    runs.loc[1, "status"] = "failed"
    runs.loc[2, "val_loss"] = np.nan
    runs.loc[3, "val_loss"] = np.inf  # a diverged run
    ok, left_out = usable_runs(runs)
    assert list(ok.index) == [0] and list(left_out.index) == [1, 2, 3]
    with pytest.raises(ValueError, match="no column"):
        usable_runs(runs, columns=("parameters", "loss"))
    all_failed = pd.DataFrame({"run": ["a", "b"], "status": ["failed"] * 2, "error": ["OOM", "OOM"]})
    ok, left_out = usable_runs(all_failed)  # no summary columns at all: nothing to fit, nothing misspelt
    assert ok.empty and len(left_out) == 2


def test_exponent_table_sets_ours_beside_kaplan():
    runs = sweep_table()
    table = exponent_table(fit_power_law(runs["parameters"], runs["val_loss"]),
                           fit_power_law(runs["train_flops"], runs["val_loss"]))
    assert list(table["Kaplan et al. 2020"]) == [KAPLAN_ALPHA_N, KAPLAN_ALPHA_C]
    assert table["this sweep"].tolist() == pytest.approx([0.045, 0.045])


def test_scaling_plot_has_runs_and_fitted_line_on_log_axes():
    runs = sweep_table()
    fit = fit_power_law(runs["parameters"], runs["val_loss"])
    fig = viz.scaling_plot(runs, fit=fit, title="loss vs size")
    assert isinstance(fig, go.Figure) and len(fig.data) == 2
    points, line = fig.data
    assert points.mode == "markers" and list(points.y) == pytest.approx(runs["val_loss"].tolist())
    assert points.customdata[0][0] == runs["run"][0] and "customdata[1]" in points.hovertemplate
    assert line.mode == "lines" and "N^-0.045" in line.name
    np.testing.assert_allclose(line.y, fit(np.asarray(line.x)))
    assert line.x[0] < runs["parameters"].min() and line.x[-1] > runs["parameters"].max()
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert fig.layout.title.text == "loss vs size"


def test_scaling_plot_against_compute_and_without_fit():
    runs = sweep_table()
    fit = fit_power_law(runs["train_flops"], runs["val_loss"])
    assert "C^-" in viz.scaling_plot(runs, x="train_flops", fit=fit).data[1].name
    assert len(viz.scaling_plot(runs).data) == 1


def test_scaling_plot_rejects_what_a_log_axis_cannot_show():
    runs = sweep_table()
    with pytest.raises(ValueError, match="missing"):
        viz.scaling_plot(runs, x="tokens")
    runs.loc[2, "val_loss"] = np.nan
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        viz.scaling_plot(runs)
    with pytest.raises(TypeError, match="PowerLaw"):
        viz.scaling_plot(sweep_table(), fit=(3.1, 0.076))
