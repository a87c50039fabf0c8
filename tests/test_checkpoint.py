"""Checkpoints: round trip, self-description, atomic writes, manifest verification, no unpickling."""

import json
import random

import numpy as np
import pytest
import torch

from lmkit import GPT, CharTokenizer
from lmkit import checkpoint as ckpt

from .conftest import make_model


def saved(tmp_path, name="step_000001", **kwargs):
    model = make_model().eval()
    tok = CharTokenizer.train("abcdefghijk")
    return model, tok, ckpt.save(tmp_path / "checkpoints" / name, model, tok, **kwargs)


def test_load_takes_the_info_read_info_returned_without_verifying_again(tmp_path, monkeypatch):
    """Callers that read a checkpoint's info first (evaluate_checkpoint, fine_tuned_classifiers) hash
    its files once, not once for read_info and again for load."""
    model, tok, path = saved(tmp_path, step=5)
    verified = []
    real_verify = ckpt.verify
    monkeypatch.setattr(ckpt, "verify", lambda p: (verified.append(p), real_verify(p))[1])
    info = ckpt.read_info(tmp_path)  # a run folder: its newest intact checkpoint
    loaded, loaded_tok = ckpt.load(info)
    assert verified == [path]
    x = torch.randint(0, 11, (2, 8))
    assert torch.equal(loaded(x).logits, model(x).logits) and loaded_tok.encode("abc") == tok.encode("abc")
    with pytest.raises(ValueError, match="not a classifier"):
        ckpt.load_classifier(info)  # the info's task is checked as the path's would be
    ckpt.load(path)
    assert verified == [path, path]  # given a path, load verifies it


def test_round_trip_gives_identical_logits_and_tokenizer(tmp_path):
    model, tok, path = saved(tmp_path, step=7, train_config={"max_steps": 9})
    loaded, loaded_tok = ckpt.load(path)
    x = torch.randint(0, 11, (2, 8))
    assert torch.equal(loaded(x).logits, model(x).logits)
    assert loaded.config == model.config
    assert loaded_tok.encode("kjihgfedcba") == tok.encode("kjihgfedcba")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # tying survives the round trip
    info = ckpt.read_info(path)
    assert info.step == 7 and info.train_config == {"max_steps": 9}


def test_checkpoint_holds_only_json_and_safetensors(tmp_path):
    *_, path = saved(tmp_path, trainer_state=({"rng.x": torch.zeros(3)}, {"step": 1}), metrics=[{"step": 1}])
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "manifest.json", "metrics.json", "model.safetensors", "tokenizer.json",
                     "trainer_state.json", "trainer_state.safetensors"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}


def test_run_folder_resolves_to_newest_valid_checkpoint(tmp_path):
    saved(tmp_path, "step_000001")
    saved(tmp_path, "step_000002")
    assert ckpt.resolve(tmp_path).name == "step_000002"
    (tmp_path / "checkpoints" / "step_000002" / "manifest.json").unlink()  # as if the save never finished
    assert ckpt.resolve(tmp_path).name == "step_000001"


def test_missing_path_and_empty_run_are_clear_errors(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint"):
        ckpt.load(tmp_path / "nope")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoints"):
        ckpt.load(tmp_path / "run")


def test_optimizer_state_round_trip():
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randint(0, 11, (2, 8)), torch.randint(0, 11, (2, 8))).loss.backward()
    opt.step()
    tensors, meta = ckpt.flatten_optimizer_state(opt.state_dict())
    json.dumps(meta)
    restored = ckpt.unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    opt2 = torch.optim.AdamW(make_model().parameters(), lr=5.0)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.95) and opt2.param_groups[0]["lr"] == 1e-3
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=False):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_rng_capture_restore():
    tensors, meta = ckpt.capture_rng()
    meta = json.loads(json.dumps(meta))
    first = (torch.rand(3), np.random.rand(), random.random())
    ckpt.restore_rng(tensors, meta)
    second = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_unwrap_compiled_and_ddp_like_wrappers():
    model = make_model()

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    class Compiled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

    assert ckpt.unwrap(Wrapper(model)) is model
    assert ckpt.unwrap(Wrapper(Compiled(model))) is model  # DDP(torch.compile(model))
    assert isinstance(ckpt.unwrap(model), GPT)
