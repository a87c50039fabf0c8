"""Whole-split evaluation: every token scored once, and the numbers equal a hand computation;
generation scores against sacrebleu's command line; nested character noise and robustness curves;
calibration against a hand computation and scikit-learn."""

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lmkit import CharTokenizer
from lmkit.evaluate import (
    add_char_noise,
    bits_per_char,
    calibration,
    calibration_bins,
    continuations,
    generation_scores,
    lm_loss,
    next_token_confidence,
    noise_frame,
    robustness_curve,
    sliding_windows,
)

from .conftest import make_model

TOK = CharTokenizer("abcdefghij ")  # 11 characters: the vocabulary of the tiny model


@pytest.mark.parametrize("n, T, stride", [(100, 8, None), (100, 8, 3), (9, 8, None), (57, 8, 8), (30, 8, 1)])
def test_sliding_windows_score_every_token_exactly_once(n, T, stride):
    counts = np.zeros(n, int)
    for start, first in sliding_windows(n, T, stride):
        assert start + 1 <= first <= start + T and start + T < n
        counts[first:start + T + 1] += 1
    assert counts[0] == 0 and (counts[1:] == 1).all()


def test_stride_longer_than_window_is_refused():
    with pytest.raises(ValueError, match="stride=9"):
        sliding_windows(100, 8, 9)


def test_lm_loss_equals_hand_computation():
    model = make_model(dropout=0.0).eval()
    tokens = np.random.default_rng(0).integers(0, 11, 30)
    result = lm_loss(model, tokens, stride=None, batch_size=2, n_chars=60)
    # by hand: windows [0, 8), [8, 16), [16, 24), then [21, 29) scoring only its last 5 targets
    total, count = 0.0, 0
    for start, skip in ((0, 0), (8, 0), (16, 0), (21, 3)):
        x = torch.tensor(tokens[start:start + 8])[None]
        y = torch.tensor(tokens[start + 1:start + 9])
        logp = F.log_softmax(model(x).logits[0], -1)
        total -= logp[torch.arange(8), y][skip:].sum().item()
        count += 8 - skip
    assert count == 29 == result["tokens"]
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result["bits_per_char"] == pytest.approx(total / count / math.log(2) / 2, rel=1e-5)  # 2 chars/token


# ------------------------------------------------------------------------------ bits per character

def test_bits_per_char_converts_nats_per_token_by_hand():
    # 3 ln 2 nats per token = 3 bits per token; 10 tokens for 20 characters: 1.5 bits per character
    assert bits_per_char(3 * math.log(2), tokens=10, chars=20) == pytest.approx(1.5)
    assert bits_per_char(math.log(2), tokens=5, chars=5) == pytest.approx(1.0)  # char-level: bpc = bits/token
    with pytest.raises(ValueError, match="chars=0"):
        bits_per_char(1.0, 10, 0)
    with pytest.raises(ValueError, match="loss=-1"):
        bits_per_char(-1.0, 10, 10)


def test_lm_loss_without_n_chars_counts_one_char_per_token():
    tokens = np.random.default_rng(1).integers(0, 11, 20)
    result = lm_loss(make_model(dropout=0.0), tokens)
    assert result["bits_per_char"] == pytest.approx(result["bits_per_token"]) == pytest.approx(
        result["loss"] / math.log(2))


# ------------------------------------------------------------------------------ generation

PREDICTIONS = ["the cat sat on a mat", "to be or not to be , that is a question", "my kingdom for a horse"]
REFERENCES = ["the cat sat on the mat", "to be , or not to be : that is the question", "a horse , my kingdom"]


def sacrebleu_cli(metric, tmp_path):
    (tmp_path / "hyp.txt").write_text("\n".join(PREDICTIONS) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(REFERENCES) + "\n")
    exe = Path(sys.executable).with_name("sacrebleu")
    out = subprocess.run([str(exe), str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"), "-m", metric,
                          "-b", "-w", "4"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def test_generation_bleu_and_chrf_agree_with_the_sacrebleu_command_line(tmp_path):
    scores = generation_scores(PREDICTIONS, REFERENCES)
    assert round(scores["bleu"], 2) == round(sacrebleu_cli("bleu", tmp_path), 2)
    assert round(scores["chrf"], 2) == round(sacrebleu_cli("chrf", tmp_path), 2)
    assert 0 < scores["bleu"] < scores["chrf"] < 100 and "tok:13a" in scores["bleu_signature"]
    perfect = generation_scores(REFERENCES, REFERENCES)
    assert perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    with pytest.raises(ValueError, match="3 predictions and 2 references"):
        generation_scores(PREDICTIONS, REFERENCES[:2])
    with pytest.raises(TypeError, match="not one str"):
        generation_scores("a prediction", "a reference")


def greedy_by_hand(model, ids, n):
    ids = list(ids)
    for _ in range(n):
        logits = model(torch.tensor([ids[-model.config.block_size:]])).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids[-n:]


def test_continuations_split_passages_and_continue_the_prompt_greedily():
    model = make_model(dropout=0.0).eval()
    texts = ["abcdefghij abcdefghij", "jihgfedcba jihgfedcba XYZ"]
    table = continuations(model, TOK, texts, prompt_chars=12, new_chars=6, top_k=1)
    assert list(table.columns) == ["prompt", "reference", "prediction"]
    assert table["prompt"].tolist() == ["abcdefghij a", "jihgfedcba j"]
    assert table["reference"].tolist() == ["bcdefg", "ihgfed"]
    for prompt, prediction in zip(table["prompt"], table["prediction"], strict=True):
        assert prediction == TOK.decode(greedy_by_hand(model, TOK.encode(prompt), 6))


def test_continuations_are_seeded_and_drop_unknown_prompt_characters(caplog):
    model = make_model(dropout=0.0)
    texts = ["abc?? defgh!ij abcdefghij"] * 3
    with caplog.at_level(logging.INFO, logger="lmkit.evaluate"):
        first = continuations(model, TOK, texts, prompt_chars=12, new_chars=8, seed=3)
    assert "dropped 3 prompt character(s)" in caplog.text and "?" in caplog.text
    assert first.equals(continuations(model, TOK, texts, prompt_chars=12, new_chars=8, seed=3))
    assert not first.equals(continuations(model, TOK, texts, prompt_chars=12, new_chars=8, seed=4))
    assert first["prediction"].str.len().tolist() == [8, 8, 8] and model.training  # mode restored
    with pytest.raises(ValueError, match=r"passages \[0\] have \[25\] characters.*prompt_chars \+ new_chars = 30"):
        continuations(model, TOK, texts[:1], prompt_chars=20, new_chars=10)


# ------------------------------------------------------------------------------ robustness

def corrupted_positions(text, noisy, alphabet):
    """Positions of ``text`` (all characters distinct) that are missing from ``noisy`` or replaced by a
    character of ``alphabet`` (disjoint from text)."""
    kept = set(noisy) - set(alphabet)
    return {i for i, c in enumerate(text) if c not in kept}


DISTINCT = "".join(chr(0x4E00 + i) for i in range(400))  # 400 different characters


def test_char_noise_is_seeded_and_rate_zero_is_the_identity():
    text = "the quick brown fox jumps over the lazy dog"
    assert add_char_noise(text, 0.0, seed=1) == text and add_char_noise(DISTINCT, 0.0, seed=1) == DISTINCT
    assert add_char_noise(text, 0.3, seed=1) == add_char_noise(text, 0.3, seed=1) != text
    assert add_char_noise(text, 0.3, seed=1) != add_char_noise(text, 0.3, seed=2)
    assert set(add_char_noise(text, 1.0, seed=1)) <= set(text)  # default alphabet: the text's own characters
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="must be a probability in"):
            add_char_noise(text, bad, seed=0)
    assert set(add_char_noise("a" * 400, 1.0, seed=0, alphabet="ab")) == {"b"}  # a substitute always differs
    with pytest.raises(ValueError, match="1 distinct character"):
        add_char_noise("aaaa", 0.5, seed=0)


def test_char_noise_is_nested_in_the_rate_half_deletions_half_substitutions():
    alphabet = "xyz"
    previous = set()
    for rate in (0.0, 0.05, 0.1, 0.3, 0.6, 1.0):
        noisy = add_char_noise(DISTINCT, rate, seed=7, alphabet=alphabet)
        positions = corrupted_positions(DISTINCT, noisy, alphabet)
        assert previous <= positions  # a higher rate corrupts a superset of the positions
        assert abs(len(positions) - rate * len(DISTINCT)) <= 4 * math.sqrt(len(DISTINCT) * 0.25) + 1
        previous = positions
    substituted = sum(c in alphabet for c in noisy)  # at rate 1 every character is deleted or substituted
    assert len(positions) == len(DISTINCT) and 150 < substituted < 250 and len(noisy) == substituted


def test_noise_frame_gives_each_passage_its_own_noise():
    frame = pd.DataFrame({"text": [DISTINCT] * 3, "label": ["a", "b", "a"]})
    noisy = noise_frame(frame, 0.2, seed=0)
    assert noisy["label"].tolist() == ["a", "b", "a"] and frame["text"].tolist() == [DISTINCT] * 3  # a copy
    assert len(set(noisy["text"])) == 3 and DISTINCT not in set(noisy["text"])  # noised, and independently
    assert noise_frame(frame, 0.0)["text"].tolist() == frame["text"].tolist()
    with pytest.raises(ValueError, match="columns 'text' and 'label'"):
        noise_frame(frame.drop(columns="label"), 0.1)


def passages(n=8, length=24, seed=0):
    """Class "low" passages use letters a-e, class "high" letters f-j (and spaces)."""
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list("abcde " if k == 0 else "fghij "), length)) for k in (0, 1) for _ in range(n)]
    return pd.DataFrame({"text": texts, "label": ["low"] * n + ["high"] * n})


def test_robustness_curve_scores_the_noised_passages_once_per_rate():
    from lmkit.finetune import ClassificationData, GPTClassifier, evaluate_classifier

    classifier = GPTClassifier(make_model(dropout=0.0), 2, labels=["low", "high"]).eval()
    frame = passages()
    curve = robustness_curve(classifier, TOK, frame, [0.0, 0.2, 0.5], seed=1, batch_size=5)
    assert list(curve.columns) == ["rate", "accuracy", "macro_f1"] and curve["rate"].tolist() == [0.0, 0.2, 0.5]
    for rate, row in zip((0.0, 0.2, 0.5), curve.itertuples(), strict=True):
        noised = frame if rate == 0 else noise_frame(frame, rate, seed=1)
        expected = evaluate_classifier(classifier, ClassificationData.from_frame(noised, TOK, 24, ["low", "high"]))
        assert (row.accuracy, row.macro_f1) == pytest.approx((expected["accuracy"], expected["macro_f1"]))
    probabilities = [evaluate_classifier(classifier, ClassificationData.from_frame(
        noise_frame(frame, r, seed=1), TOK, 24, ["low", "high"]))["probabilities"] for r in (0.0, 0.5)]
    assert not np.allclose(*probabilities)  # the noise reaches the classifier
    with pytest.raises(ValueError, match="must be a probability in"):
        robustness_curve(classifier, TOK, frame, [0.0, 2.0])
    with pytest.raises(TypeError, match="list of noise rates"):
        robustness_curve(classifier, TOK, frame, 0.1)


# ------------------------------------------------------------------------------ calibration

def test_ece_equals_a_hand_computation_on_a_fixed_example():
    confidence = [0.2, 0.3, 0.5, 0.6, 0.7, 0.9, 1.0]
    correct = [False, True, False, True, True, True, True]
    result = calibration_bins(confidence, correct, n_bins=4)
    bins = result["bins"]
    # bins (lower, upper]: [0, .25]: 0.2 | (.25, .5]: 0.3, 0.5 | (.5, .75]: 0.6, 0.7 | (.75, 1]: 0.9, 1.0
    assert bins["count"].tolist() == [1, 2, 2, 2]
    np.testing.assert_allclose(bins["confidence"], [0.2, 0.4, 0.65, 0.95])
    np.testing.assert_allclose(bins["accuracy"], [0.0, 0.5, 1.0, 1.0])
    # ECE = (1·|0 − .2| + 2·|.5 − .4| + 2·|1 − .65| + 2·|1 − .95|) / 7
    assert result["ece"] == pytest.approx(1.2 / 7)
    assert result["accuracy"] == pytest.approx(5 / 7) and result["mean_confidence"] == pytest.approx(4.2 / 7)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        calibration_bins([0.5, 1.5], [True, False])
    with pytest.raises(ValueError, match="n_bins=0"):
        calibration_bins(confidence, correct, n_bins=0)


def test_calibration_reads_the_models_own_probabilities_and_agrees_with_sklearn():
    from sklearn.calibration import calibration_curve

    model = make_model(dropout=0.0)
    tokens = np.tile(np.arange(11), 4)  # 44 tokens: windows from 0, 8, ..., 32, then 35 for its last 3 targets
    model.train()
    confidence, correct = next_token_confidence(model, tokens)
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        probs = torch.cat([F.softmax(model(torch.tensor(tokens[s:s + 8])[None]).logits[0], -1)[skip:]
                           for s, skip in ((0, 0), (8, 0), (16, 0), (24, 0), (32, 0), (35, 5))])  # (43, V) by hand
    targets = torch.tensor(tokens[1:])
    np.testing.assert_allclose(confidence, probs.max(-1).values.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(correct, (probs.argmax(-1) == targets).numpy())

    result = calibration(model, tokens, n_bins=10)
    assert result["tokens"] == 43 and result["accuracy"] == pytest.approx(correct.mean())
    occupied = result["bins"][result["bins"]["count"] > 0]
    stretched = np.concatenate([confidence, [0.95, 0.99]])  # sklearn needs both classes in y_true
    hits = np.concatenate([correct, [True, False]])
    prob_true, prob_pred = calibration_curve(hits, stretched, n_bins=10, strategy="uniform")
    mine = calibration_bins(stretched, hits, n_bins=10)["bins"]
    mine = mine[mine["count"] > 0]
    np.testing.assert_allclose(mine["accuracy"], prob_true)
    np.testing.assert_allclose(mine["confidence"], prob_pred)
    assert len(occupied) >= 1 and calibration(model, tokens, max_tokens=20)["tokens"] == 19
    with pytest.raises(ValueError, match="max_tokens=1"):
        calibration(model, tokens, max_tokens=1)


def test_evaluate_checkpoint_scores_the_whole_validation_split_and_refuses_a_foreign_tokenizer(tmp_path):
    from lmkit import GPT, CharTokenizer, GPTConfig
    from lmkit import checkpoint as ckpt
    from lmkit.data import load_prepared, prepare_dataset
    from lmkit.evaluate import evaluate_checkpoint, lm_loss

    rng = np.random.default_rng(0)
    docs = ["".join(rng.choice(list("abcdefgh "), 300)) for _ in range(10)]
    meta = prepare_dataset(docs, tmp_path / "data", val_fraction=0.2)
    _, val, tok, _ = load_prepared(tmp_path / "data", 8)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))
    ckpt.save(tmp_path / "run" / "checkpoints" / "step_000007", model, tok, step=7)
    result = evaluate_checkpoint(tmp_path / "run", tmp_path / "data", stride=4)
    expected = lm_loss(model.eval(), val.data, stride=4, n_chars=meta["val_chars"])
    assert result["loss"] == pytest.approx(expected["loss"]) and result["tokens"] == meta["val_tokens"] - 1
    assert result["bits_per_char"] == pytest.approx(expected["bits_per_char"])
    assert (result["step"], result["tokenizer"], result["parameters"]) == (7, "char", model.num_params())
    assert evaluate_checkpoint(tmp_path / "run", tmp_path / "data", max_tokens=50)["tokens"] == 49
    other = CharTokenizer("abcdefgh xyz")
    ckpt.save(tmp_path / "other" / "checkpoints" / "step_000001",
              GPT(GPTConfig(vocab_size=other.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)), other)
    with pytest.raises(ValueError, match="different char tokenizer"):
        evaluate_checkpoint(tmp_path / "other", tmp_path / "data")
    with pytest.raises(ValueError, match="no prepared data"):
        evaluate_checkpoint(tmp_path / "run", tmp_path / "nowhere")


def test_evaluate_checkpoint_hashes_the_checkpoint_once(tmp_path, monkeypatch):
    from lmkit import GPT, GPTConfig
    from lmkit import checkpoint as ckpt
    from lmkit.data import load_prepared, prepare_dataset
    from lmkit.evaluate import evaluate_checkpoint

    prepare_dataset(["abcdefgh " * 40] * 6, tmp_path / "data", val_fraction=0.2)
    _, _, tok, _ = load_prepared(tmp_path / "data", 8)
    path = ckpt.save(tmp_path / "run" / "checkpoints" / "step_000002",
                     GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)), tok)
    verified = []
    real_verify = ckpt.verify
    monkeypatch.setattr(ckpt, "verify", lambda p: (verified.append(p), real_verify(p))[1])
    assert evaluate_checkpoint(tmp_path / "run", tmp_path / "data", max_tokens=20)["tokens"] == 19
    assert verified == [path]


def test_evaluate_runs_puts_every_run_on_one_table_and_names_the_ones_it_skips(tmp_path):
    from lmkit import GPT, CharTokenizer, GPTConfig, runs
    from lmkit import checkpoint as ckpt
    from lmkit.data import load_prepared, prepare_dataset
    from lmkit.evaluate import evaluate_checkpoint, evaluate_runs

    rng = np.random.default_rng(0)
    prepare_dataset(["".join(rng.choice(list("abcdefgh "), 300)) for _ in range(10)], tmp_path / "data",
                    val_fraction=0.2)
    _, _, tok, _ = load_prepared(tmp_path / "data", 8)
    root = tmp_path / "runs"
    made = []
    for name, width, tokenizer in (("narrow", 8, tok), ("wide", 16, tok), ("foreign", 8, CharTokenizer("xyz"))):
        run = runs.new_run(root, name, {"kind": "pretrain", "model": {"n_layer": 1, "n_embd": width, "block_size": 8,
                                                                       "pos_encoding": "rope"},
                                        "train": {"learning_rate": 1e-3}})
        torch.manual_seed(len(made))
        ckpt.save(run / "checkpoints" / "step_000003", GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8,
                                                                      n_layer=1, n_head=2, n_embd=width)), tokenizer)
        made.append(run)
    bpc = {run: evaluate_checkpoint(run, tmp_path / "data", max_tokens=60)["bits_per_char"] for run in made[:2]}
    worst_first = sorted(made[:2], key=bpc.get, reverse=True) + made[2:]
    table, skipped = evaluate_runs(worst_first, tmp_path / "data", root=root, max_tokens=60)
    foreign = made[2].relative_to(root).as_posix()
    assert list(skipped) == [foreign] and "different char tokenizer" in skipped[foreign]
    assert table["run"].tolist() == [r.relative_to(root).as_posix() for r in worst_first[1::-1]]  # best first
    for _, row in table.iterrows():
        run = root / row["run"]
        assert row["bits_per_char"] == pytest.approx(bpc[run])
        assert (row["n_embd"], row["block_size"], row["pos_encoding"], row["learning_rate"]) == (
            runs.read_config(run)["model"]["n_embd"], 8, "rope", 1e-3)
    empty, none_skipped = evaluate_runs([], tmp_path / "data")
    assert empty.empty and none_skipped == {}


# ------------------------------------------------------------------------------------- streaming

def test_stream_text_gives_the_sample_sample_texts_gives_one_piece_at_a_time():
    from lmkit.evaluate import sample_texts, stream_text

    model = make_model(dropout=0.0)
    pieces = list(stream_text(model, TOK, "abc", seed=3, max_new_tokens=12, top_k=5))
    assert pieces[0] == "abc" and len(pieces) == 13  # the prompt, then one piece per token
    assert "".join(pieces) == sample_texts(model, TOK, "abc", n=1, seed=3, max_new_tokens=12, top_k=5)[0]
    assert model.training  # left as it was found


def test_stream_text_never_cuts_a_multibyte_character():
    from lmkit import GPT, BPETokenizer, GPTConfig
    from lmkit.evaluate import sample_texts, stream_text

    tok = BPETokenizer.train(["naïve café — ünïcödé ✓ " * 20], vocab_size=270)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16, dropout=0.0))
    pieces = list(stream_text(model, tok, "é", seed=1, max_new_tokens=40))
    # an untrained model samples bytes at random: a lone continuation byte decodes as U+FFFD, but a
    # piece never ends inside a character whose bytes are still coming
    assert "".join(pieces) == sample_texts(model, tok, "é", n=1, seed=1, max_new_tokens=40)[0]


def test_spread_passages_takes_even_steps_through_the_joined_texts():
    from lmkit.evaluate import spread_passages

    texts = ["abcdefghij", "klmnopqrst"]  # joined: 22 characters with the blank line
    joined = "abcdefghij\n\nklmnopqrst"
    assert spread_passages(texts, 3, 4) == [joined[0:4], joined[6:10], joined[12:16]]
    assert spread_passages(["abc"], 2, 10) == ["abc", "bc"]  # shorter than a passage: what there is
    with pytest.raises(ValueError, match="n=0"):
        spread_passages(texts, 0, 4)
    with pytest.raises(TypeError, match="not one str"):
        spread_passages("abc", 1, 2)
