"""Tests for the attention figures and the exporters in lmkit.viz: what each figure draws (traces,
values, labels, hover, controls), input checks, long inputs, offline HTML and PNG export."""

import os
import re
import shutil
import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch

from lmkit import viz

L, H, T = 2, 2, 4
TOKENS = ["The", " cat", "\n", " cat"]  # a repeated token, a newline and leading spaces
LABELS = ["0·The", "1·␣cat", "2·\\n", "3·␣cat"]


def tiny() -> np.ndarray:
    """(L, H, T, T) causal attention, rows summing to 1, a different pattern per head: row i of
    (layer l, head h) is proportional to (1, 2, ..., i+1) ** (1 + l + 2h); head (1, 1) gives key 0
    of row 3 the weight 1/354 (below head_view's 0.02 cut)."""
    a = np.zeros((L, H, T, T), dtype=np.float32)
    for layer in range(L):
        for head in range(H):
            for i in range(T):
                w = np.arange(1, i + 2, dtype=np.float64) ** (1 + layer + 2 * head)
                a[layer, head, i, : i + 1] = w / w.sum()
    return a


def causal_uniform(t: int) -> np.ndarray:
    """(1, 1, t, t): query i attends uniformly to keys 0..i."""
    m = np.tril(np.ones((t, t), dtype=np.float32))
    return (m / m.sum(axis=1, keepdims=True))[None, None]


def heatmaps(fig: go.Figure) -> list:
    return [t for t in fig.data if t.type == "heatmap"]


def shown(z) -> np.ndarray:
    """A heatmap's z with the blank (masked) cells as 0, to compare with the attention map."""
    return np.nan_to_num(np.asarray(z, dtype=float), nan=0.0)


def future(t: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(t, k=1)


def test_tiny_attention_is_causal_and_normalised():
    a = tiny()
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-6)
    assert not a[..., future(T)[0], future(T)[1]].any()


# --- one map ---------------------------------------------------------------------------------------

def test_attention_heatmap_shows_the_chosen_map_with_token_labels_and_hover():
    a = tiny()
    fig = viz.attention_heatmap(a, TOKENS, layer=1, head=0)
    (trace,) = fig.data
    assert trace.type == "heatmap"
    z = np.asarray(trace.z, dtype=float)
    np.testing.assert_allclose(shown(z), a[1, 0], rtol=1e-6)
    assert np.isnan(z[future(T)]).all()  # the causal mask is blank, not a dark "0" cell
    assert not np.isnan(z[np.tril_indices(T)]).any()
    assert list(trace.x) == LABELS and list(trace.y) == LABELS  # unique although " cat" repeats
    assert trace.hovertemplate.startswith("%{y} → %{x}: %{z:.3f}")  # "query → key: 0.123"
    assert trace.hoverongaps is False
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.xaxis.type == "category"
    assert fig.layout.title.text == "Attention: layer 1, head 0"


def test_the_colour_scale_is_cividis():
    fig = viz.attention_heatmap(tiny(), TOKENS)
    cividis = go.Heatmap(colorscale="Cividis").colorscale
    assert fig.layout.coloraxis.colorscale == cividis


def test_negative_layer_and_head_count_from_the_end():
    a = tiny()
    trace = viz.attention_heatmap(a, TOKENS, layer=-1, head=-1).data[0]
    np.testing.assert_allclose(shown(trace.z), a[1, 1], rtol=1e-6)


def test_a_bidirectional_map_has_no_blank_cells():
    full = np.full((1, 1, 3, 3), 1 / 3, dtype=np.float32)  # an encoder (BERT) map: no causal mask
    z = np.asarray(viz.attention_heatmap(full, ["a", "b", "c"]).data[0].z, dtype=float)
    assert not np.isnan(z).any()


def test_per_layer_torch_tuples_read_like_the_array():
    a = tiny()
    batched = tuple(torch.tensor(a[layer][None]) for layer in range(L))  # output_attentions: (1, H, T, T) each
    unbatched = tuple(torch.tensor(a[layer]).to(torch.bfloat16) for layer in range(L))  # (H, T, T), bfloat16
    for attn, tol in ((batched, 1e-6), (unbatched, 1e-2), (list(a), 1e-6)):
        trace = viz.attention_heatmap(attn, TOKENS, layer=1, head=1).data[0]
        np.testing.assert_allclose(shown(trace.z), a[1, 1], atol=tol)


def test_token_labels_are_printable_unique_and_escaped():
    tokens = ["<s>", " ", "\t", "a" * 40, ""]
    m = causal_uniform(5)
    labels = list(viz.attention_heatmap(m, tokens).data[0].x)
    assert labels == ["0·&lt;s&gt;", "1·␣", "2·\\t", "3·" + "a" * 15 + "…", "4·∅"]
    assert list(viz.attention_heatmap(m).data[0].x) == ["0", "1", "2", "3", "4"]  # tokens=None: positions


def test_crop_to_a_window_or_the_last_tokens():
    a = tiny()
    last = viz.attention_heatmap(a, TOKENS, max_tokens=2)
    assert list(last.data[0].x) == LABELS[2:]
    np.testing.assert_allclose(shown(last.data[0].z), a[0, 0, 2:, 2:], rtol=1e-6)
    assert "positions 2–3 of 4" in last.layout.title.subtitle.text
    win = viz.attention_heatmap(a, TOKENS, window=(1, 3))
    assert list(win.data[0].y) == LABELS[1:3]
    np.testing.assert_allclose(shown(win.data[0].z), a[0, 0, 1:3, 1:3], rtol=1e-6)


# --- long inputs -----------------------------------------------------------------------------------

def test_block_averages_ignore_masked_cells():
    m = causal_uniform(4)
    fig = viz.attention_overview(m, None, 0, 0, max_cells=2)
    z = np.asarray(fig.data[0].z, dtype=float)
    # blocks of 2×2; the upper-right block is all masked; diagonal blocks average their visible cells
    expected = np.array([[(1 + 1 / 2 + 1 / 2) / 3, np.nan], [(1 / 3 + 1 / 3 + 1 / 4 + 1 / 4) / 4, (1 / 3 + 1 / 4 + 1 / 4) / 3]])
    np.testing.assert_allclose(z, expected, rtol=1e-6)
    assert list(fig.data[0].x) == ["0–1", "2–3"]
    assert "mean" in fig.data[0].hovertemplate


def test_a_thousand_tokens_become_an_overview_of_at_most_128_cells_a_side():
    m = causal_uniform(1000)
    fig = viz.attention_overview(m, None, 0, 0)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (125, 125)  # blocks of 8
    assert list(fig.data[0].x[:2]) == ["0–7", "8–15"] and fig.data[0].x[-1] == "992–999"
    assert fig.layout.coloraxis.cmax == pytest.approx(np.nanmax(z))  # long maps: colour up to the largest mean
    assert "8×8" in fig.layout.title.subtitle.text


def test_attention_heatmap_downsamples_long_inputs_unless_told_not_to():
    m = causal_uniform(1000)
    auto = viz.attention_heatmap(m, [f"t{i}" for i in range(1000)])
    assert max(np.asarray(auto.data[0].z).shape) <= viz.MAX_CELLS
    assert "block-averaged" in auto.layout.title.subtitle.text and "downsample=False" in auto.layout.title.subtitle.text
    short = viz.attention_heatmap(causal_uniform(viz.AUTO_DOWNSAMPLE_TOKENS))
    assert np.asarray(short.data[0].z).shape == (viz.AUTO_DOWNSAMPLE_TOKENS,) * 2
    full = viz.attention_heatmap(causal_uniform(400), downsample=False)
    assert np.asarray(full.data[0].z).shape == (400, 400)


# --- many maps -------------------------------------------------------------------------------------

def test_model_view_is_a_layer_by_head_grid_on_one_scale():
    a = tiny()
    fig = viz.model_view(a, TOKENS)
    maps = heatmaps(fig)
    assert len(maps) == L * H
    for k, trace in enumerate(maps):
        layer, head = divmod(k, H)
        np.testing.assert_allclose(shown(trace.z), a[layer, head], rtol=1e-6)
        assert list(trace.x) == LABELS and trace.coloraxis == "coloraxis"
        assert f"layer {layer}, head {head}" in trace.hovertemplate
    titles = {ann.text for ann in fig.layout.annotations}
    assert {"layer 0", "layer 1", "head 0", "head 1"} <= titles
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)


def test_head_view_one_legend_entry_per_head_and_opacity_follows_weight():
    a = tiny()
    layer = 1
    fig = viz.head_view(a, TOKENS, layer=layer)
    groups = {t.legendgroup for t in fig.data if t.legendgroup}
    assert groups == {"head 0", "head 1"}
    assert sorted(t.name for t in fig.data if t.showlegend is not False and t.legendgroup) == ["head 0", "head 1"]
    drawn = {0: set(), 1: set()}
    for trace in fig.data:
        if trace.mode != "lines" or trace.x[0] is None:  # skip the legend entries
            continue
        head = int(trace.legendgroup.split()[1])
        xs, ys = list(trace.x), list(trace.y)
        assert xs[::3] == [0.0] * (len(xs) // 3) and xs[1::3] == [1.0] * (len(xs) // 3)  # query left, key right
        for q, k in zip(ys[::3], ys[1::3], strict=True):
            w = a[layer, head, q, k]
            assert trace.opacity - 1 / 20 < w <= trace.opacity + 1e-6, (head, q, k, w, trace.opacity)
            drawn[head].add((q, k))
    for head in range(H):
        expected = {(q, k) for q, k in zip(*np.nonzero(a[layer, head] >= 0.02), strict=True)}
        assert drawn[head] == expected
    assert (3, 0) not in drawn[1]  # weight 1/354, below the 0.02 cut
    hover = [t for t in fig.data if t.mode == "markers"]
    assert any(f"{LABELS[3]} → {LABELS[3]}: {a[layer, 0, 3, 3]:.3f}" in s for t in hover for s in t.text)


def test_head_view_heads_subset():
    fig = viz.head_view(tiny(), TOKENS, layer=0, heads=[1])
    assert {t.legendgroup for t in fig.data if t.legendgroup} == {"head 1"}


def test_explorer_embeds_every_map_and_switches_with_a_dropdown_and_sliders():
    a = tiny()
    fig = viz.attention_explorer_figure(a, TOKENS, layer=1, head=1)
    maps = heatmaps(fig)
    assert len(maps) == L * H
    assert [t.visible for t in maps].count(True) == 1 and maps[L * H - 1].visible is True  # starts at (1, 1)
    for k, trace in enumerate(maps):
        np.testing.assert_allclose(shown(trace.z), a[divmod(k, H)], rtol=1e-6)
    (menu,) = fig.layout.updatemenus
    assert len(menu.buttons) == L and menu.active == 1
    assert len(fig.layout.sliders) == L
    assert [s.visible for s in fig.layout.sliders] == [False, True]
    for layer, (button, slider) in enumerate(zip(menu.buttons, fig.layout.sliders, strict=True)):
        data, layout = button.args
        assert data["visible"].index(True) == layer * H and data["visible"].count(True) == 1
        assert [layout[f"sliders[{k}].visible"] for k in range(L)] == [k == layer for k in range(L)]
        assert len(slider.steps) == H
        for head, step in enumerate(slider.steps):
            assert step.method == "update"
            assert step.args[0]["visible"].index(True) == layer * H + head
            assert step.args[1]["title.text"].endswith(f"layer {layer}, head {head}")
    assert fig.layout.title.text.endswith("layer 1, head 1")


def test_rollout_comparison_puts_raw_and_rollout_side_by_side():
    a = tiny()
    raw = a[1].mean(axis=0)
    rolled = raw @ a[0].mean(axis=0)  # any (T, T) map in [0, 1] will do; lmkit.attention.rollout makes the real one
    fig = viz.rollout_comparison(raw, rolled, TOKENS, layer=1)
    left, right = heatmaps(fig)
    np.testing.assert_allclose(shown(left.z), raw, rtol=1e-6)
    np.testing.assert_allclose(shown(right.z), rolled, rtol=1e-6)
    assert list(left.x) == LABELS and list(right.y) == LABELS
    titles = [ann.text for ann in fig.layout.annotations]
    assert "raw attention (layer 1, mean over heads)" in titles and "rollout through all layers" in titles
    assert left.coloraxis == right.coloraxis == "coloraxis"
    with pytest.raises(ValueError, match="same"):
        viz.rollout_comparison(raw, rolled[:3, :3])


def scores() -> pd.DataFrame:
    return pd.DataFrame({
        "layer": [0, 0, 1, 1], "head": [0, 1, 0, 1],
        "entropy": [0.1, 1.2, 0.5, 0.9], "mean_distance": [1.0, 2.5, 0.5, 3.0],
        "previous_token": [0.9, 0.1, 0.3, 0.2], "first_token": [0.05, 0.6, 0.2, 0.7],
        "induction": [0.0, 0.1, 0.8, 0.2],
    })


def test_head_scores_heatmap_one_metric_as_layer_by_head():
    fig = viz.head_scores_heatmap(scores().sample(frac=1, random_state=0))  # row order must not matter
    (trace,) = fig.data
    np.testing.assert_allclose(np.asarray(trace.z, dtype=float), [[0.9, 0.1], [0.3, 0.2]])
    assert list(trace.x) == ["0", "1"] and list(trace.y) == ["0", "1"]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0.0, 1.0)  # a share: 0..1
    assert "previous-token share" in trace.hovertemplate
    assert fig.layout.yaxis.autorange == "reversed"


def test_head_scores_heatmap_all_metrics_in_a_row():
    fig = viz.head_scores_heatmap(scores(), metric=None)
    assert len(fig.data) == 5
    assert [ann.text for ann in fig.layout.annotations] == [
        "entropy (nats)", "mean distance (tokens)", "previous-token share", "first-token share", "induction score"]
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), [[0.1, 1.2], [0.5, 0.9]])
    assert len({t.coloraxis for t in fig.data}) == 5  # a scale per metric
    assert len(viz.head_scores_heatmap(scores().drop(columns="induction"), metric=None).data) == 4


def test_head_scores_heatmap_leaves_a_missing_head_blank():
    fig = viz.head_scores_heatmap(scores().drop(index=1))  # no row for layer 0, head 1
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z[0, 1]) and z[1, 1] == pytest.approx(0.2)


@pytest.mark.parametrize("bad, metric, message", [
    (scores().drop(columns="first_token"), "first_token", "first_token"),
    (pd.concat([scores(), scores().iloc[:1]]), "entropy", "repeat"),
    (scores().assign(entropy="x"), "entropy", "numeric"),
])
def test_head_scores_heatmap_rejects_bad_tables(bad, metric, message):
    with pytest.raises(ValueError, match=message):
        viz.head_scores_heatmap(bad, metric)


def test_attention_evolution_has_a_frame_per_snapshot_and_a_step_slider():
    a = tiny()
    snapshots = [(200, a), (0, a[::-1].copy()), (100, a)]  # out of order: frames follow the step
    fig = viz.attention_evolution(snapshots, TOKENS, layer=1, head=0)
    assert [f.name for f in fig.frames] == ["0", "100", "200"]
    np.testing.assert_allclose(shown(fig.frames[0].data[0].z), a[0, 0], rtol=1e-6)  # a[::-1]: layer 1 is layer 0
    np.testing.assert_allclose(shown(fig.frames[2].data[0].z), a[1, 0], rtol=1e-6)
    np.testing.assert_allclose(shown(fig.data[0].z), a[0, 0], rtol=1e-6)
    assert fig.frames[1].layout.title.text.endswith("step 100")
    assert fig.layout.title.text.endswith("step 0")
    (slider,) = fig.layout.sliders
    assert [s.label for s in slider.steps] == ["0", "100", "200"]
    assert all(s.method == "animate" for s in slider.steps)
    (buttons,) = fig.layout.updatemenus
    assert [b.method for b in buttons.buttons] == ["animate", "animate"] and "play" in buttons.buttons[0].label
    with pytest.raises(ValueError, match="repeat"):
        viz.attention_evolution([(1, a), (1, a)], TOKENS)


# --- input checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("attn, message", [
    (np.zeros((2, 4, 4)), r"\(H, T, T\) or \(L, T, T\)"),
    (np.zeros((4, 4)), r"attn\[None, None\]"),
    (np.zeros((1, 1, 4, 3)), "square"),
    (np.zeros((1, 1, 1, 4, 4)), r"\(L, H, T, T\)"),
    ((), "empty"),
    ((np.zeros((2, 2, 4, 4)),), "batch of 2"),
    ((np.zeros((1, 2, 4, 4)), np.zeros((1, 3, 4, 4))), "same"),
    ((np.zeros((4, 4)),), "layer 0 has shape"),
    (np.full((1, 1, 4, 4), 3.0), r"\[0, 1\]"),
    (np.full((1, 1, 4, 4), np.inf), "infinite"),
    ("not numbers", "numbers"),
])
def test_bad_attention_shapes_say_what_is_expected(attn, message):
    with pytest.raises(ValueError, match=message):
        viz.attention_heatmap(attn)


@pytest.mark.parametrize("tokens, message", [
    (["a", "b", "c"], "3 tokens for attention over T = 4"),
    ("abcd", "list"),
    (["a", "b", 3, "d"], "position 2"),
    (5, "list of strings"),
])
def test_bad_tokens_are_value_errors(tokens, message):
    for figure in (viz.attention_heatmap, viz.model_view, viz.head_view, viz.attention_explorer_figure):
        with pytest.raises(ValueError, match=message):
            figure(tiny(), tokens)


@pytest.mark.parametrize("kwargs, message", [
    (dict(layer=2), "layer=2 is out of range"),
    (dict(head=-3), "head=-3 is out of range"),
    (dict(layer=0.5), "must be an int"),
    (dict(window=(2, 9)), r"window=\(2, 9\)"),
    (dict(window=3), "window must be"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(zmax=2), "zmax"),
])
def test_bad_options_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        viz.attention_heatmap(tiny(), TOKENS, **kwargs)


def test_figure_functions_reject_bad_attention_alike():
    bad = np.zeros((2, 4, 4))
    calls = [
        lambda: viz.model_view(bad), lambda: viz.head_view(bad), lambda: viz.attention_explorer_figure(bad),
        lambda: viz.attention_overview(bad), lambda: viz.attention_evolution([(0, bad)]),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"\(L, H, T, T\)"):
            call()


# --- style -----------------------------------------------------------------------------------------

def attention_figures(presentation: bool = False) -> dict[str, go.Figure]:
    a, p = tiny(), dict(presentation=presentation)
    return {
        "heatmap": viz.attention_heatmap(a, TOKENS, **p), "model_view": viz.model_view(a, TOKENS, **p),
        "head_view": viz.head_view(a, TOKENS, **p), "explorer": viz.attention_explorer_figure(a, TOKENS, **p),
        "rollout": viz.rollout_comparison(a[1].mean(0), a[0].mean(0), TOKENS, **p),
        "scores": viz.head_scores_heatmap(scores(), None, **p),
        "evolution": viz.attention_evolution([(0, a), (1, a)], TOKENS, **p),
        "overview": viz.attention_overview(causal_uniform(300), **p),
    }


def test_presentation_gives_larger_fonts():
    normal, big = attention_figures(), attention_figures(presentation=True)
    for name in normal:
        assert big[name].layout.font.size > normal[name].layout.font.size, name
        assert big[name].layout.title.font.size > normal[name].layout.title.font.size, name
    assert big["heatmap"].layout.xaxis.tickfont.size > normal["heatmap"].layout.xaxis.tickfont.size


def test_figures_use_the_okabe_ito_colourway():
    for name, fig in attention_figures().items():
        assert list(fig.layout.colorway) == list(viz.COLORWAY), name
    head_colours = [t.line.color for t in viz.head_view(tiny(), TOKENS).data if t.showlegend is not False and t.legendgroup]
    assert head_colours == list(viz.COLORWAY[:H])


# --- export ----------------------------------------------------------------------------------------

def test_to_html_writes_one_self_contained_page(tmp_path):
    from plotly.offline import get_plotlyjs

    fig = viz.attention_explorer_figure(tiny(), TOKENS)
    out = viz.to_html(fig, tmp_path / "sub" / "explorer.html", title="Layer <1>")
    assert out == tmp_path / "sub" / "explorer.html"
    html = out.read_text(encoding="utf-8")
    assert get_plotlyjs()[:2000] in html and len(html) > 3_000_000  # the plotly.js bundle, inlined
    assert 'src="http' not in html and not re.search(r"<script[^>]*\bsrc=", html)
    assert "cdnjs.cloudflare.com/ajax/libs/mathjax" not in html  # include_mathjax="cdn" would put it here
    assert "<title>Layer &lt;1&gt;</title>" in html
    assert '"sliders"' in html and '"updatemenus"' in html
    assert sorted(p.name for p in out.parent.iterdir()) == ["explorer.html"]  # no temp file left behind
    viz.to_html(viz.attention_heatmap(tiny(), TOKENS), out)  # replaces the file whole
    assert "<title>Attention: layer 0, head 0</title>" in out.read_text(encoding="utf-8")


def test_to_html_refuses_non_figures(tmp_path):
    with pytest.raises(TypeError, match="go.Figure"):
        viz.to_html({"data": []}, tmp_path / "x.html")


def test_to_png_calls_kaleido_with_the_system_browser_and_no_mathjax(tmp_path, monkeypatch):
    import kaleido

    calls = []

    def fake_calc_fig_sync(fig_dict, opts=None, *, topojson=None, kopts=None):
        calls.append((fig_dict, opts, kopts))
        return b"\x89PNG\r\n\x1a\n" + b"\0" * 2000

    monkeypatch.setattr(kaleido, "calc_fig_sync", fake_calc_fig_sync)
    monkeypatch.setattr(kaleido, "get_chrome_sync", lambda *a, **k: pytest.fail("must never download a browser"))
    monkeypatch.setenv("BROWSER_PATH", shutil.which("true") or "/bin/true")
    monkeypatch.setattr(pio.defaults, "mathjax", None)
    fig = viz.attention_heatmap(tiny(), TOKENS)
    out = viz.to_png(fig, tmp_path / "map.png", scale=3)
    assert out.read_bytes().startswith(b"\x89PNG")
    ((fig_dict, opts, kopts),) = calls
    assert kopts == {"path": os.environ["BROWSER_PATH"], "mathjax": False}
    assert opts == {"format": "png", "scale": 3, "width": fig.layout.width, "height": fig.layout.height}
    assert pio.defaults.mathjax is False
    viz.to_png(fig, tmp_path / "map.png", width=300, height=200)
    assert (calls[-1][1]["width"], calls[-1][1]["height"]) == (300, 200)


def test_to_png_without_a_browser_says_how_to_install_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        viz.to_png(viz.attention_heatmap(tiny()), tmp_path / "x.png")
    monkeypatch.delenv("BROWSER_PATH")
    monkeypatch.setattr(viz.export, "_BROWSER_CANDIDATES", ("/no/such/chromium", "no-such-browser-on-path"))
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        viz.to_png(viz.attention_heatmap(tiny()), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not os.access("/usr/bin/chromium", os.X_OK),
                    reason="needs Debian's chromium (apt-get install chromium) for kaleido")
def test_to_png_renders_a_real_png(tmp_path, monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    start = time.perf_counter()
    out = viz.to_png(viz.attention_heatmap(tiny(), TOKENS), tmp_path / "map.png")
    seconds = time.perf_counter() - start
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")  # IHDR
    fig_w, fig_h = viz.attention_heatmap(tiny(), TOKENS).layout.width, viz.attention_heatmap(tiny(), TOKENS).layout.height
    assert (width, height) == (2 * fig_w, 2 * fig_h)  # scale=2
    print(f"to_png took {seconds:.1f} s")



def test_matrix_grid_one_panel_per_matrix_with_unique_labels():
    m = {"q": np.arange(6.0).reshape(3, 2), "weights": np.array([[1, np.nan, np.nan], [0.5, 0.5, np.nan], [0.2, 0.3, 0.5]])}
    fig = viz.matrix_grid(m, row_labels=list("aba"), col_labels=list("aba"), title="steps")
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert list(fig.data[0].y) == ["0·a", "1·b", "2·a"] and list(fig.data[0].x) == ["0", "1"]
    assert list(fig.data[1].x) == ["0·a", "1·b", "2·a"]
    np.testing.assert_array_equal(fig.data[1].z, m["weights"])
    with pytest.raises(ValueError, match="3 rows"):
        viz.matrix_grid({"bad": np.zeros((2, 2))}, row_labels=list("abc"))


def test_to_png_keeps_choreographers_ignored_message_traceback_out_of_the_output(capsys):
    """choreographer logs a traceback at ERROR for a browser message it cannot decode and then ignores;
    seen in a notebook's PNG export, it read as a failure. Other choreographer errors still show."""
    import logging

    from lmkit.viz import export

    export.quiet_ignored_browser_messages()
    export.quiet_ignored_browser_messages()  # once is enough, twice changes nothing
    logger = logging.getLogger(export.BROWSER_PIPE_LOGGER)
    assert sum(isinstance(f, export._IgnoredBrowserMessage) for f in logger.filters) == 1
    handler = logging.StreamHandler()  # what a notebook's stderr would show
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("not JSON")
        except ValueError:
            logger.exception("JSONError decoding message. Ignoring")
            logger.exception("Error in trying to decode JSON off our read.")
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert "Ignoring" not in err and "Error in trying to decode JSON" in err
