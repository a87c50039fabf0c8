"""The attention explorer: widget changes redraw the figure from cached attention."""

import json

import numpy as np
import pytest

from lmkit import CharTokenizer, attention
from lmkit.widgets import AttentionExplorer, decode_typed_array, typed_array

from .conftest import make_model


@pytest.fixture
def explorer():
    tok = CharTokenizer(list("abcdefghijk"))
    return AttentionExplorer({"tiny": (make_model().eval(), tok), "other": (make_model(n_head=4).eval(), tok)},
                             text="abcabca")


def test_sliders_follow_the_model_and_redraw(explorer):
    assert (explorer.layer.max, explorer.head.max) == (1, 1)
    before = decode_typed_array(explorer.figure.data[0].z)
    explorer.head.value = 1
    after = decode_typed_array(explorer.figure.data[0].z)
    assert before.shape == after.shape == (7, 7) and not np.allclose(before, after, equal_nan=True)
    explorer.model.value = "other"
    assert explorer.head.max == 3
    assert "updated in" in explorer.status.value and explorer.last_update_ms > 0


def test_the_heatmap_sends_the_attention_weights_with_the_mask_blank(explorer):
    explorer.layer.value, explorer.head.value = 1, 1
    model, tok = explorer.models["tiny"]
    attn, _ = attention.capture(model, "abcabca", tok)
    expected = attention.as_array(attn)[1, 1]
    z = decode_typed_array(explorer.figure.data[0].z)
    future = np.triu(np.ones((7, 7), dtype=bool), k=1)
    assert np.isnan(z[future]).all()  # plotly.js draws NaN as a blank cell
    np.testing.assert_allclose(z[~future], expected[~future], rtol=1e-6)


def test_typed_array_round_trips_float32_with_nan():
    values = np.array([[0.25, np.nan, 1.0], [1e-8, 0.5, np.nan]])
    spec = typed_array(values)
    assert spec["dtype"] == "f4" and spec["shape"] == "2, 3" and isinstance(spec["bdata"], str)
    np.testing.assert_array_equal(decode_typed_array(spec), values.astype(np.float32))
    assert "shape" not in typed_array([1.0, 2.0])
    with pytest.raises(ValueError, match="float32"):
        decode_typed_array({"dtype": "f8", "bdata": ""})


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
