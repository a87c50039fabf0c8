"""The memory plan: hand-computed cases, autograd's saved tensors, measured peaks; activation
checkpointing: the same gradients and less memory."""

import dataclasses

import pytest
import torch

from lmkit import GPT, GPTConfig, TrainConfig, Trainer
from lmkit.data import TokenDataset
from lmkit.footprint import fits, measure_memory, memory_growth, plan_vs_measured
from lmkit.memory import activation_bytes, memory_plan, plan_bytes
from lmkit.scaling import memory_plan as scaling_memory_plan

SMALL = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=2, n_embd=8, pos_encoding="learned")


def test_weights_gradients_and_adam_states_by_hand():
    # 1 block of width 8 with biases: 2 LayerNorms 2·16, c_attn 8·24 + 24, c_proj 64 + 8, c_fc 8·32 + 32,
    # mlp c_proj 32·8 + 8 = 872; wte 80 (tied head), wpe 32, ln_f 16: 1000 parameters
    assert SMALL.parameter_count() == 1000
    parts = plan_bytes(SMALL, TrainConfig(batch_size=2))
    assert (parts["parameters"], parts["gradients"], parts["optimizer states"], parts["gathered"]) == (4000, 4000, 8000, 0)
    sharded = plan_bytes(SMALL, TrainConfig(batch_size=2, parallel="fsdp"), world_size=2)
    assert (sharded["parameters"], sharded["gradients"], sharded["optimizer states"]) == (2000, 2000, 4000)
    # FSDP gathers the root (1000 - 872 = 128) and two blocks in fp32, and one block's fp32 gradients
    assert sharded["gathered"] == 4 * (128 + 2 * 872) + 4 * 872
    ddp = plan_bytes(SMALL, TrainConfig(batch_size=2), world_size=2)
    assert ddp["parameters"] == parts["parameters"] and ddp["gathered"] == 0  # DDP: a whole copy in each


def test_activations_by_hand():
    # s·b = 8 positions, h = 8: a layer keeps 2 fp32 LayerNorm inputs and 15 more values (fp32 here);
    # the head keeps 2·h + V and adds the log-probabilities' gradient, V
    layer = 8 * 8 * (4 * 2 + 4 * 15)
    head = 4 * 8 * (2 * 8 + 2 * 10)
    assert activation_bytes(SMALL, 2, checkpointing=False) == layer + head == 5504
    assert activation_bytes(SMALL, 2, checkpointing=True) == 4 * 8 * 8 + layer + head  # block input + one block again
    rope = dataclasses.replace(SMALL, pos_encoding="rope")
    assert activation_bytes(rope, 2, False) == 8 * 8 * (4 * 2 + 4 * 17) + head  # the rotated q and k
    assert activation_bytes(SMALL, 2, False, bf16=True) == 8 * 8 * (4 * 2 + 2 * 15) + head


def test_the_table_counts_one_activation_row_and_names_its_sources():
    table = memory_plan(SMALL, TrainConfig(batch_size=2, activation_checkpointing=True))
    assert list(table.index) == ["parameters", "gradients", "optimizer states", "gathered",
                                 "activations, checkpointing", "activations, no checkpointing", "total"]
    assert not table.loc["activations, no checkpointing", "counted"] and table.loc["activations, checkpointing", "counted"]
    # the backward pass frees activations as it fills gradients: the larger of the two counts
    expected = 4000 + 8000 + max(4000, activation_bytes(SMALL, 2, True))
    assert table.loc["total", "bytes"] == expected
    assert "ZeRO" in table.loc["parameters", "source"] and "Korthikanti" in table.loc["activations, no checkpointing", "source"]
    assert scaling_memory_plan is memory_plan
    with pytest.raises(ValueError, match="world_size=0"):
        memory_plan(SMALL, TrainConfig(), world_size=0)
    with pytest.raises(ValueError, match="parallel='zero'"):
        memory_plan(SMALL, TrainConfig(), parallel="zero")


def _saved_bytes(model, x):
    """Bytes of the tensors autograd keeps for the backward pass (weights left out), each storage once."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in weights:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)
    return sum(seen.values())


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_planned_activations_are_what_autograd_keeps(pos):
    cfg = GPTConfig(vocab_size=50, block_size=64, n_layer=3, n_head=4, n_embd=64, pos_encoding=pos)
    model = GPT(cfg)
    x = torch.randint(0, 50, (4, 64))
    gradient_of_logprobs = 4 * 4 * 64 * 50  # planned, but made by the backward pass: not a saved tensor
    kept = _saved_bytes(model, x)
    assert kept == pytest.approx(activation_bytes(cfg, 4, False) - gradient_of_logprobs, rel=0.08)
    model.activation_checkpointing = True
    one_block = activation_bytes(cfg, 4, False) - activation_bytes(dataclasses.replace(cfg, n_layer=2), 4, False)
    kept = _saved_bytes(model, x)  # the recomputed block exists only during the backward pass
    assert kept == pytest.approx(activation_bytes(cfg, 4, True) - one_block - gradient_of_logprobs, rel=0.08)


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = GPTConfig(vocab_size=30, block_size=32, n_layer=3, n_head=2, n_embd=32, dropout=0.1)
    x = torch.randint(0, 30, (4, 32))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(cfg)
        model.activation_checkpointing = checkpointing
        torch.manual_seed(1)  # the same dropout masks: the recomputation restores the RNG state
        model(x, x).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_trainer_with_activation_checkpointing_trains_the_same_and_generates_as_before():
    data = TokenDataset(torch.randint(0, 20, (3000,), generator=torch.Generator().manual_seed(0)).numpy(), 16)
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16))
        cfg = TrainConfig(max_steps=5, batch_size=4, eval_interval=5, eval_batches=1, progress=False, device="cpu",
                          activation_checkpointing=checkpointing)
        trainer = Trainer(model, cfg, data, data)
        assert trainer.model.activation_checkpointing is checkpointing
        runs.append(trainer.train())
    assert runs[1]["train_loss"].dropna().tolist() == pytest.approx(runs[0]["train_loss"].dropna().tolist(), abs=1e-6)
    prompt = torch.zeros((1, 1), dtype=torch.long)  # no_grad: the KV cache works as without it
    assert trainer.model.generate(prompt, 5, top_k=1).shape == (1, 6)


def test_attention_capture_works_with_activation_checkpointing():
    model = GPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16))
    x = torch.randint(0, 20, (2, 16))
    plain = model(x, x, output_attentions=True)
    model.activation_checkpointing = True
    out = model(x, x, output_attentions=True)  # in training mode, with gradients: through the checkpoint
    out.loss.backward()
    for a, b in zip(plain.attentions, out.attentions, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_plan_matches_measured_weights_and_optimizer_states_within_a_quarter():
    cfg = GPTConfig(vocab_size=88, block_size=64, n_layer=6, n_head=8, n_embd=384)  # 10.7M parameters, 43 MB
    tcfg = TrainConfig(batch_size=2, device="cpu")
    table = plan_vs_measured(cfg, tcfg, 1, measure_memory(cfg, tcfg, 1))
    both = table.loc[["weights (after building)", "kept by the first step"]]
    assert both["measured_mb"].sum() == pytest.approx(both["planned_mb"].sum(), rel=0.25)
    assert table.loc["total", "measured / planned"] == pytest.approx(1, abs=0.25)


@pytest.mark.slow
def test_activation_checkpointing_needs_less_activation_memory_measured():
    cfg = GPTConfig(vocab_size=88, block_size=256, n_layer=8, n_head=8, n_embd=256)  # activations ≫ weights
    peaks = {ck: measure_memory(cfg, TrainConfig(batch_size=8, device="cpu", activation_checkpointing=ck), 1)
             .loc[0, "step_peak_mb"] for ck in (False, True)}
    planned = {ck: activation_bytes(cfg, 8, ck) / 2**20 for ck in (False, True)}
    assert peaks[True] < 0.4 * peaks[False]  # planned: 59 MB instead of 309 MB
    assert peaks[False] == pytest.approx(planned[False], rel=0.25)


def test_measure_memory_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="processes >= 2"):
        measure_memory(SMALL, TrainConfig(parallel="fsdp"), 1)
    with pytest.raises(ValueError, match="steps=1 must be an integer >= 2"):
        measure_memory(SMALL, TrainConfig(), 1, steps=1)


def test_fits_answers_which_way_makes_a_model_fit():
    medium = GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024, pos_encoding="learned")
    table = fits(medium, TrainConfig(batch_size=16, dtype="bfloat16"), 24 * 2**30).set_index(
        ["way", "processes", "activation checkpointing"])
    assert not table.loc[("single", 1, False), "fits"]  # GPT-2 medium, 16 × 1024 tokens, on one 24 GB GPU
    assert table.loc[("single", 1, True), "fits"]  # with activation checkpointing it does
    gb = table["GB per process"]
    assert gb[("fsdp", 8, False)] < gb[("fsdp", 2, False)] < gb[("ddp", 2, False)]
    assert gb[("ddp", 8, False)] == gb[("ddp", 2, False)]  # DDP keeps a whole copy in every process


def test_memory_growth_grows_with_width_and_falls_with_processes():
    growth = memory_growth(GPTConfig(), TrainConfig(), n_embd=[64, 128, 256], processes=[1, 2, 4])
    one = growth[(growth["setting"] == "n_embd") & (growth["way"] == "one process")]["total"].tolist()
    assert one == sorted(one) and one[0] < one[-1]
    fsdp = growth[(growth["setting"] == "processes") & (growth["way"] == "FSDP")]["parameters"].tolist()
    assert fsdp[0] == pytest.approx(2 * fsdp[1]) == pytest.approx(4 * fsdp[2])
