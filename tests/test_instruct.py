"""Instruction fine-tuning: answer-only masking, truncation, vocabulary growth, generation, end to end."""

import pytest
import torch
import torch.nn.functional as F

from lmkit import GPT, BPETokenizer, CharTokenizer, GPTConfig, TrainConfig, Trainer
from lmkit.instruct import (
    PROMPT_TEMPLATE,
    InstructionData,
    answer_loss,
    extend_vocabulary,
    format_answer,
    format_prompt,
    generate_calls,
)

PAIRS = [  # (instruction, call): ten synthetic tasks a tiny model can memorise
    ("Return the square root of x.", "math.sqrt(x)"), ("Join path parts.", "os.path.join(a, *p)"),
    ("Serialize obj to JSON.", "json.dumps(obj)"), ("Return the cosine of x.", "math.cos(x)"),
    ("Split a string like a shell.", "shlex.split(s)"), ("Escape HTML characters.", "html.escape(s)"),
    ("Pick a random element.", "random.choice(seq)"), ("Wait for some seconds.", "time.sleep(seconds)"),
    ("Deep copy an object.", "copy.deepcopy(x)"), ("Compute a CRC-32 checksum.", "zlib.crc32(data)"),
]
PROMPTS = [format_prompt(i) for i, _ in PAIRS]
ANSWERS = [format_answer(c) for _, c in PAIRS]


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on a busy 2-core machine the threads'
    barriers make each training step ~50x slower (7 ms vs ~400 ms measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.train(PROMPTS + ANSWERS)


def tiny_gpt(vocab_size, **overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(vocab_size=vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=32),
                            **overrides}))


def test_prompt_template_and_answer_end():
    assert PROMPT_TEMPLATE == "Instruction: {instruction}\nCall: "
    assert format_prompt("Return  the square\nroot of x.") == "Instruction: Return the square root of x.\nCall: "
    assert format_answer("math.sqrt(x)") == "math.sqrt(x)\n"


def test_targets_are_ignored_exactly_on_prompt_and_padding():
    tok = CharTokenizer.train("abcxyz:\n")
    data = InstructionData(["ab:", "abcab:"], ["x\n", "yz\n"], tok, block_size=16, pad_id=0)
    x, y = data.collate([0, 1])
    ids = tok.encode
    # example 0: "ab:x\n" -> x = "ab:x", y = "b:x\n" with the prompt targets "b", ":" ignored; padded to 8
    assert x[0].tolist() == ids("ab:x") + [0] * 4
    assert y[0].tolist() == [-100, -100] + ids("x\n") + [-100] * 4
    # example 1: "abcab:yz\n" -> the 5 prompt targets ignored, the 3 answer targets kept
    assert x[1].tolist() == ids("abcab:yz")
    assert y[1].tolist() == [-100] * 5 + ids("yz\n")
    assert data.answer_tokens == 5 and len(data) == 2 and data.truncated == 0


@torch.no_grad()
def test_loss_counts_answer_tokens_only(tok):
    data = InstructionData(PROMPTS, ANSWERS, tok, block_size=64)
    model = tiny_gpt(tok.vocab_size).eval()
    x, y = data.collate(range(len(data)))
    logp = F.log_softmax(model(x).logits.double(), dim=-1)  # (B, T, V)
    nll = []
    for b, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS, strict=True)):
        seq = tok.encode(prompt + answer)
        for t in range(len(prompt) - 1, len(seq) - 1):  # positions whose target is an answer token
            nll.append(-logp[b, t, seq[t + 1]])
    hand = torch.stack(nll).mean()
    assert len(nll) == sum(len(a) for a in ANSWERS) == data.answer_tokens
    assert float(model(x, y).loss) == pytest.approx(float(hand), rel=1e-5)
    assert answer_loss(model, data, batch_size=3) == pytest.approx(float(hand), rel=1e-5)


def test_loss_does_not_depend_on_prompt_predictions(tok):
    data = InstructionData(PROMPTS[:4], ANSWERS[:4], tok, block_size=64)
    x, y = data.collate(range(4))
    logits = tiny_gpt(tok.vocab_size)(x).logits.detach()  # (B, T, V)

    def loss(lg):
        return F.cross_entropy(lg.view(-1, lg.size(-1)), y.view(-1), ignore_index=-100)

    prompt_pos = torch.zeros_like(y, dtype=torch.bool)
    for b in range(4):
        prompt_pos[b, : len(PROMPTS[b]) - 1] = True
    noise = torch.randn_like(logits) * 5
    assert float(loss(logits + noise * prompt_pos[..., None])) == pytest.approx(float(loss(logits)), abs=1e-6)
    answer_pos = (y != -100)
    assert float(loss(logits + noise * answer_pos[..., None])) != pytest.approx(float(loss(logits)), abs=1e-3)


def test_long_prompts_are_cut_from_the_left_and_answers_kept():
    tok = CharTokenizer.train("abcdefghij:xyz\n")
    data = InstructionData(["abcdefghij:", "ab:"], ["xyz\n", "x\n"], tok, block_size=8)
    x, y = data.collate([0])
    # 11 + 4 = 15 tokens; a row holds block_size + 1 = 9, so the prompt keeps its last 5: "ghij:"
    assert tok.decode(x[0].tolist()) == "ghij:xyz"
    assert y[0].tolist() == [-100] * 4 + tok.encode("xyz\n")
    assert x.shape == (1, 8) and data.truncated == 1
    with pytest.raises(ValueError, match="block_size=3"):
        InstructionData(["ab:"], ["xyz\n"], tok, block_size=3)
    assert InstructionData(["ab:"], ["xyz\n"], tok, block_size=4).example(0)[0].tolist() == tok.encode(":xyz")


def test_batches_are_seeded_and_iteration_covers_every_example_in_order(tok):
    data = InstructionData(PROMPTS, ANSWERS, tok, block_size=64)
    a = data.batch(6, torch.Generator().manual_seed(3))
    b = data.batch(6, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape[0] == 6
    rows = [x for x, _ in data.iter_batches(batch_size=4)]
    assert [len(r) for r in rows] == [4, 4, 2]
    for i, x in enumerate(r for batch in rows for r in batch):
        assert tok.decode(x[: len(PROMPTS[i]) + len(ANSWERS[i]) - 1].tolist()) == (PROMPTS[i] + ANSWERS[i])[:-1]


@pytest.mark.parametrize("tie", [True, False])
def test_extend_vocabulary_keeps_old_logits_and_adds_characters(tie):
    old_tok = CharTokenizer.train("abc xyz().\n")
    model = tiny_gpt(old_tok.vocab_size, tie_weights=tie)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new_model, new_tok = extend_vocabulary(model, old_tok, ["a = b + c", "x <= y ~ #"])
    assert new_tok.chars[: old_tok.vocab_size] == old_tok.chars
    assert new_tok.chars[old_tok.vocab_size:] == sorted("#+<=~")
    assert new_model.config.vocab_size == new_tok.vocab_size == old_tok.vocab_size + 5
    assert (new_model.lm_head.weight is new_model.transformer.wte.weight) == tie
    ids = torch.tensor([old_tok.encode("abc (xyz).\nab")])
    old_logits, new_logits = model(ids).logits, new_model(ids).logits
    torch.testing.assert_close(new_logits[..., : old_tok.vocab_size], old_logits, rtol=0, atol=1e-6)  # fp rounding
    assert new_logits.shape[-1] == new_tok.vocab_size
    new_rows = new_model.transformer.wte.weight.detach()[old_tok.vocab_size:]
    assert 0.005 < float(new_rows.std()) < 0.05  # GPT's init, normal(0, 0.02)
    assert new_tok.encode("a = b") and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="CharTokenizer"):
        extend_vocabulary(model, BPETokenizer.train(["abc abc"], vocab_size=260), ["x"])


def test_generate_calls_batches_like_one_by_one(tok):
    model = tiny_gpt(tok.vocab_size, block_size=48)
    with torch.no_grad():  # large random weights: every output depends on its whole context
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    instructions = [i for i, _ in PAIRS] + ["Return the cosine of x."]
    one = generate_calls(model, tok, instructions, batch_size=1, max_new_tokens=20)
    many = generate_calls(model, tok, instructions, batch_size=32, max_new_tokens=20)
    assert one == many and len(one) == len(instructions) and len(set(one)) >= 5
    assert one[3] == one[-1]  # the same instruction, wherever it stands
    assert all(len(c) <= 20 and "\n" not in c for c in one)
    sampled = generate_calls(model, tok, instructions[:3], greedy=False, temperature=1.5, seed=1, max_new_tokens=8)
    assert sampled == generate_calls(model, tok, instructions[:3], greedy=False, temperature=1.5, seed=1,
                                     max_new_tokens=8)
    with pytest.raises(ValueError, match="extend_vocabulary"):
        generate_calls(model, tok, ["Return x ~ y."])


def test_generate_calls_stops_at_the_newline(tok):
    assert tok.encode("\n") == [0]
    model = tiny_gpt(tok.vocab_size, tie_weights=False)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: greedy picks id 0, the newline, at once
    assert generate_calls(model, tok, [i for i, _ in PAIRS[:3]], max_new_tokens=64) == ["", "", ""]


def test_trainer_learns_to_write_the_calls():
    """End to end: Trainer on the answer-masked data, then greedy generation repeats every call."""
    tok = CharTokenizer.train(PROMPTS + ANSWERS)
    data = InstructionData.from_pairs({"instruction": [i for i, _ in PAIRS], "call": [c for _, c in PAIRS]},
                                      tok, block_size=64)
    model = tiny_gpt(tok.vocab_size)
    start = answer_loss(model, data)
    cfg = TrainConfig(max_steps=100, batch_size=16, warmup_steps=10, learning_rate=1e-2, eval_interval=100,
                      eval_batches=2, progress=False, device="cpu")
    history = Trainer(model, cfg, data, data, tokenizer=tok).train()
    assert history["val_loss"].dropna().iloc[-1] < 0.3 < start
    assert generate_calls(model, tok, [i for i, _ in PAIRS]) == [c for _, c in PAIRS]
