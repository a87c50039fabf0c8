"""Evaluation figures: reliability diagram, robustness curves, one metric across runs."""

import numpy as np
import pandas as pd
import pytest

from lmkit import viz
from lmkit.evaluate import calibration_bins


def bins():
    return calibration_bins([0.2, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0], [False, True, False, True, True, True, True],
                            n_bins=10)


def test_reliability_diagram_draws_accuracy_bars_of_occupied_bins_and_the_diagonal():
    result = bins()
    fig = viz.reliability_diagram(result["bins"], result["ece"])
    bars, confidence, diagonal = fig.data
    occupied = result["bins"][result["bins"]["count"] > 0]  # 7 of the 10 bins (lower, upper] hold one each
    np.testing.assert_allclose(bars.x, [0.15, 0.25, 0.45, 0.55, 0.65, 0.85, 0.95])
    np.testing.assert_allclose(bars.y, occupied["accuracy"])
    np.testing.assert_allclose(bars.width, 0.1)
    np.testing.assert_allclose(confidence.x, occupied["confidence"])
    assert list(diagonal.x) == [0, 1] == list(diagonal.y) and diagonal.line.dash == "dash"
    assert f"ECE {result['ece']:.3f}" in bars.name and f"ECE {result['ece']:.3f}" in fig.layout.title.text
    assert viz.reliability_diagram(result["bins"], result["ece"], title="mine").layout.title.text == "mine"
    with pytest.raises(ValueError, match="missing"):
        viz.reliability_diagram(result["bins"].drop(columns="count"), 0.1)
    with pytest.raises(ValueError, match="ece=1.5"):
        viz.reliability_diagram(result["bins"], 1.5)
    with pytest.raises(ValueError, match="every bin is empty"):
        viz.reliability_diagram(result["bins"].assign(count=0), 0.1)


def test_robustness_plot_draws_a_line_per_model_against_the_rate():
    curve = pd.DataFrame({"rate": [0.2, 0.0, 0.1], "accuracy": [0.5, 0.9, 0.7], "macro_f1": [0.4, 0.8, 0.6]})
    fig = viz.robustness_plot({"full": curve, "probe": curve.assign(accuracy=curve["accuracy"] - 0.1)},
                              baseline=0.4)
    assert [t.name for t in fig.data] == ["full", "probe"]
    assert list(fig.data[0].x) == [0.0, 0.1, 0.2] and list(fig.data[0].y) == [0.9, 0.7, 0.5]  # sorted by rate
    assert fig.data[0].line.color != fig.data[1].line.color
    assert [round(s.y0, 2) for s in fig.layout.shapes] == [0.4]
    single = viz.robustness_plot(curve, metric="macro_f1")
    assert [t.name for t in single.data] == ["model"] and list(single.data[0].y) == [0.8, 0.6, 0.4]
    with pytest.raises(ValueError, match="missing"):
        viz.robustness_plot(curve, metric="roc_auc")
    with pytest.raises(ValueError, match="non-empty"):
        viz.robustness_plot({})


def test_run_comparison_draws_a_bar_per_run_and_names_the_runs_without_a_value():
    table = pd.DataFrame({"run": ["tiny", "small", "broken", "base"], "bits_per_char": [2.1, 1.8, np.nan, 1.5]})
    fig = viz.run_comparison(table, "bits_per_char")
    (bars,) = fig.data
    assert list(bars.y) == ["tiny", "small", "base"] and list(bars.x) == [2.1, 1.8, 1.5]
    assert bars.orientation == "h" and fig.layout.yaxis.autorange == "reversed"
    assert [a.text for a in fig.layout.annotations] == ["no bits_per_char: broken"]
    assert not viz.run_comparison(table.dropna(), "bits_per_char").layout.annotations
    with pytest.raises(ValueError, match="every run is NaN"):
        viz.run_comparison(table.assign(bits_per_char=np.nan), "bits_per_char")
    with pytest.raises(ValueError, match="must be numeric"):
        viz.run_comparison(table.assign(bits_per_char="x"), "bits_per_char")
    with pytest.raises(ValueError, match="these repeat"):
        viz.run_comparison(pd.concat([table, table]), "bits_per_char")
