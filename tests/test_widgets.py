"""The attention explorer: widget changes redraw the figure from cached attention."""

import json

import numpy as np
import pytest

from lmkit import CharTokenizer
from lmkit.widgets import AttentionExplorer

from .conftest import make_model


@pytest.fixture
def explorer():
    tok = CharTokenizer(list("abcdefghijk"))
    return AttentionExplorer({"tiny": (make_model().eval(), tok), "other": (make_model(n_head=4).eval(), tok)},
                             text="abcabca")


def test_sliders_follow_the_model_and_redraw(explorer):
    assert (explorer.layer.max, explorer.head.max) == (1, 1)
    before = np.array(explorer.figure.data[0].z, dtype=float)
    explorer.head.value = 1
    after = np.array(explorer.figure.data[0].z, dtype=float)
    assert before.shape == after.shape == (7, 7) and not np.allclose(before, after, equal_nan=True)
    explorer.model.value = "other"
    assert explorer.head.max == 3
    assert "updated in" in explorer.status.value and explorer.last_update_ms > 0


@pytest.mark.parametrize("view", ["head view", "model view", "rollout"])
def test_every_view_draws_json_safe_data(explorer, view):
    explorer.view.value = view
    assert explorer.figure.data
    for trace in explorer.figure.data:  # a FigureWidget must send strict JSON: no NaN
        json.dumps(trace.to_plotly_json(), allow_nan=False, default=lambda o: np.asarray(o).tolist())


def test_attention_is_captured_once_per_text(explorer, monkeypatch):
    calls = []
    import lmkit.widgets as w

    real = w.capture
    monkeypatch.setattr(w, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    explorer.text.value = "kjihg"
    explorer.layer.value, explorer.head.value = 1, 1
    explorer.view.value = "model view"
    assert len(calls) == 1


def test_needs_a_model():
    with pytest.raises(ValueError, match="at least one model"):
        AttentionExplorer({})
