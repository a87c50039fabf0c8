"""Tests for the data figures in lmkit.viz: traces, labels, input checks, styling, offline HTML."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from lmkit import viz

NAMES = ["hamlet_gut", "hamlet_gut_f", "sonnets_gut"]


def similarity() -> pd.DataFrame:
    m = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.05], [0.1, 0.05, 1.0]])
    return pd.DataFrame(m, index=NAMES, columns=NAMES)


def corpus_table() -> pd.DataFrame:
    return pd.DataFrame({
        "name": NAMES, "genre": ["tragedy", "tragedy", "poetry"], "edition": ["modern", "folio", "modern"],
        "characters": [180_000, 160_000, 95_000],
    })


def cleaning_steps() -> pd.DataFrame:
    return pd.DataFrame({
        "step": ["normalise", "strip headers"], "documents_changed": [3, 2],
        "characters_before": [1000, 990], "characters_after": [990, 900], "documents_dropped": [0, 1],
    })


def tokenizer_table() -> pd.DataFrame:
    return pd.DataFrame({
        "tokenizer": ["char", "bpe-512", "bpe-1024"], "vocab_size": [65, 512, 1024],
        "chars_per_token": [1.0, 1.9, 2.4], "sample_tokens": [500, 260, 210], "vocab_used": [0.95, 0.6, 0.8],
    })


def frequencies() -> dict[str, pd.DataFrame]:
    ranks = np.arange(1, 6)
    return {
        "char": pd.DataFrame({"rank": ranks, "count": [50, 30, 20, 10, 5], "token": ["␣", "e", "\\n", "t", "<"]}),
        "bpe-512": pd.DataFrame({"rank": ranks[:3], "count": [40, 20, 13], "token": ["␣the", ",", "."]}),
    }


def all_figures(presentation: bool = False) -> dict[str, go.Figure]:
    return {
        "similarity_heatmap": viz.similarity_heatmap(similarity(), presentation=presentation),
        "cleaning_report": viz.cleaning_report(cleaning_steps(), presentation=presentation),
        "corpus_overview": viz.corpus_overview(corpus_table(), presentation=presentation),
        "tokenizer_comparison": viz.tokenizer_comparison(tokenizer_table(), presentation=presentation),
        "zipf_plot": viz.zipf_plot(frequencies(), presentation=presentation),
        "split_overview": viz.split_overview(NAMES[:2], NAMES[2:], corpus_table(), presentation=presentation),
    }


# --- shared style --------------------------------------------------------------------------------

def test_palette_is_okabe_ito():
    assert len(viz.PALETTE) == 8 and len(set(viz.PALETTE)) == 8
    assert viz.PALETTE[0] == "#000000" and "#E69F00" in viz.PALETTE and "#CC79A7" in viz.PALETTE
    assert sorted(viz.COLORWAY) == sorted(viz.PALETTE)


def test_style_sets_title_colourway_and_larger_presentation_fonts():
    fig = viz.style(go.Figure(), title="hello")
    assert fig.layout.title.text == "hello"
    assert list(fig.layout.colorway) == list(viz.COLORWAY)
    big = viz.style(go.Figure(), presentation=True)
    assert big.layout.font.size > fig.layout.font.size
    assert big.layout.title.font.size > fig.layout.title.font.size


def test_presentation_makes_every_figure_larger():
    normal, big = all_figures(), all_figures(presentation=True)
    for name in normal:
        assert big[name].layout.font.size > normal[name].layout.font.size, name
    # figure-specific small fonts scale too
    assert big["similarity_heatmap"].layout.xaxis.tickfont.size > normal["similarity_heatmap"].layout.xaxis.tickfont.size


def test_html_is_self_contained():
    for name, fig in all_figures().items():
        html = fig.to_html(include_plotlyjs=True, full_html=True)
        assert 'src="http' not in html, name
        assert "plotly" in html.lower()


# --- figures -------------------------------------------------------------------------------------

def test_similarity_heatmap_shows_the_matrix():
    fig = viz.similarity_heatmap(similarity(), title="dups")
    (trace,) = fig.data
    assert trace.type == "heatmap"
    np.testing.assert_array_equal(np.asarray(trace.z), similarity().to_numpy())
    assert list(trace.x) == NAMES and list(trace.y) == NAMES
    assert (trace.zmin, trace.zmax) == (0.0, 1.0)
    assert "%{z" in trace.hovertemplate
    assert fig.layout.title.text == "dups"
    assert fig.layout.yaxis.autorange == "reversed"


@pytest.mark.parametrize("bad, message", [
    (pd.DataFrame(np.zeros((3, 4))), "3×4"),
    (pd.DataFrame(np.eye(3), index=["a", "b", "c"], columns=["a", "c", "b"]), "same order"),
    (pd.DataFrame(np.eye(2) * 2, index=["a", "b"], columns=["a", "b"]), r"\[0, 1\]"),
])
def test_similarity_heatmap_rejects_bad_matrices(bad, message):
    with pytest.raises(ValueError, match=message):
        viz.similarity_heatmap(bad)


def test_similarity_heatmap_rejects_non_frames():
    with pytest.raises(TypeError, match="DataFrame"):
        viz.similarity_heatmap(np.eye(3))


def test_cleaning_report_groups_before_and_after():
    steps = cleaning_steps()
    fig = viz.cleaning_report(steps)
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert [t.name for t in fig.data] == ["before", "after"]
    assert list(fig.data[0].y) == [1000, 990] and list(fig.data[1].y) == [990, 900]
    assert list(fig.data[0].x) == ["normalise", "strip headers"]
    assert fig.layout.barmode == "group"
    assert fig.layout.xaxis.title.text == "cleaning step" and fig.layout.yaxis.title.text == "characters"
    assert list(fig.data[1].text) == ["−1.00%", "−9.09%"]
    custom = np.asarray(fig.data[1].customdata)
    assert list(custom[:, 4]) == [3, 2] and list(custom[:, 5]) == [0, 1]  # documents changed, dropped
    assert "documents dropped" in fig.data[1].hovertemplate


def test_cleaning_report_names_the_missing_column():
    with pytest.raises(ValueError, match="documents_dropped"):
        viz.cleaning_report(cleaning_steps().drop(columns="documents_dropped"))


def test_corpus_overview_one_trace_per_genre_sorted_by_size():
    fig = viz.corpus_overview(corpus_table())
    assert {t.name for t in fig.data} == {"tragedy", "poetry"}
    assert all(t.type == "bar" and t.orientation == "h" for t in fig.data)
    tragedy = next(t for t in fig.data if t.name == "tragedy")
    assert list(tragedy.y) == ["hamlet_gut", "hamlet_gut_f"] and list(tragedy.x) == [180_000, 160_000]
    # bottom-up category order: the largest document is listed last, so it is drawn on top
    assert list(fig.layout.yaxis.categoryarray) == ["sonnets_gut", "hamlet_gut_f", "hamlet_gut"]
    assert fig.layout.xaxis.title.text == "characters"
    assert tragedy.marker.color != next(t for t in fig.data if t.name == "poetry").marker.color


def test_corpus_overview_rejects_missing_columns_and_duplicate_names():
    with pytest.raises(ValueError, match="genre"):
        viz.corpus_overview(corpus_table().drop(columns="genre"))
    with pytest.raises(ValueError, match="repeat"):
        viz.corpus_overview(pd.concat([corpus_table(), corpus_table()]))


def test_tokenizer_comparison_three_panels_one_bar_per_tokenizer():
    table = tokenizer_table()
    fig = viz.tokenizer_comparison(table)
    assert [t.type for t in fig.data] == ["bar"] * 3
    for trace, metric in zip(fig.data, ["chars_per_token", "sample_tokens", "vocab_used"], strict=True):
        assert list(trace.x) == ["char", "bpe-512", "bpe-1024"]
        assert list(trace.y) == table[metric].tolist()
    assert [a.text for a in fig.layout.annotations] == [
        "characters per token", "tokens for the sample", "vocabulary used"]
    assert fig.layout.yaxis3.tickformat == ".0%"


def test_tokenizer_comparison_names_the_missing_column():
    with pytest.raises(ValueError, match="vocab_used"):
        viz.tokenizer_comparison(tokenizer_table().drop(columns="vocab_used"))


def test_zipf_plot_log_axes_lines_and_fits():
    freqs = frequencies()
    fig = viz.zipf_plot(freqs, fits={"char": {"s": 1.0, "C": 50.0, "min_rank": 1, "max_rank": 5}})
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text == "rank" and fig.layout.yaxis.title.text == "count"
    assert [t.name for t in fig.data] == ["char", "char fit: s = 1.00", "bpe-512"]
    line = fig.data[0]
    assert list(line.x) == [1, 2, 3, 4, 5] and list(line.y) == [50, 30, 20, 10, 5]
    assert list(line.customdata) == ["␣", "e", "\\n", "t", "&lt;"]  # escaped: hover labels read <...> as markup
    assert "%{customdata}" in line.hovertemplate
    fit = fig.data[1]
    np.testing.assert_allclose(fit.y, [50.0, 10.0])
    assert fit.line.dash == "dash" and fit.line.color == line.line.color


def test_zipf_plot_rejects_bad_input():
    with pytest.raises(ValueError, match="no frequency table"):
        viz.zipf_plot(frequencies(), fits={"bpe-9999": {"s": 1.0, "C": 1.0}})
    with pytest.raises(ValueError, match="rank"):
        viz.zipf_plot({"char": pd.DataFrame({"count": [3, 2]})})
    with pytest.raises(ValueError, match="non-empty"):
        viz.zipf_plot({})
    with pytest.raises(ValueError, match="'s' and 'C'"):
        viz.zipf_plot(frequencies(), fits={"char": {"slope": 1.0}})


def test_split_overview_with_table_bars_by_split():
    fig = viz.split_overview(NAMES[:2], NAMES[2:], corpus_table())
    assert [t.name for t in fig.data] == ["train (2)", "val (1)"]
    assert all(t.type == "bar" for t in fig.data)
    assert list(fig.data[0].y) == NAMES[:2] and list(fig.data[0].x) == [180_000, 160_000]
    assert fig.data[0].marker.color != fig.data[1].marker.color
    assert "2 train" in fig.layout.title.text and "1 val" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "characters"


def test_split_overview_without_table_is_a_strip():
    fig = viz.split_overview(NAMES[:2], NAMES[2:])
    assert [t.type for t in fig.data] == ["scatter", "scatter"]
    assert list(fig.data[1].x) == ["val"] and list(fig.data[1].y) == ["sonnets_gut"]


def test_split_overview_rejects_leaks_and_missing_rows():
    with pytest.raises(ValueError, match="both train and val"):
        viz.split_overview(NAMES, NAMES[:1])
    with pytest.raises(ValueError, match="no row"):
        viz.split_overview(NAMES[:2], ["macbeth_gut"], corpus_table())


def test_lr_schedule_figure_follows_the_config():
    from lmkit import TrainConfig

    cfg = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3)
    fig = viz.lr_schedule(cfg)
    (trace,) = fig.data
    assert len(trace.y) == 100 and max(trace.y) == pytest.approx(1e-3)
    assert trace.y[0] == pytest.approx(1e-4) and trace.y[-1] < 2e-4


def test_loss_curves_show_train_and_validation():
    df = pd.DataFrame([{"step": s, "train_loss": 4.0 - s / 100} for s in range(1, 101)]
                      + [{"step": 50, "val_loss": 3.6}, {"step": 100, "val_loss": 3.1}])
    fig = viz.loss_curves(df)
    assert [t.name for t in fig.data] == ["train (per step)", "train (20-step mean)", "validation"]
    assert list(fig.data[2].y) == [3.6, 3.1]
    with pytest.raises(ValueError, match="train_loss"):
        viz.loss_curves(pd.DataFrame({"step": [1]}))
