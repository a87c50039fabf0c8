"""Training diagnostics: per-layer gradient norms and update ratios, the profiler table, MFU, the
diagnostics figure and the live loss plot."""

import json
import math
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

from lmkit import Callback, Trainer, diagnostics, viz
from lmkit.device import measure_matmul_flops
from lmkit.diagnostics import Diagnostics, layer_of, profile_step, throughput
from lmkit.widgets import LiveLossPlot

from .conftest import make_config, make_model


def test_layer_of_groups_parameters_by_block():
    assert layer_of("transformer.h.3.attn.c_attn.weight") == "h.3"
    assert layer_of("transformer.h.12.ln_1.bias") == "h.12"
    assert layer_of("transformer.wte.weight") == "wte"
    assert layer_of("transformer.ln_f.weight") == "ln_f"
    assert layer_of("lm_head.weight") == "lm_head"


class WeightSpy(Callback):
    """Copies every parameter before and after each update, to check Diagnostics by hand."""

    def __init__(self):
        self.before, self.after = {}, {}

    def on_before_update(self, trainer):
        self.before[trainer.step + 1] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    def on_step(self, trainer, metrics):
        self.after[trainer.step] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_diagnostics_match_a_hand_computation(token_data, tmp_path):
    train, val = token_data
    diag, spy = Diagnostics(interval=3), WeightSpy()
    trainer = Trainer(make_model(), make_config(max_steps=7, grad_clip=None), train, val, run_dir=tmp_path,
                      callbacks=[diag, spy])
    metrics = trainer.train()
    df = diag.frame()
    assert sorted(set(df["step"])) == [1, 3, 6]  # the first step, then every 3rd
    assert list(dict.fromkeys(df["layer"])) == ["wte", "wpe", "h.0", "h.1", "ln_f"]  # model order
    for step, rows in df.groupby("step"):
        # without clipping, the layer norms combine into the global gradient norm the trainer logs
        logged = metrics.loc[metrics["step"].eq(step) & metrics["grad_norm"].notna(), "grad_norm"].iloc[0]
        assert math.sqrt((rows["grad_norm"] ** 2).sum()) == pytest.approx(logged, rel=1e-5)
        for _, row in rows.iterrows():
            names = [n for n in spy.before[step] if layer_of(n) == row["layer"]]
            delta = math.sqrt(sum(float(((spy.after[step][n] - spy.before[step][n]) ** 2).sum()) for n in names))
            size = math.sqrt(sum(float((spy.before[step][n] ** 2).sum()) for n in names))
            assert row["update_ratio"] == pytest.approx(delta / size, rel=1e-5)
            assert 0 < row["update_ratio"] < 1
    written = [json.loads(line) for line in (tmp_path / "diagnostics.jsonl").read_text().splitlines()]
    assert written == df.to_dict("records")


def test_diagnostics_interval_is_validated():
    with pytest.raises(ValueError, match="interval=0"):
        Diagnostics(interval=0)


def test_profile_step_lists_operators_and_leaves_the_model_alone(token_data):
    train, _ = token_data
    model = make_model()
    before = [p.detach().clone() for p in model.parameters()]
    table = profile_step(model, train, 4, steps=2, top=8)
    assert list(table.columns) == ["operator", "calls", "self_ms", "share"] and len(table) == 8
    assert table["self_ms"].is_monotonic_decreasing and (table["self_ms"] > 0).all()
    assert table["operator"].str.startswith("aten::").any()
    assert {"aten::mm", "aten::addmm", "aten::bmm"} & set(table["operator"])  # matmuls show up among the top
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="steps=0"):
        profile_step(model, train, 4, steps=0)


def test_throughput_uses_the_measured_peak_on_cpu_and_the_published_one_on_gpus(monkeypatch):
    monkeypatch.setattr(diagnostics, "measure_matmul_flops", lambda device: 1e9)
    cpu = throughput(1000.0, 2e5, "cpu")
    assert cpu["achieved_flops"] == 2e8 and cpu["mfu"] == pytest.approx(0.2)
    assert cpu["peak_source"] == "measured fp32 matmul"
    monkeypatch.setattr(diagnostics, "peak_flops", lambda device: 989e12 if device.type == "cuda" else None)
    gpu = throughput(1e6, 1e8, "cuda")
    assert gpu["peak_flops"] == 989e12 and gpu["mfu"] == pytest.approx(1e14 / 989e12)
    assert gpu["peak_source"] == "published bf16 peak"


def test_measured_matmul_rate_is_plausible():
    flops = measure_matmul_flops("cpu", size=256, repeats=3)
    assert 1e8 < flops < 1e13  # between a very slow core and far beyond any CPU


def test_diagnostics_figure_has_two_panels_per_layer(token_data):
    train, val = token_data
    diag = Diagnostics(interval=2)
    Trainer(make_model(), make_config(max_steps=4), train, val, callbacks=[diag]).train()
    fig = viz.training_diagnostics(diag.frame())
    layers = list(dict.fromkeys(diag.frame()["layer"]))
    assert len(fig.data) == 2 * len(layers)
    assert [t.name for t in fig.data if t.showlegend] == layers  # one legend entry per layer
    assert fig.layout.yaxis.type == fig.layout.yaxis2.type == "log"
    with pytest.raises(ValueError, match="at least one row"):
        viz.training_diagnostics(Diagnostics().frame())


class FakeHandle:
    def __init__(self):
        self.updates = []

    def update(self, obj):
        self.updates.append(obj._repr_mimebundle_())


def test_live_loss_plot_grows_and_ends_as_a_static_figure(token_data, monkeypatch):
    import plotly.io as pio

    monkeypatch.setattr(pio.renderers, "default", "plotly_mimetype")  # as lmkit.notebook.setup sets it
    train, val = token_data
    live = LiveLossPlot(every=2, min_seconds=0)
    trainer = Trainer(make_model(), make_config(max_steps=8), train, val, callbacks=[live])
    live.on_train_start(trainer)  # outside IPython: nothing to display, nothing drawn
    assert live.figure is None
    live.figure, live._handle = go.FigureWidget(), FakeHandle()  # what on_train_start sets up in a kernel
    counts = []

    class Watch(Callback):
        def on_step(self, trainer, metrics):
            counts.append(len(live.figure.data[0].x) if live.figure.data else 0)

    trainer.callbacks.append(Watch())
    trainer.train()
    assert counts[-1] == 8 and counts == sorted(counts) and counts[0] < 8  # redrawn as training went
    assert "validation" in [t.name for t in live.figure.data]
    (bundle,) = live._handle.updates  # replaced once, at the end, by a static plotly figure
    assert "application/vnd.plotly.v1+json" in bundle
    with pytest.raises(ValueError, match="every=0"):
        LiveLossPlot(every=0)
    with pytest.raises(ValueError, match="min_seconds=-1"):
        LiveLossPlot(min_seconds=-1)


LIVE_TRAINING = """
import time
from lmkit import Callback, Trainer
from lmkit.widgets import LiveLossPlot
from tests.conftest import make_config, make_model, make_token_data

class Slow(Callback):  # about 100 steps a second, like the default model on a fast machine
    def on_step(self, trainer, metrics):
        time.sleep(0.01)

train, val = make_token_data()
start = time.monotonic()
Trainer(make_model(), make_config(max_steps=400, eval_interval=100, progress=True), train, val,
        callbacks=[LiveLossPlot(every=1), Slow()]).train()
print("seconds", time.monotonic() - start)
"""


def test_live_training_display_sends_a_few_messages_a_second_not_one_per_step():
    """In a real kernel the progress bar and the live plot send widget messages while training runs.
    At one or more per step a long run floods the kernel's output channel, and a client that reads
    it only after the cell (nbval, papermill) finds messages dropped: this capped both."""
    from queue import Empty

    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(Path(__file__).parents[1]))
    try:
        msg_id = kc.execute(LIVE_TRAINING)
        reply = kc.get_shell_msg(timeout=120)
        messages = []
        while True:
            try:
                msg = kc.get_iopub_msg(timeout=10)
            except Empty:
                break
            if msg["parent_header"].get("msg_id") == msg_id:
                messages.append(msg)
                if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                    break
    finally:
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    printed = "".join(m["content"].get("text", "") for m in messages if m["msg_type"] == "stream")
    seconds = float(printed.split("seconds")[-1])
    comm = sum(m["msg_type"] == "comm_msg" for m in messages)
    assert seconds > 3  # long enough for the rate to show
    assert comm <= 8 * seconds + 40, f"{comm} widget messages in {seconds:.1f} s of training"
