"""Fine-tuning figures: method comparison bars, confusion matrices, metric curves per run."""

import numpy as np
import pandas as pd
import pytest

from lmkit import viz

LABELS = ["comedy", "history", "tragedy"]


def confusion(rows):
    return pd.DataFrame(rows, index=pd.Index(LABELS, name="true"), columns=pd.Index(LABELS, name="predicted"))


def test_confusion_matrices_colour_rows_by_share_and_print_counts():
    fig = viz.confusion_matrices({"full": confusion([[6, 2, 2], [0, 5, 0], [1, 1, 8]]),
                                  "probe": confusion([[10, 0, 0], [5, 0, 0], [10, 0, 0]])})
    full, probe = fig.data
    np.testing.assert_allclose(full.z, [[0.6, 0.2, 0.2], [0, 1, 0], [0.1, 0.1, 0.8]])  # each row sums to 1
    assert np.asarray(full.text).tolist() == [[6, 2, 2], [0, 5, 0], [1, 1, 8]]
    assert list(full.y) == LABELS and [a.text for a in fig.layout.annotations] == ["full", "probe"]
    assert full.showscale is False and probe.showscale is True  # one colour bar for the row
    counts = viz.confusion_matrices({"full": confusion([[6, 2, 2], [0, 5, 0], [1, 1, 8]])}, normalize=False)
    assert np.asarray(counts.data[0].z).tolist() == [[6, 2, 2], [0, 5, 0], [1, 1, 8]]
    with pytest.raises(ValueError, match="square DataFrame"):
        viz.confusion_matrices({"bad": confusion([[1, 2, 3]] * 3).iloc[:2]})


def test_method_comparison_groups_metrics_and_draws_the_baseline():
    table = pd.DataFrame({"accuracy": [0.5, 0.3], "macro_f1": [0.48, 0.27]}, index=["full", "scratch"])
    fig = viz.method_comparison(table, baseline={"accuracy": 0.43, "macro_f1": 0.2})
    assert [t.name for t in fig.data] == ["accuracy", "macro f1"] and list(fig.data[0].x) == ["full", "scratch"]
    assert list(fig.data[1].y) == [0.48, 0.27]
    assert sorted(round(s.y0, 2) for s in fig.layout.shapes) == [0.2, 0.43]
    assert fig.layout.shapes[0].line.color == fig.data[0].marker.color  # the line has its metric's colour
    with pytest.raises(ValueError, match="not among metrics"):
        viz.method_comparison(table, baseline={"roc_auc": 0.5})


def test_metric_curves_draw_one_line_per_run_skipping_rows_without_the_metric():
    history = pd.DataFrame({"step": [0, 1, 2, 2], "val_loss": [1.0, None, None, 0.5], "train_loss": [None, 2, 1, None]})
    fig = viz.metric_curves({"full": history, "lora": history.assign(val_loss=history["val_loss"] + 0.1)})
    assert [t.name for t in fig.data] == ["full", "lora"]
    assert list(fig.data[0].x) == [0, 2] and list(fig.data[1].y) == pytest.approx([1.1, 0.6])
    with pytest.raises(ValueError, match="missing"):
        viz.metric_curves({"full": history}, column="accuracy")
