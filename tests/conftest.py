"""Shared fixtures: tiny models and token streams that train in well under a second."""

import socket

import numpy as np
import pytest
import torch

from lmkit import GPT, GPTConfig, TrainConfig
from lmkit.data import TokenDataset

TINY_MODEL = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1, pos_encoding="learned")
TINY_TRAIN = dict(max_steps=12, batch_size=4, warmup_steps=2, eval_interval=4, eval_batches=2,
                  log_interval=1, learning_rate=3e-3, progress=False, device="cpu")


@pytest.fixture
def token_data():
    return make_token_data()


def make_token_data():
    """A learnable stream: a repeating pattern with a little noise, split 90/10."""
    rng = np.random.default_rng(0)
    stream = np.tile(np.arange(11, dtype=np.uint16), 400)
    noise = rng.random(stream.size) < 0.05
    stream[noise] = rng.integers(0, 11, noise.sum())
    cut = int(0.9 * stream.size)
    return TokenDataset(stream[:cut], 8), TokenDataset(stream[cut:], 8)


def make_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**TINY_MODEL, **overrides}))


def make_config(**overrides) -> TrainConfig:
    return TrainConfig(**{**TINY_TRAIN, **overrides})


@pytest.fixture
def no_network(monkeypatch):
    """Refuses and records every outgoing connection (a caller may swallow the error)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted in a test: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert not attempts, f"network access attempted: {attempts}"
