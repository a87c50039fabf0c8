"""lmkit.harness: an lmkit GPT answers lm-evaluation-harness requests with its own log-probabilities."""

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from lmkit import CharTokenizer, checkpoint  # noqa: E402
from lmkit.evaluate import lm_loss  # noqa: E402
from lmkit.harness import LmkitLM, build_last_word_task, results_frame, run_harness, task_names  # noqa: E402

from .conftest import make_model  # noqa: E402

CHARS = "abcdefghi \n"  # 11 characters = TINY_MODEL's vocab_size; block_size is 8


@pytest.fixture
def lm():
    return LmkitLM(model=make_model(), tokenizer=CharTokenizer(CHARS), batch_size=16, device="cpu")


def requests(kind, *args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def token_logprobs(model, ids):
    """log p(ids[i] | ids[:i]) for i >= 1, from one forward pass of the (<= block_size + 1) ids."""
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids[:-1]])).logits[0]  # (T, V)
    return F.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]  # (T,)


def test_loglikelihood_is_the_models_own_token_logprobs(lm):
    tok, T = lm.tokenizer, lm.block_size
    short = ("abc", " de")
    long = ("abcdefghi abcdefghi", " ab")  # 19 context tokens > block_size: keeps the last ones
    got = [lp for lp, _ in lm.loglikelihood(requests("loglikelihood", short, long))]

    ids = tok.encode("abc de")
    assert got[0] == pytest.approx(float(token_logprobs(lm.model, ids)[-3:].sum()), abs=1e-5)
    ids = tok.encode("abcdefghi abcdefghi ab")[-(T + 1):]  # the last block_size + 1 tokens
    assert got[1] == pytest.approx(float(token_logprobs(lm.model, ids)[-3:].sum()), abs=1e-5)


def test_loglikelihood_does_not_depend_on_batching(lm):
    """Requests of different lengths share a padded batch; padding must not change any score."""
    args = [("abcdefghi abcdefghi", " ab"), ("a", "b"), ("", "abc"), ("hig", "h ab\nc")]
    batched = lm.loglikelihood(requests("loglikelihood", *args))
    lm.batch_size = 1
    single = lm.loglikelihood(requests("loglikelihood", *args))
    assert [lp for lp, _ in batched] == pytest.approx([lp for lp, _ in single], abs=1e-5)
    assert [g for _, g in batched] == [g for _, g in single]


def test_empty_context_is_conditioned_on_a_newline(lm):
    (got, _), = lm.loglikelihood(requests("loglikelihood", ("", "abc")))
    ids = lm.tokenizer.encode("\nabc")
    assert got == pytest.approx(float(token_logprobs(lm.model, ids).sum()), abs=1e-5)


def test_is_greedy_is_true_exactly_when_every_token_is_the_argmax(lm):
    tok, context = lm.tokenizer, "abcab"  # with the continuation, within one block: the context generate sees
    ids = tok.encode(context)
    for _ in range(3):  # the greedy continuation, by hand
        with torch.no_grad():
            ids.append(int(lm.model(torch.tensor([ids[-lm.block_size:]])).logits[0, -1].argmax()))
    greedy = tok.decode(ids[len(context):])
    other = greedy[:-1] + next(c for c in CHARS if c != greedy[-1])  # last token not the argmax
    (_, yes), (_, no) = lm.loglikelihood(requests("loglikelihood", (context, greedy), (context, other)))
    assert yes is True and no is False


def test_loglikelihood_rolling_is_the_sum_over_windows(lm):
    tok, model = lm.tokenizer, lm.model
    short, long = "abc de", "abcdefghi hgfedcba\nabc def ghi"  # 6 and 30 tokens; block_size is 8
    got_short, got_long = lm.loglikelihood_rolling(requests("loglikelihood_rolling", (short,), (long,)))

    assert got_short == pytest.approx(float(token_logprobs(model, tok.encode("\n" + short)).sum()), abs=1e-5)
    ids = tok.encode("\n" + long)
    ref = lm_loss(model, ids)  # lmkit's own windows (lmkit.evaluate.sliding_windows, stride = block_size)
    assert ref["tokens"] == len(long)
    assert got_long == pytest.approx(-ref["loss"] * ref["tokens"], abs=1e-4)
    by_hand = sum(float(token_logprobs(model, ids[max(0, i - lm.block_size):i + 1])[-1]) for i in range(1, len(ids)))
    assert got_long != pytest.approx(by_hand, abs=1e-3)  # disjoint windows: less context than stride 1
    lm.stride = 1  # every token sees the block_size tokens before it
    assert lm.loglikelihood_rolling(requests("loglikelihood_rolling", (long,)))[0] == pytest.approx(by_hand, abs=1e-4)


def test_generate_until_stops_at_the_first_until_string(lm):
    greedy, = lm.generate_until(requests("generate_until", ("abc", {"until": [], "max_gen_toks": 20})))
    assert len(greedy) == 20  # one character per token, no stop string
    stop = greedy[3]
    cut, = lm.generate_until(requests("generate_until", ("abc", {"until": [stop], "max_gen_toks": 20})))
    assert cut == greedy[:greedy.index(stop)]
    five, = lm.generate_until(requests("generate_until", ("abc", {"until": "\n\n\n", "max_gen_toks": 5})))
    assert five == greedy[:5]


def test_generate_until_keeps_the_last_block_size_tokens_of_a_long_context(lm):
    long = "ghi abcdefghi abc"  # 17 tokens > block_size = 8
    got, = lm.generate_until(requests("generate_until", (long, {"until": [], "max_gen_toks": 4, "do_sample": False})))
    ids = torch.tensor([lm.tokenizer.encode(long[-lm.block_size:])])
    assert got == lm.tokenizer.decode(lm.model.generate(ids, 4, top_k=1)[0, lm.block_size:].tolist())


def test_a_character_outside_the_vocabulary_is_an_error_naming_it(lm):
    with pytest.raises(ValueError, match=r"request 0.*'z'"):
        lm.loglikelihood(requests("loglikelihood", ("abz", " a")))


# ------------------------------------------------------------------------------------ the local task

def plays(n_docs=4, words=400, seed=0):
    """Held-out "plays" over CHARS plus punctuation the char tokenizer lacks."""
    rng = random.Random(seed)
    vocab = ["abc", "bad", "cafe", "hide", "gig", "ache", "bead", "if", "head", "fig"]
    docs = []
    for _ in range(n_docs):
        text = " ".join(rng.choice(vocab) + ("\n" if rng.random() < 0.1 else "") for _ in range(words))
        docs.append(text.replace("\n ", "\n"))
    return docs


def test_build_last_word_task_cuts_passages_from_the_texts(tmp_path):
    docs = plays() + ["x" * 300 + " hide. and MORE words; here"]  # a document outside the charset
    out = build_last_word_task(docs, tmp_path, n=50, seed=1, min_context_chars=40, charset=CHARS)
    examples = [json.loads(line) for line in (out / "shakespeare_last_word.jsonl").read_text().splitlines()]
    assert len(examples) == 50
    for e in examples:
        assert any(e["context"] + " " + e["target"] in d for d in docs)
        assert len(e["context"]) >= 40 and len(e["target"]) >= 3 and set(e["context"] + e["target"]) <= set(CHARS)
    again = build_last_word_task(docs, tmp_path / "again", n=50, seed=1, min_context_chars=40, charset=CHARS)
    assert (again / "shakespeare_last_word.jsonl").read_text() == (out / "shakespeare_last_word.jsonl").read_text()
    assert task_names(out) == ["shakespeare_last_word", "shakespeare_last_word_gen"]
    with pytest.raises(ValueError, match="charset"):
        build_last_word_task(docs[-1:], tmp_path / "none", min_context_chars=40, charset=CHARS)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    return checkpoint.save(tmp_path / "ckpt", make_model(), CharTokenizer(CHARS))


@pytest.mark.slow
def test_the_harness_runs_the_local_task_end_to_end_offline(tmp_path, tiny_checkpoint, no_network):
    task_dir = build_last_word_task(plays(), tmp_path / "task", n=20, min_context_chars=40, charset=CHARS)
    lm = LmkitLM(checkpoint=tiny_checkpoint, batch_size=8)
    results = run_harness(lm, task_dir)
    table = results_frame(results).set_index(["task", "metric"])["value"]
    assert 0.0 <= table["shakespeare_last_word", "acc"] <= 1.0
    # a word of >= 3 characters under an untrained 11-way model: perplexity per word ~ 11 ** 4
    assert table["shakespeare_last_word", "perplexity"] > 1.0
    assert 0.0 <= table["shakespeare_last_word_gen", "exact_match"] <= 1.0
    assert results["n-samples"]["shakespeare_last_word"]["effective"] == 20


def test_simple_evaluate_builds_the_model_from_a_checkpoint_path(tmp_path, tiny_checkpoint, no_network):
    task_dir = build_last_word_task(plays(1, 60), tmp_path / "task", n=3, min_context_chars=20, charset=CHARS)
    from lm_eval.tasks import TaskManager

    from lmkit.harness import _offline

    with _offline():
        results = lm_eval.simple_evaluate(
            model="lmkit", model_args=f"checkpoint={tiny_checkpoint},batch_size=4", tasks=["shakespeare_last_word"],
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), bootstrap_iters=0)
    assert math.isfinite(results["results"]["shakespeare_last_word"]["perplexity,none"])
