"""The GPT model: shapes, parameter counts, masking, attention maths, caching and GPT-2 parity."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmkit import GPT, GPTConfig
from lmkit.model import causal_mask, sample_next

TINY = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, pos_encoding="learned")
VARIANTS = [
    dict(pos_encoding=pe, norm_first=nf) for pe in ("learned", "sinusoidal", "rope") for nf in (True, False)
] + [dict(attn_window=4), dict(tie_weights=False, bias=False)]


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **overrides})).eval()


def ids(B=2, T=16, V=37, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_output_shapes(variant):
    m = tiny(**variant)
    out = m(ids(), ids(seed=2), output_attentions=True)
    assert out.logits.shape == (2, 16, 37)
    assert out.loss.shape == ()
    assert len(out.attentions) == 2
    assert all(a.shape == (2, 2, 16, 16) for a in out.attentions)


def test_param_count_by_hand():
    V, T, C, L = 37, 16, 16, 2
    per_layer = (2 * C) + (3 * C * C + 3 * C) + (C * C + C) + (2 * C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    tied = V * C + T * C + L * per_layer + 2 * C  # wte, wpe, blocks, ln_f; lm_head shares wte
    m = tiny()
    assert m.num_params(non_embedding=False) == tied
    assert m.num_params() == tied - T * C
    assert tiny(tie_weights=False).num_params(non_embedding=False) == tied + V * C
    no_bias = V * C + T * C + L * (2 * C + 12 * C * C) + C  # LayerNorms keep only their weights
    assert tiny(bias=False).num_params(non_embedding=False) == no_bias
    assert tiny(pos_encoding="rope").num_params(non_embedding=False) == tied - T * C  # no learned positions


def test_flops_per_token_formula():
    m = tiny()
    c = m.config
    assert m.flops_per_token() == 6 * m.num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * c.block_size


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope"])
def test_initial_loss_is_about_ln_vocab(pos_encoding):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=200, block_size=32, n_layer=2, n_head=2, n_embd=32, pos_encoding=pos_encoding))
    m.eval()
    x, y = ids(8, 32, 200, seed=3), ids(8, 32, 200, seed=4)
    assert m(x, y).loss.item() == pytest.approx(math.log(200), abs=0.1)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_causal_changing_future_token_leaves_past_logits(variant):
    m = tiny(**variant)
    x = ids()
    x2 = x.clone()
    t = 9
    x2[:, t + 1] = (x2[:, t + 1] + 1) % 37
    a, b = m(x).logits, m(x2).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_fused_and_explicit_attention_give_same_logits(variant):
    m = tiny(**variant)
    x = ids()
    torch.testing.assert_close(m(x).logits, m(x, output_attentions=True).logits, atol=1e-5, rtol=1e-5)


def test_attention_rows_sum_to_one_and_match_independent_softmax():
    m = tiny()
    x = ids()
    out = m(x, output_attentions=True)
    for a in out.attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 16))
    # recompute layer 0 from its own weights: softmax(Q K^T / sqrt(d_k) + causal mask)
    block = m.transformer.h[0]
    h = m.transformer.wte(x) + m.transformer.wpe(torch.arange(16))
    q, k, _ = block.attn.c_attn(block.ln_1(h)).split(16, dim=2)
    q = q.view(2, 16, 2, 8).transpose(1, 2)
    k = k.view(2, 16, 2, 8).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores + torch.triu(torch.full((16, 16), float("-inf")), diagonal=1)
    torch.testing.assert_close(out.attentions[0], torch.softmax(scores, -1))


def test_sliding_window_attention_sees_only_window():
    m = tiny(attn_window=4)
    att = m(ids(), output_attentions=True).attentions[0]
    mask = causal_mask(16, 16, 4)
    assert (att[..., ~mask] == 0).all()
    assert (att[..., mask] > 0).all()
    assert mask.sum(-1).tolist() == [1, 2, 3] + [4] * 13


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_kv_cache_greedy_equals_uncached(variant):
    m = tiny(**variant)
    prompt = ids(2, 5)
    cached = m.generate(prompt, 30, top_k=1, use_cache=True)  # runs past block_size=16: window slides
    plain = m.generate(prompt, 30, top_k=1, use_cache=False)
    assert cached.shape == (2, 35)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_generation_stops_each_row_at_its_stop_id_with_and_without_cache(variant):
    m = tiny(**variant)
    prompt = ids(3, 5)
    free = m.generate(prompt, 30, top_k=1)[:, 5:]  # what each row writes with no stop
    stop = int(free[0, 3])  # row 0 writes it by its 4th token; the others may later or never
    cached = m.generate(prompt, 30, top_k=1, use_cache=True, stop_ids=[stop])
    plain = m.generate(prompt, 30, top_k=1, use_cache=False, stop_ids=[stop])
    assert torch.equal(cached, plain)
    new = cached[:, 5:]
    firsts = [int((row == stop).nonzero()[0]) if (row == stop).any() else None for row in free]
    assert firsts[0] is not None and firsts[0] <= 3
    expected_length = 30 if None in firsts else max(firsts) + 1  # ends once every row has stopped
    assert new.shape == (3, expected_length)
    for row, first in enumerate(firsts):
        end = expected_length if first is None else first + 1
        assert torch.equal(new[row, :end], free[row, :end])  # the same tokens up to and with the stop
        assert (new[row, end:] == stop).all()  # then padding with the stop id
    streamed = torch.cat(list(m.stream(prompt, 30, top_k=1, stop_ids=[stop])), dim=1)
    assert torch.equal(streamed, new)


@pytest.mark.parametrize("stop_ids", [[], [37], [-1], "\n", [1.5]])
def test_generate_rejects_bad_stop_ids(stop_ids):
    with pytest.raises(ValueError, match="stop_ids"):
        tiny().generate(ids(1, 4), 3, stop_ids=stop_ids)


def test_kv_cache_logits_equal_full_forward():
    m = tiny(pos_encoding="rope")
    x = ids(1, 12)
    full = m(x).logits
    out = m(x[:, :8], use_cache=True)
    steps = [out.logits]
    past = out.past_key_values
    for t in range(8, 12):
        out = m(x[:, t:t + 1], past_key_values=past, use_cache=True)
        past = out.past_key_values
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_long_prompt_is_cropped_with_warning():
    m = tiny()
    with pytest.warns(UserWarning, match="longer than block_size=16"):
        out = m.generate(ids(1, 20), 3)
    assert out.shape == (1, 23)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2, temperature=0.0), "temperature"),
    (dict(max_new_tokens=2, top_p=0.0), "top_p"),
    (dict(max_new_tokens=2, top_p=1.5), "top_p"),
    (dict(max_new_tokens=2, top_k=0), "top_k"),
])
def test_generate_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny().generate(ids(1, 4), **kwargs)


def test_generate_rejects_ids_outside_vocab():
    with pytest.raises(ValueError, match=r"\[0, 37\)"):
        tiny().generate(torch.tensor([[1, 99]]), 2)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    draws = {int(sample_next(logits, top_p=0.6, generator=g)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 < 0.6, so the second token is needed; the third is not
    draws = {int(sample_next(logits, top_p=0.45, generator=g)) for _ in range(50)}
    assert draws == {0}
    assert int(sample_next(logits, top_k=1)) == 0


@pytest.mark.parametrize("bad, message", [
    (dict(n_embd=100, n_head=3), "n_embd=100 is not divisible by n_head=3"),
    (dict(block_size=0), "block_size"),
    (dict(pos_encoding="alibi"), "pos_encoding"),
    (dict(dropout=1.0), "dropout"),
    (dict(attn_window=0), "attn_window"),
    (dict(n_layer=2.5), "n_layer"),
])
def test_config_validation_names_the_value(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **bad})


def test_config_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="n_layers"):
        GPTConfig.from_dict({**TINY, "n_layers": 3})
    assert GPTConfig.from_dict(GPTConfig(**TINY).to_dict()) == GPTConfig(**TINY)


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{**TINY, "n_embd": 32}))
    x, y = ids(4, 16, seed=5), ids(4, 16, seed=6)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(300):
        loss = m(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_ignore_index_masks_targets():
    m = tiny()
    x, y = ids(), ids(seed=2)
    y_masked = y.clone()
    y_masked[:, :8] = -100
    expected = F.cross_entropy(m(x).logits[:, 8:].reshape(-1, 37), y[:, 8:].reshape(-1))
    torch.testing.assert_close(m(x, y_masked).loss, expected)


def test_hugging_face_gpt2_import_matches_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=101, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                      bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    ours = GPT.from_hf_gpt2(hf).eval()
    x = ids(2, 32, 101)
    torch.testing.assert_close(ours(x).logits, hf(x).logits, atol=1e-5, rtol=1e-5)
    hf.set_attn_implementation("eager")  # the default sdpa path returns no attention maps
    for a, b in zip(ours(x, output_attentions=True).attentions, hf(x, output_attentions=True).attentions, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", [{}, dict(tie_weights=False), dict(pos_encoding="rope")], ids=str)
def test_parameter_counts_add_up(variant):
    m = tiny(**variant)
    counts = m.parameter_counts()
    assert sum(counts.values()) == m.num_params(non_embedding=False)
    assert counts["h.0.attn"] == 16 * 48 + 48 + 16 * 16 + 16
