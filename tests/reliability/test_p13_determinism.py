"""13. The same seed twice gives identical losses and weight hashes on CPU; a different seed differs."""

import hashlib

from lmkit import Trainer

from ..conftest import make_config, make_model


def run(train, val, seed):
    trainer = Trainer(make_model(), make_config(seed=seed), train, val)
    losses = trainer.train()["train_loss"].dropna().tolist()
    h = hashlib.sha256()
    for p in trainer.model.parameters():
        h.update(p.detach().numpy().tobytes())
    return losses, h.hexdigest()


def test_same_seed_same_run_different_seed_different_run(token_data):
    train, val = token_data
    a, b, c = run(train, val, 1), run(train, val, 1), run(train, val, 2)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1]
