"""lmkit.export: an lmkit checkpoint opens in transformers, TransformerLens and lm-eval's hf backend, and
computes the same thing there; TensorBoardCallback writes the trainer's scalars."""

import json
import math
import os

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel  # noqa: E402

from lmkit import GPT, BPETokenizer, CharTokenizer, Trainer, checkpoint, runs  # noqa: E402
from lmkit.attention import capture  # noqa: E402
from lmkit.callbacks import TensorBoardCallback  # noqa: E402
from lmkit.cli import main  # noqa: E402
from lmkit.export import to_hf  # noqa: E402

from .conftest import make_config, make_model  # noqa: E402

CHARS = "abcdefghi \n"  # 11 characters = the tiny model's vocab_size
TEXT = "a bad cafe\n  hid a fig\n\nif ache, head bead. " * 3  # a rare character each: ',' '.' are not in CHARS


def perturbed(**overrides) -> GPT:
    """A tiny model with weights moved away from GPT-2's initialisation (zero biases would hide a mix-up)."""
    model = make_model(dropout=0.0, **overrides)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


IDS = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(2))  # (B, T = block_size)


@pytest.mark.parametrize("pos_encoding, architecture", [("learned", "GPT2LMHeadModel"),
                                                        ("sinusoidal", "GPT2LMHeadModel"),
                                                        ("rope", "GPTNeoXForCausalLM")])
@pytest.mark.parametrize("tie_weights", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_exported_logits_equal_lmkits(tmp_path, no_network, pos_encoding, architecture, tie_weights, bias):
    model = perturbed(pos_encoding=pos_encoding, tie_weights=tie_weights, bias=bias)
    result = to_hf(model, tmp_path / "hf", CharTokenizer(CHARS))
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(hf).__name__ == result.model_class == architecture
    assert torch.allclose(logits_of(hf, IDS), logits_of(model, IDS), atol=1e-5, rtol=0)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def trained_run(tmp_path, token_data, **model_overrides):
    """A run trained as the README does (Trainer with a run_dir), TensorBoard attached."""
    train, val = token_data
    run = runs.new_run(tmp_path / "runs", "tiny")
    model = make_model(dropout=0.0, **model_overrides)
    trainer = Trainer(model, make_config(max_steps=16), train, val, tokenizer=CharTokenizer(CHARS), run_dir=run,
                      callbacks=[TensorBoardCallback()])
    trainer.train()
    return run, trainer


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_a_trained_run_exported_by_the_cli_generates_the_same_tokens(tmp_path, token_data, capsys, no_network,
                                                                    pos_encoding):
    run, trainer = trained_run(tmp_path, token_data, pos_encoding=pos_encoding)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    assert "transformers' logits equal lmkit's" in capsys.readouterr().out
    model, tok = checkpoint.load(run)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert torch.allclose(logits_of(hf, IDS), logits_of(model, IDS), atol=1e-5, rtol=0)
    prompt = torch.tensor([tok.encode("ab c")])
    ours = model.generate(prompt, max_new_tokens=4, top_k=1)  # greedy, to the end of the 8-token context
    theirs = hf.generate(prompt, max_new_tokens=4, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert theirs.tolist() == ours.tolist()


def test_the_exported_char_tokenizer_encodes_and_decodes_as_lmkits(tmp_path):
    tok = CharTokenizer.train(TEXT + "é—\t\r")
    to_hf(perturbed(vocab_size=tok.vocab_size), tmp_path / "hf", tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "\n\n  a, é—\tbad\r\n. "
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    with pytest.raises(Exception, match="UNK"):  # a character outside the vocabulary is refused, as by lmkit
        hf_tok("z")


def test_the_exported_bpe_tokenizer_encodes_as_lmkits(tmp_path):
    tok = BPETokenizer.train([TEXT * 20], vocab_size=300)
    to_hf(perturbed(vocab_size=tok.vocab_size), tmp_path / "hf", tok)
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "hf", local_files_only=True)
    text = "a  bad\n\ncafe, naïve 東京 <|endoftext|> head"  # bytes it never saw, and the end-of-text token
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    assert hf_tok.eos_token_id == tok.eot_id
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == tok.eot_id


def test_an_exported_gpt2_imports_back_to_identical_weights(tmp_path):
    model = perturbed()
    to_hf(model, tmp_path / "hf")
    back = GPT.from_hf_gpt2(GPT2LMHeadModel.from_pretrained(tmp_path / "hf", local_files_only=True))
    assert back.config.to_dict() == {**model.config.to_dict(), "dropout": 0.0}
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("overrides, named", [(dict(norm_first=False), "norm_first"),
                                              (dict(attn_window=3), "attn_window")])
def test_an_option_the_architecture_lacks_is_refused_by_name_before_writing(tmp_path, capsys, overrides, named):
    ckpt = checkpoint.save(tmp_path / "ckpt", make_model(**overrides), CharTokenizer(CHARS))
    assert main(["export", str(ckpt), str(tmp_path / "hf")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_a_non_empty_folder_is_replaced_only_when_asked(tmp_path, capsys):
    ckpt = checkpoint.save(tmp_path / "ckpt", make_model(), CharTokenizer(CHARS))
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["export", str(ckpt), str(out)]) == 2
    assert "--force" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert main(["export", str(ckpt), str(out), "--force"]) == 0
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size is 11"):
        to_hf(make_model(), tmp_path / "hf", CharTokenizer("abc"))


@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_transformer_lens_sees_the_same_attention_patterns(tmp_path, no_network, pos_encoding):
    pytest.importorskip("transformer_lens")
    from transformer_lens.model_bridge import TransformerBridge

    model, tok = perturbed(pos_encoding=pos_encoding), CharTokenizer(CHARS)
    to_hf(model, tmp_path / "hf", tok)
    bridge = TransformerBridge.boot_transformers(str(tmp_path / "hf"), device="cpu")  # the README's recipe
    bridge.enable_compatibility_mode()
    text = "ab cd\nfi"
    _, cache = bridge.run_with_cache(torch.tensor([tok.encode(text)]))
    ours, _ = capture(model, text, tok)
    for layer in range(model.config.n_layer):
        assert torch.allclose(cache["pattern", layer], ours[layer], atol=1e-5, rtol=0)


def test_lm_evals_own_hf_backend_scores_the_export_as_lmkitlm_does(tmp_path, token_data, no_network):
    pytest.importorskip("lm_eval")
    from lmkit.harness import LmkitLM, build_last_word_task, hf_model_args, results_frame, run_harness

    from .test_harness import plays


    run, _ = trained_run(tmp_path, token_data)
    to_hf(run, tmp_path / "hf")
    task_dir = build_last_word_task(plays(), tmp_path / "task", n=12, min_context_chars=30, charset=CHARS)
    ours = results_frame(run_harness(LmkitLM(checkpoint=run, batch_size=4), task_dir, tasks=["shakespeare_last_word"]))
    theirs = results_frame(run_harness("hf", task_dir, tasks=["shakespeare_last_word"],
                                       model_args=hf_model_args(tmp_path / "hf", dtype="float32")))
    ours, theirs = (t.set_index("metric")["value"] for t in (ours, theirs))
    assert theirs["acc"] == ours["acc"]
    assert math.isclose(theirs["perplexity"], ours["perplexity"], rel_tol=1e-4)


def test_tensorboard_holds_the_trainers_scalars(tmp_path, token_data):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, trainer = trained_run(tmp_path, token_data)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert {"loss/train", "loss/val", "loss/train_eval", "lr", "grad_norm", "tokens_per_sec"} <= set(
        events.Tags()["scalars"])
    steps = [r for r in trainer.history if "train_loss" in r]
    logged = {e.step: e.value for e in events.Scalars("loss/train")}
    assert logged.keys() == {r["step"] for r in steps}
    assert all(math.isclose(logged[r["step"]], r["train_loss"], rel_tol=1e-6) for r in steps)
    val = {e.step: e.value for e in events.Scalars("loss/val")}
    assert val == pytest.approx({r["step"]: r["val_loss"] for r in trainer.history if "val_loss" in r}, rel=1e-6)


def test_tensorboard_needs_a_folder(token_data):
    train, val = token_data
    trainer = Trainer(make_model(), make_config(max_steps=1), train, val, callbacks=[TensorBoardCallback()])
    with pytest.raises(ValueError, match="run_dir"):
        trainer.train()


def test_train_tensorboard_flag_writes_event_files(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    text = tmp_path / "corpus.txt"
    text.write_text(("a bad cafe hid a fig\nif ache head bead\n" * 200), encoding="utf-8")
    assert main(["data", "--source", str(text), "--out", str(tmp_path / "prepared")]) == 0
    assert main(["train", "--data", str(tmp_path / "prepared"), "--runs-root", str(tmp_path / "runs"),
                 "--max-steps", "3", "--eval-interval", "3", "--eval-batches", "1", "--batch-size", "2",
                 "--block-size", "16", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--samples", "0",
                 "--device", "cpu", "--tensorboard"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_the_export_is_readable_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        to_hf(make_model(), tmp_path / "hf", CharTokenizer(CHARS))
    finally:
        os.umask(old)
    assert (tmp_path / "hf").stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()} == {
        p.name: 0o644 for p in (tmp_path / "hf").iterdir()}  # the weights too, not only their owner
