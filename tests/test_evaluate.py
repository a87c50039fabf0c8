"""Whole-split evaluation: every token scored once, and the numbers equal a hand computation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmkit.evaluate import lm_loss, sliding_windows

from .conftest import make_model


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
