"""Interactive explorers and live plots for JupyterLab (ipywidgets + plotly ``FigureWidget``).

``LiveLossPlot`` is a trainer callback: the loss curves grow in the notebook while training runs.
``AttentionExplorer`` puts a text box, a model choice, layer/head sliders and a view selector over
one live figure. Attention is captured once per (model, text) and cached, so moving a slider only
rebuilds the figure (milliseconds for the default model). The figures themselves come from
``lmkit.viz``; this file only wires widgets to them.
"""

from __future__ import annotations

import base64
import time

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from . import viz
from .attention import as_array, capture, rollout
from .callbacks import Callback

VIEWS = ("heatmap", "head view", "model view", "rollout")


class AttentionExplorer:
    """``AttentionExplorer({"name": (model, tokenizer), ...}, text)``; display ``explorer.widget``
    (or just the explorer: it renders itself). Works for lmkit models and Hugging Face models alike."""

    def __init__(self, models: dict, text: str = "To be, or not to be, that is the question.",
                 view: str = "heatmap", max_tokens: int = 64, presentation: bool = False):
        if not models:
            raise ValueError("AttentionExplorer needs at least one model: {'name': (model, tokenizer)}")
        if view not in VIEWS:
            raise ValueError(f"view={view!r}; choose one of {VIEWS}")
        self.models, self.max_tokens, self.presentation = dict(models), max_tokens, presentation
        self._cache: dict[tuple[str, str], tuple[np.ndarray, list[str]]] = {}
        self.text = widgets.Textarea(value=text, description="text", layout=widgets.Layout(width="95%"),
                                     continuous_update=False)
        self.model = widgets.Dropdown(options=list(self.models), description="model")
        self.view = widgets.Dropdown(options=VIEWS, value=view, description="view")
        self.layer = widgets.IntSlider(min=0, max=0, description="layer", continuous_update=True)
        self.head = widgets.IntSlider(min=0, max=0, description="head", continuous_update=True)
        self.status = widgets.HTML()
        self.figure = go.FigureWidget()
        for control in (self.text, self.model):
            control.observe(self._on_input, names="value")
        for control in (self.view, self.layer, self.head):
            control.observe(self._on_view, names="value")
        self.widget = widgets.VBox([self.text, widgets.HBox([self.model, self.view]),
                                    widgets.HBox([self.layer, self.head]), self.figure, self.status])
        self.last_update_ms = None
        self._on_input()

    def attention(self) -> tuple[np.ndarray, list[str]]:
        """(L, H, T, T) attention and tokens for the current model and text (cached)."""
        key = (self.model.value, self.text.value)
        if key not in self._cache:
            model, tokenizer = self.models[self.model.value]
            attentions, tokens = capture(model, self.text.value, tokenizer, max_tokens=self.max_tokens)
            self._cache[key] = (as_array(attentions), tokens)
        return self._cache[key]

    def _on_input(self, change=None) -> None:
        attn, _ = self.attention()
        L, H = attn.shape[:2]
        with self.layer.hold_trait_notifications(), self.head.hold_trait_notifications():
            self.layer.max, self.head.max = L - 1, H - 1
            self.layer.value, self.head.value = min(self.layer.value, L - 1), min(self.head.value, H - 1)
        self.update()

    def _on_view(self, change=None) -> None:
        self.update()

    def build(self) -> go.Figure:
        """The figure for the current widget values."""
        attn, tokens = self.attention()
        layer, head, p = self.layer.value, self.head.value, self.presentation
        if self.view.value == "heatmap":
            return viz.attention_heatmap(attn, tokens, layer=layer, head=head, presentation=p)
        if self.view.value == "head view":
            return viz.head_view(attn, tokens, layer=layer, presentation=p)
        if self.view.value == "model view":
            return viz.model_view(attn, tokens, presentation=p)
        return viz.rollout_comparison(attn[layer].mean(0), rollout(attn)[-1], tokens, presentation=p)

    def update(self) -> float:
        """Redraw; returns (and shows) the time it took in milliseconds."""
        start = time.perf_counter()
        fig = _with_typed_maps(self.build())
        with self.figure.batch_update():
            self.figure.data = ()
            self.figure.add_traces(fig.data)
            self.figure.layout = fig.layout
        self.last_update_ms = (time.perf_counter() - start) * 1000
        attn, tokens = self.attention()
        self.status.value = (f"<small>{len(tokens)} tokens · {attn.shape[0]} layers × {attn.shape[1]} heads · "
                             f"updated in {self.last_update_ms:.0f} ms</small>")
        return self.last_update_ms

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class LiveLossPlot(Callback):
    """Loss curves that grow while ``Trainer.train()`` runs: a ``FigureWidget`` redrawn every
    ``every`` steps, but not more often than every ``min_seconds``, and at each evaluation. At the
    end the widget is replaced by the same figure as a static plot, so the saved notebook (and a
    papermill run, which has no live front end) keeps it. Outside IPython it does nothing.

    Each redraw sends the whole curves to the front end; the time limit keeps a fast run from
    flooding the kernel's output channel (a front end that falls behind drops messages)."""

    def __init__(self, every: int = 10, smooth: int = 20, title: str = "Loss during training",
                 min_seconds: float = 1.0):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"LiveLossPlot(every={every!r}) must be a positive integer")
        if not min_seconds >= 0:
            raise ValueError(f"LiveLossPlot(min_seconds={min_seconds!r}) must be 0 or more seconds")
        self.every, self.smooth, self.title, self.min_seconds = every, smooth, title, min_seconds
        self.figure: go.FigureWidget | None = None
        self._handle = None
        self._drawn_at = -float("inf")

    def on_train_start(self, trainer) -> None:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is None:
            return
        self.figure = go.FigureWidget(layout=dict(title=self.title, height=380, xaxis_title="step",
                                                  yaxis_title="loss (nats per token)"))
        self._handle = display(self.figure, display_id=True)
        self._redraw(trainer)

    def on_step(self, trainer, metrics: dict) -> None:
        if trainer.step % self.every == 0 and time.monotonic() - self._drawn_at >= self.min_seconds:
            self._redraw(trainer)

    def on_eval(self, trainer, metrics: dict) -> None:
        self._redraw(trainer)

    def on_train_end(self, trainer) -> None:
        if self._handle is not None and len(trainer.history):
            self._handle.update(_Static(viz.loss_curves(trainer.metrics, self.title, smooth=self.smooth)))

    def _redraw(self, trainer) -> None:
        if self.figure is None or not any("train_loss" in r or "val_loss" in r for r in trainer.history[-1:]):
            return
        fig = viz.loss_curves(trainer.metrics, self.title, smooth=self.smooth)
        with self.figure.batch_update():
            if [t.name for t in self.figure.data] == [t.name for t in fig.data]:
                for live, new in zip(self.figure.data, fig.data, strict=True):  # the points only: one update message
                    live.x, live.y = new.x, new.y
            else:  # the first draw, or the validation curve appears
                self.figure.data = ()
                self.figure.add_traces(fig.data)
                self.figure.layout = fig.layout
        self._drawn_at = time.monotonic()


class _Static:
    """A figure shown through its mime bundle only. IPython hands objects that define
    ``_ipython_display_`` (plotly figures do) the display call and drops ``display_id``/``update``,
    so an update would append a new output instead of replacing the widget."""

    def __init__(self, fig: go.Figure):
        self.fig = fig

    def __repr__(self) -> str:  # the text/plain part of the bundle
        return f"<figure: {self.fig.layout.title.text or 'plotly'}>"

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        return self.fig._repr_mimebundle_(include, exclude)


def _with_typed_maps(fig: go.Figure) -> go.Figure:
    """Every map's ``z`` as a plotly.js typed-array spec (float32 bytes, base64): a FigureWidget syncs
    its data to the browser as strict JSON, which has no NaN (a masked attention cell), and a nested
    list of 65k numbers is what made a redraw slow (plotly validates, copies and serialises it cell
    by cell). NaN stays NaN in the bytes and plotly.js draws it as a blank cell, as in static figures."""
    for trace in fig.data:
        z = getattr(trace, "z", None)
        if z is not None and not isinstance(z, dict):
            trace.z = typed_array(z)
    return fig


def typed_array(values) -> dict:
    """``{"dtype": "f4", "bdata": base64 of the float32 bytes, "shape": "rows, cols"}``: the typed-array
    form plotly.js (>= 2.28) reads wherever it takes a data array; ``decode_typed_array`` reverses it."""
    arr = np.ascontiguousarray(np.asarray(values, dtype=float), dtype=np.float32)
    spec = {"dtype": "f4", "bdata": base64.b64encode(arr.tobytes()).decode("ascii")}
    if arr.ndim > 1:
        spec["shape"] = ", ".join(str(n) for n in arr.shape)
    return spec


def decode_typed_array(spec: dict) -> np.ndarray:
    """The array a ``typed_array`` spec holds (what the browser sees)."""
    if spec.get("dtype") != "f4":
        raise ValueError(f"decode_typed_array reads float32 specs (dtype 'f4'); got dtype={spec.get('dtype')!r}")
    arr = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.float32)
    shape = [int(n) for n in spec["shape"].split(",")] if "shape" in spec else [arr.size]
    return arr.reshape(shape)
