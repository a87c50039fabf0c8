"""Instruction fine-tuning: prompt template, answer-only loss masking, vocabulary growth, generation.

A pair (instruction, answer) becomes one token sequence ``prompt + answer``:

    Instruction: Return the square root of x.\\n
    Call: math.sqrt(x)\\n
    └────────── prompt ──────────┘└─ answer ─┘

and the model learns to continue the prompt with the answer. As in instruction tuning since
InstructGPT (Ouyang et al. 2022) and Gorilla (Patil et al. 2023), the loss counts only the answer's
tokens: targets on prompt positions are ``-100``, which ``GPT.forward``'s cross-entropy ignores, so
the model is not trained to write instructions, only to answer them. The answer ends in a newline,
which is how generation knows the call is complete.

Shapes: B = batch size, T = tokens per row (the longest row of the batch, at most block_size),
V = vocabulary size.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .model import GPT
from .params import is_int
from .tokenizer import CharTokenizer

log = logging.getLogger(__name__)

PROMPT_TEMPLATE = "Instruction: {instruction}\nCall: "
# Retrieval-aware training (Gorilla): the API's documentation comes first, then the instruction.
RAT_PREFIX = "Use this API documentation for reference: "
ANSWER_END = "\n"  # ends every answer; generation stops at it
IGNORE_INDEX = -100  # the target value GPT.forward's cross-entropy skips


def format_prompt(instruction: str, document: str | None = None) -> str:
    """The prompt the model sees for one instruction (``PROMPT_TEMPLATE`` filled in); with a
    ``document``, Gorilla's retrieval-aware prompt: ``RAT_PREFIX + document``, a newline, then the
    plain prompt."""
    prompt = PROMPT_TEMPLATE.format(instruction=" ".join(str(instruction).split()))
    return prompt if document is None else f"{RAT_PREFIX}{document}\n{prompt}"


def format_answer(call: str) -> str:
    """The text the model learns to write after the prompt: the call, then ``ANSWER_END``."""
    return f"{call}{ANSWER_END}"


class InstructionData:
    """(prompt, answer) pairs as training batches with the loss on answer tokens only.

    Each example is ``prompt + answer`` as token ids; ``x`` is the sequence without its last token,
    ``y`` the sequence without its first (the next-token targets), with ``-100`` wherever the target
    is still part of the prompt, so only answer tokens are counted. An example longer than
    ``block_size + 1`` tokens loses the *start of its prompt*, never the answer; an answer longer
    than ``block_size`` tokens is refused (ValueError), since no context would be left to predict it.

    ``keep``: per example, how many characters at the end of its prompt the cut must leave whole
    (a retrieval-aware prompt keeps its instruction: only the document before it may lose its start);
    an example that cannot fit its answer and those characters is refused (ValueError).

    ``batch(batch_size, generator, device)`` samples rows with replacement (what ``Trainer`` calls);
    ``iter_batches(batch_size, device)`` walks all rows in order (for evaluation). Rows of a batch
    are right-padded to its longest row: ``x`` with ``pad_id``, ``y`` with ``-100``.
    """

    def __init__(self, prompts: Sequence[str], answers: Sequence[str], tokenizer, block_size: int,
                 pad_id: int = 0, keep: Sequence[int] | None = None):
        prompts, answers = list(prompts), list(answers)
        keep = [0] * len(prompts) if keep is None else list(keep)
        if len(prompts) != len(answers) or len(keep) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts, {len(answers)} answers and {len(keep)} keep lengths; "
                             "pass one answer (and keep length) per prompt")
        if not prompts:
            raise ValueError("InstructionData needs at least one (prompt, answer) pair")
        if not is_int(block_size, 1):
            raise ValueError(f"block_size={block_size!r} must be a positive integer")
        if not is_int(pad_id, 0, tokenizer.vocab_size - 1):
            raise ValueError(f"pad_id={pad_id!r} must be a token id in [0, {tokenizer.vocab_size})")
        self.block_size, self.pad_id = block_size, pad_id
        self.sequences: list[np.ndarray] = []  # prompt + answer ids, prompt cut from the left if needed
        self.prompt_lengths: list[int] = []
        self.truncated = 0  # examples whose prompt lost its start
        for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
            p, a = tokenizer.encode(prompt), tokenizer.encode(answer)
            if not p or not a:
                raise ValueError(f"example {i}: prompt and answer must both be non-empty, got {prompt!r}, {answer!r}")
            if len(a) > block_size:
                raise ValueError(f"example {i}: the answer has {len(a)} tokens, more than block_size={block_size}; "
                                 f"drop such pairs (e.g. build_pairs(max_call_chars=...)) or use a longer context")
            room = block_size + 1 - len(a)  # >= 1 prompt token, so the first answer token has context
            kept = len(tokenizer.encode(prompt[len(prompt) - keep[i]:])) if keep[i] else 0
            if kept > room:
                raise ValueError(
                    f"example {i}: its answer ({len(a)} tokens) and the last {keep[i]} characters of its prompt "
                    f"({kept} tokens, its instruction) need {len(a) + kept - 1} tokens, more than "
                    f"block_size={block_size}; grow the context (grow_context) or leave such pairs out")
            if len(p) > room:
                p = p[-room:]
                self.truncated += 1
            self.sequences.append(np.asarray(p + a, dtype=np.int64))
            self.prompt_lengths.append(len(p))
        if self.truncated:
            log.info("%d of %d prompts were cut from the left to fit block_size=%d",
                     self.truncated, len(self), block_size)

    @classmethod
    def from_pairs(cls, df, tokenizer, block_size: int, pad_id: int = 0,
                   documents: Sequence[str] | None = None) -> InstructionData:
        """From a DataFrame with ``instruction`` and ``call`` columns (``lmkit.apicalls.build_pairs``).

        ``documents`` (one per row, e.g. the oracle document of each API, ``lmkit.retrieval``) makes
        the prompts retrieval-aware (``format_prompt(instruction, document)``); a prompt too long for
        the context then loses the start of its document, never its instruction or its answer.
        """
        instructions = list(df["instruction"])
        answers = [format_answer(c) for c in df["call"]]
        if documents is None:
            return cls([format_prompt(s) for s in instructions], answers, tokenizer, block_size, pad_id)
        documents = list(documents)
        if len(documents) != len(instructions):
            raise ValueError(f"got {len(documents)} documents for {len(instructions)} pairs; pass one per pair")
        prompts = [format_prompt(s, d) for s, d in zip(instructions, documents, strict=True)]
        keep = [len(format_prompt(s)) for s in instructions]
        return cls(prompts, answers, tokenizer, block_size, pad_id, keep)

    def __len__(self) -> int:
        return len(self.sequences)

    def __repr__(self) -> str:
        return (f"InstructionData(examples={len(self)}, answer_tokens={self.answer_tokens}, "
                f"block_size={self.block_size}, truncated={self.truncated})")

    @property
    def answer_tokens(self) -> int:
        """How many target tokens the loss counts over all examples."""
        return sum(len(s) - n for s, n in zip(self.sequences, self.prompt_lengths, strict=True))

    def example(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of example ``i``, unpadded, each (L - 1,) for a sequence of L tokens."""
        seq = torch.from_numpy(self.sequences[i])
        x, y = seq[:-1].clone(), seq[1:].clone()
        y[: self.prompt_lengths[i] - 1] = IGNORE_INDEX  # targets that are prompt tokens
        return x, y

    def collate(self, indices: Sequence[int], device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` as (x, y), each (B, T), right-padded to the longest one."""
        pairs = [self.example(int(i)) for i in indices]
        T = max(len(x) for x, _ in pairs)
        x = torch.full((len(pairs), T), self.pad_id, dtype=torch.long)
        y = torch.full((len(pairs), T), IGNORE_INDEX, dtype=torch.long)
        for row, (xi, yi) in enumerate(pairs):
            x[row, : len(xi)], y[row, : len(yi)] = xi, yi
        return x.to(device), y.to(device)

    def batch(self, batch_size: int, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` examples drawn with replacement using ``generator`` (a CPU torch.Generator)."""
        if not is_int(batch_size, 1):
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
        rows = torch.randint(len(self), (batch_size,), generator=generator)
        return self.collate(rows.tolist(), device)

    def iter_batches(self, batch_size: int = 64, device: str | torch.device = "cpu"
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once, in order, ``batch_size`` at a time."""
        for start in range(0, len(self), batch_size):
            yield self.collate(range(start, min(start + batch_size, len(self))), device)


@torch.no_grad()
def answer_loss(model: GPT, data: InstructionData, batch_size: int = 64) -> float:
    """Mean cross-entropy per answer token over every example of ``data`` (nats)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in data.iter_batches(batch_size, device):
        logits = model(x).logits.float()  # (B, T, V)
        total += float(F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1),
                                       ignore_index=IGNORE_INDEX, reduction="sum"))
        count += int((y != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count


def extend_vocabulary(model: GPT, tokenizer: CharTokenizer, texts) -> tuple[GPT, CharTokenizer]:
    """A copy of ``(model, tokenizer)`` that also knows every character of ``texts``.

    A character model pretrained on Shakespeare has never seen ``#``, ``=``, ``<``, ``+`` or ``~``,
    which docstrings and calls contain. The new tokenizer appends the missing characters (sorted)
    after the old ones, so every old id keeps its meaning; the new model has ``vocab_size`` grown to
    match, all weights copied, and new embedding rows (and, when untied, new ``lm_head`` rows)
    initialised as ``GPT`` initialises them (normal, std 0.02). For inputs made of old tokens, the
    old tokens' logits are the old model's (up to float rounding of the wider ``lm_head`` matmul,
    ~1e-7); the new tokens get logits of their own.
    The inputs are not changed. ``texts``: a string or an iterable of strings.
    """
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"extend_vocabulary grows a CharTokenizer, got {type(tokenizer).__name__}; a byte-level "
                        "BPE tokenizer already encodes any text")
    texts = [texts] if isinstance(texts, str) else list(texts)
    missing = sorted(set().union(*map(set, texts)) - set(tokenizer.chars)) if texts else []
    new_tok = CharTokenizer(list(tokenizer.chars) + missing)
    old_V = model.config.vocab_size
    if old_V != tokenizer.vocab_size:
        raise ValueError(f"model.config.vocab_size={old_V} differs from tokenizer.vocab_size={tokenizer.vocab_size}; "
                         "pass the tokenizer the model was trained with")
    device = next(model.parameters()).device
    new_model = GPT(dataclasses.replace(model.config, vocab_size=new_tok.vocab_size)).to(device)
    state = new_model.state_dict()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if state[name].shape == tensor.shape:
                state[name].copy_(tensor)
            else:  # wte / lm_head: (V, C), old rows kept, new rows keep GPT's init
                state[name][:old_V].copy_(tensor)
    new_model.load_state_dict(state)
    new_model.train(model.training)
    if missing:
        log.info("added %d characters to the vocabulary: %r", len(missing), "".join(missing))
    return new_model, new_tok


def grow_context(model: GPT, block_size: int) -> GPT:
    """A copy of ``model`` whose context holds ``block_size`` tokens, every weight the same.

    Rotary and sinusoidal position encodings are functions of the position, not weights: the copy
    computes them for the longer context, so the positions the model was trained on mean exactly
    what they meant (outputs on short inputs are unchanged) and the new ones follow the same
    formula — the model still has to learn to use them, which fine-tuning on longer prompts does.
    Learned position embeddings (GPT-2's ``wpe``) have one trained row per position and nothing
    for the new ones: refused. A shorter ``block_size`` is refused too (it would drop nothing but
    could surprise); the input is not changed.
    """
    if not is_int(block_size, 1):
        raise ValueError(f"block_size={block_size!r} must be a positive integer")
    if block_size < model.config.block_size:
        raise ValueError(f"grow_context only grows: block_size={block_size} is below the model's "
                         f"{model.config.block_size}; crop prompts instead")
    if model.config.pos_encoding == "learned":
        raise ValueError("this model learns one position embedding per position (pos_encoding='learned'), so "
                         f"positions past {model.config.block_size} have none; grow_context needs 'rope' or "
                         "'sinusoidal' (or crop the prompts to the model's context)")
    device = next(model.parameters()).device
    grown = GPT(dataclasses.replace(model.config, block_size=block_size)).to(device)
    grown.load_state_dict(model.state_dict())
    grown.train(model.training)
    return grown


@torch.no_grad()
def generate_calls(model: GPT, tokenizer, instructions: Sequence[str], *, documents: Sequence[str | None] | None = None,
                   max_new_tokens: int = 64, batch_size: int = 32, greedy: bool = True, temperature: float = 1.0,
                   top_k: int | None = None, seed: int = 0, progress: bool = False) -> list[str]:
    """The model's answer to each instruction: generated text up to (not including) the first newline.

    Prompts are ``format_prompt(instruction, document)``, with ``documents[i]`` when given (None: the
    plain prompt); ``GPT.generate`` writes the continuation, greedily (``top_k=1``) when ``greedy``,
    else sampled with ``temperature`` and ``top_k`` (seeded by ``seed``), and stops each row at its
    first newline (``stop_ids``), or after ``max_new_tokens``. Prompts of equal token length are
    generated together, up to ``batch_size`` at a time (no padding is needed, so greedy results equal
    one-by-one generation). A prompt longer than the context keeps its last ``block_size`` tokens,
    as in training. ``progress`` shows a tqdm bar.
    """
    instructions = list(instructions)
    documents = [None] * len(instructions) if documents is None else list(documents)
    if len(documents) != len(instructions):
        raise ValueError(f"got {len(documents)} documents for {len(instructions)} instructions; pass one per "
                         "instruction (None for none)")
    newline = tokenizer.encode(ANSWER_END)
    if len(newline) != 1:
        raise ValueError(f"the tokenizer must encode {ANSWER_END!r} as one token, got {newline}")
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if not is_int(value, 1):
            raise ValueError(f"{name}={value!r} must be a positive integer")
    block = model.config.block_size
    prompts = []
    for i, (text, document) in enumerate(zip(instructions, documents, strict=True)):
        try:
            prompts.append(tokenizer.encode(format_prompt(text, document))[-block:])
        except ValueError as e:
            raise ValueError(f"instruction {i} or its document cannot be encoded ({e}); extend the vocabulary "
                             "with every instruction and document first (extend_vocabulary)") from None
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    sampling = {"top_k": 1} if greedy else {"temperature": temperature, "top_k": top_k, "generator": generator}
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    groups, current = [], []
    for i in order:  # runs of equal prompt length, at most batch_size long
        if current and (len(prompts[i]) != len(prompts[current[0]]) or len(current) == batch_size):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    was_training = model.training
    model.eval()
    results: list[str] = [""] * len(prompts)
    with tqdm(total=len(prompts), desc="generating", unit="call", mininterval=1.0, disable=not progress) as bar:
        for group in groups:
            idx = torch.tensor([prompts[i] for i in group], dtype=torch.long, device=device)  # (B, T)
            out = model.generate(idx, max_new_tokens, stop_ids=newline, **sampling)
            for row, i in enumerate(group):
                results[i] = tokenizer.decode(out[row, idx.size(1):].tolist()).split(ANSWER_END, 1)[0]
            bar.update(len(group))
    model.train(was_training)
    return results
