"""EleutherAI's lm-evaluation-harness (``lm_eval``) for lmkit models, and a local last-word task.

``LmkitLM`` is an ``lm_eval.api.model.LM``: it answers the harness's three request types with an
lmkit ``GPT`` and its tokenizer, so any harness task can score an lmkit checkpoint. Importing this
module registers it under the name ``"lmkit"``::

    import lmkit.harness, lm_eval
    lm_eval.simple_evaluate(model="lmkit", model_args="checkpoint=runs/x/checkpoints/step_000600", tasks=[...])

How each request type is answered (the contract is the docstrings of ``lm_eval.api.model.LM``):

- ``loglikelihood((context, continuation))``: the summed log-probability of the continuation's tokens,
  and whether greedy decoding would have produced every one of them. Whitespace at the end of the
  context moves to the continuation, and the continuation's tokens are those of ``context +
  continuation`` after the context's, as the harness's Hugging Face backend does. Context and
  continuation longer than ``block_size + 1`` tokens keep their last tokens (left truncation) and
  are scored in that one window, as that backend does: there the first continuation tokens see
  fewer than block_size tokens, so is_greedy can differ from what ``generate_until`` (which gives
  every new token block_size tokens of context) produces. A continuation longer than block_size is
  scored in windows from block_size tokens before it.
- ``loglikelihood_rolling((text,))``: the log-likelihood of the whole text, in windows of
  ``block_size`` tokens (``lmkit.evaluate.sliding_windows``, stride = block_size by default: the
  harness's disjoint windows, the last one shifted to end at the text's end). A GPT without a
  beginning-of-sequence token cannot score a first token conditioned on nothing, so the text is
  conditioned on a *prefix*: the end-of-text token for a tokenizer that has one (BPE: documents are
  joined by it in training, so the model saw it before every document), else a newline (char:
  documents are joined by ``"\\n\\n"``). An empty loglikelihood context gets the same prefix.
- ``generate_until((context, gen_kwargs))``: ``GPT.generate`` from the context's last block_size
  tokens, greedy unless ``do_sample`` / ``temperature > 0``, at most ``max_gen_toks`` tokens, cut at
  the first of the ``until`` strings (the text before it is returned).

A ``CharTokenizer`` cannot encode a character outside its vocabulary; such a request raises a
``ValueError`` naming the characters and the request, rather than silently scoring a different text.
Build local tasks from text the tokenizer covers (``build_last_word_task(..., charset=tok.chars)``).

``build_last_word_task`` writes a LAMBADA-style task (Paperno et al. 2016: predict the last word of a
passage) over held-out text as JSONL plus harness YAML; ``run_harness`` evaluates it fully offline.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import lm_eval
import lm_eval.api.model
import lm_eval.api.registry
import lm_eval.models  # noqa: F401 - registers the harness's own model types (hf, vllm, ...) beside lmkit
import torch
import torch.nn.functional as F
import yaml

from .checkpoint import load
from .device import auto_device
from .evaluate import sliding_windows

log = logging.getLogger(__name__)

GEN_CHUNK = 16  # tokens generated between checks for a stop string: few wasted tokens, few restarts


@lm_eval.api.registry.register_model("lmkit")
class LmkitLM(lm_eval.api.model.LM):
    """An lmkit ``GPT`` + tokenizer as an ``lm_eval`` model.

    Give either ``model`` and ``tokenizer`` or ``checkpoint`` (a folder for ``lmkit.checkpoint.load``;
    on the command line: ``model_args="checkpoint=PATH"``).

    ``batch_size``: windows scored per forward pass. ``device``: where the model runs (default: where
    ``model`` already is; "cpu" for a checkpoint). ``max_gen_toks``: generation length when a request
    does not set one. ``prefix``: text whose tokens condition a text's first token (None: end-of-text
    token if the tokenizer has one, else "\\n"). ``stride``: window stride for loglikelihood_rolling
    (None = block_size, the harness's convention; smaller gives each token more context, slower).
    """

    def __init__(self, model=None, tokenizer=None, checkpoint: str | os.PathLike | None = None,
                 batch_size: int | str = 16, device: str | torch.device | None = None, max_gen_toks: int = 64,
                 prefix: str | None = None, stride: int | None = None, max_batch_size: int | None = None):
        super().__init__()
        if (checkpoint is None) == (model is None):
            raise ValueError("give either checkpoint=PATH or model=GPT (with tokenizer=...), not both or neither")
        if checkpoint is not None:
            model, tokenizer = load(checkpoint, device or "cpu")
        if tokenizer is None:
            raise ValueError("LmkitLM needs the model's tokenizer (tokenizer=...); the checkpoint holds none")
        if str(batch_size).startswith("auto"):
            batch_size = max_batch_size or 16  # lm_eval's "auto" probes CUDA memory; a fixed size here
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        if self.batch_size < 1 or self.max_gen_toks < 1:
            raise ValueError(f"batch_size={batch_size!r} and max_gen_toks={max_gen_toks!r} must be >= 1")
        self._device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.block_size = model.config.block_size
        self.stride = stride
        eot_id = getattr(tokenizer, "eot_id", None)
        self.prefix = prefix if prefix is not None else ("\n" if eot_id is None else tokenizer.decode([eot_id]))
        self._stops = [] if eot_id is None else [tokenizer.decode([eot_id])]

    # --------------------------------------------------------------------------------- tokens

    def _encode(self, text: str, where: str) -> list[int]:
        try:
            return list(self.tokenizer.encode(text))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def _prefix_ids(self, where: str) -> list[int]:
        ids = self._encode(self.prefix, f"{where}: the prefix {self.prefix!r} that conditions the first token")
        if not ids:
            raise ValueError(f"prefix={self.prefix!r} encodes to no tokens; pass a prefix the tokenizer encodes")
        return ids

    def _pair(self, context: str, continuation: str, where: str) -> tuple[list[int], list[int]]:
        """Token ids of (context, continuation); trailing context whitespace belongs to the continuation."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        if not context:
            return self._prefix_ids(where), self._encode(continuation, where)
        ctx = self._encode(context, where)
        return ctx, self._encode(context + continuation, where)[len(ctx):]

    # ------------------------------------------------------------------------------- scoring

    def _windows(self, seq: list[int], first: int, stride: int | None = None) -> Iterator[tuple[list[int], int]]:
        """(window of seq, index in the window of its first scored target) covering targets seq[first:].

        A continuation that fits one window is scored in the single window ending at seq's end (left
        truncation); a longer one in ``sliding_windows`` from ``block_size`` tokens before it.
        """
        T = self.block_size
        if len(seq) - first <= T:
            start = max(0, len(seq) - 1 - T)
            yield seq[start:], first - start
            return
        offset = max(0, first - T)
        sub = seq[offset:]
        for s, scored in sliding_windows(len(sub), T, stride):
            n = min(T, len(sub) - 1)
            yield sub[s:s + n + 1], max(scored, first - offset) - s

    @torch.no_grad()
    def _score(self, jobs: Sequence[tuple[list[int], int]]) -> list[tuple[float, bool]]:
        """Per job (window of W+1 ids, first scored target k >= 1): (sum of log p(window[i] | window[:i])
        for i >= k, whether each of those targets is the argmax)."""
        order = sorted(range(len(jobs)), key=lambda j: -len(jobs[j][0]))  # similar lengths share a batch
        out: list[tuple[float, bool]] = [(0.0, True)] * len(jobs)
        for b in range(0, len(order), self.batch_size):
            batch = [jobs[j] for j in order[b:b + self.batch_size]]
            W = max(len(w) for w, _ in batch) - 1
            # right padding is never seen by earlier positions (causal attention); pads are not scored
            idx = torch.zeros(len(batch), W, dtype=torch.long)
            for row, (w, _) in enumerate(batch):
                idx[row, :len(w) - 1] = torch.tensor(w[:-1])
            logprobs = F.log_softmax(self.model(idx.to(self._device)).logits.float(), dim=-1)  # (B, W, V)
            for row, (w, k) in enumerate(batch):
                targets = torch.tensor(w[k:], device=self._device)
                lp = logprobs[row, k - 1:len(w) - 1]  # (n_scored, V): position i - 1 predicts w[i]
                total = float(lp.gather(-1, targets[:, None]).sum())
                greedy = bool((lp.argmax(-1) == targets).all())
                out[order[b + row]] = (total, greedy)
        return out

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        """Per ``Instance`` with ``args == (context, continuation)``: (log p(continuation | context), is_greedy)."""
        jobs, owners = [], []
        for i, req in enumerate(requests):
            context, continuation = req.args[:2]
            ctx, cont = self._pair(context, continuation, _where(req, i))
            if not cont:
                raise ValueError(f"{_where(req, i)}: the continuation {continuation!r} encodes to no tokens")
            for job in self._windows(ctx + cont, len(ctx)):
                jobs.append(job)
                owners.append(i)
        results = _sum_by_owner(self._score(jobs), owners, len(requests))
        for req, res in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Per ``Instance`` with ``args == (text,)``: log p(text | prefix), summed over sliding windows."""
        jobs, owners = [], []
        for i, req in enumerate(requests):
            where = _where(req, i)
            prefix, ids = self._prefix_ids(where), self._encode(req.args[0], where)
            for job in self._windows(prefix + ids, len(prefix), self.stride) if ids else ():
                jobs.append(job)
                owners.append(i)
        results = [total for total, _ in _sum_by_owner(self._score(jobs), owners, len(requests))]
        for req, res in zip(requests, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    @torch.no_grad()
    def generate_until(self, requests) -> list[str]:
        """Per ``Instance`` with ``args == (context, gen_kwargs)``: the generated text up to the first
        ``until`` string (excluded), at most ``max_gen_toks`` tokens."""
        results = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1] if len(req.args) > 1 else {})
            until, max_toks, sampling = self._gen_settings(gen_kwargs)
            ids = self._encode(context, _where(req, i)) if context else self._prefix_ids(_where(req, i))
            idx = torch.tensor([ids[-self.block_size:]], dtype=torch.long, device=self._device)  # (1, T)
            new: list[int] = []
            text = ""
            while len(new) < max_toks and not _first_stop(text, until)[1]:
                step = min(GEN_CHUNK, max_toks - len(new))
                out = self.model.generate(idx, step, **sampling)  # (1, T + step)
                new += out[0, -step:].tolist()
                idx = out[:, -self.block_size:]
                text = self.tokenizer.decode(new)
            text = _first_stop(text, until)[0]
            results.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return results

    def _gen_settings(self, kw: dict) -> tuple[list[str], int, dict]:
        until = kw.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_toks = next((int(kw.pop(k)) for k in ("max_gen_toks", "max_new_tokens") if kw.get(k) is not None),
                        self.max_gen_toks)
        temperature = float(kw.pop("temperature", 0.0) or 0.0)
        do_sample = kw.pop("do_sample", None)
        if do_sample is False or (do_sample is None and temperature == 0.0):
            sampling = {"top_k": 1}  # greedy: GPT.generate takes the argmax for top_k=1
        else:
            sampling = {"temperature": temperature or 1.0, "top_k": kw.pop("top_k", None),
                        "top_p": kw.pop("top_p", None)}
        return until + [s for s in self._stops if s not in until], max_toks, sampling

    @property
    def tokenizer_name(self) -> str:
        return f"lmkit-{getattr(self.tokenizer, 'kind', type(self.tokenizer).__name__)}"


def _where(req, i: int) -> str:
    task, doc = getattr(req, "task_name", None), getattr(req, "doc_id", None)
    return f"request {i}" + (f" (task {task}, doc {doc})" if task is not None else "")


def _sum_by_owner(scores, owners, n) -> list[tuple[float, bool]]:
    totals = [(0.0, True)] * n
    for (lp, greedy), i in zip(scores, owners, strict=True):
        totals[i] = (totals[i][0] + lp, totals[i][1] and greedy)
    return totals


def _first_stop(text: str, until: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one occurs)."""
    cuts = [text.find(s) for s in until if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


# ------------------------------------------------------------------------------ the local task

_WORD = re.compile(r"(?<= )[A-Za-z][A-Za-z']*[A-Za-z](?=[\s.,;:!?]|$)")  # a word after a space


def build_last_word_task(texts: Iterable[str], out_dir: str | os.PathLike, n: int = 200, seed: int = 0,
                         min_context_chars: int = 200, min_word_chars: int = 3, charset: Iterable[str] | None = None,
                         name: str = "shakespeare_last_word") -> Path:
    """Write a LAMBADA-style task to ``out_dir``: predict a passage's last word from what comes before.

    ``texts``: held-out documents (e.g. the validation documents of the prepared data). Each example
    is a word of at least ``min_word_chars`` letters that follows a space, with the context from the
    start of the line ``min_context_chars`` characters before it; ``n`` examples are drawn at random
    (``seed``) and written to ``{name}.jsonl`` as ``{"context", "target"}``. ``charset``: when given,
    only passages made of these characters are kept (e.g. ``tok.chars`` of a char tokenizer).

    Two harness tasks are written as YAML: ``{name}`` (loglikelihood of " target": ``acc`` = the word
    is the greedy continuation, ``perplexity`` of the word) and ``{name}_gen`` (greedy generation up
    to a newline or punctuation, its first word compared with ``exact_match``). Returns ``out_dir``.
    """
    if n < 1 or min_context_chars < 1:
        raise ValueError(f"n={n} and min_context_chars={min_context_chars} must be >= 1")
    allowed = None if charset is None else set(charset)
    candidates = []
    for doc in texts:
        for m in _WORD.finditer(doc):
            if m.start() < min_context_chars or len(m.group()) < min_word_chars:
                continue
            context = doc[doc.rfind("\n", 0, m.start() - min_context_chars) + 1:m.start() - 1]
            if allowed is None or allowed.issuperset(context + m.group()):
                candidates.append({"context": context, "target": m.group()})
    if not candidates:
        raise ValueError(f"no word after {min_context_chars} characters of context in the texts"
                         + ("" if allowed is None else " made only of the given charset"))
    if len(candidates) < n:
        log.warning("only %d examples available; writing all of them (n=%d asked)", len(candidates), n)
    examples = random.Random(seed).sample(candidates, min(n, len(candidates)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = (out / f"{name}.jsonl").resolve()
    data.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples), encoding="utf-8")
    data_spec = {
        "dataset_path": "json",
        # absolute paths: the harness resolves data_files against the working directory, not the YAML;
        # the datasets cache stays beside the data instead of under ~/.cache
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(out.resolve() / ".hf_cache")},
        "test_split": "test",
        "doc_to_text": "{{context}}",
    }
    tasks = {
        name: {"task": name, "output_type": "loglikelihood", **data_spec, "doc_to_target": "{{' ' + target}}",
               "metric_list": [{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                               {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
               "metadata": {"version": 1.0}},
        f"{name}_gen": {"task": f"{name}_gen", "output_type": "generate_until", **data_spec,
                        "doc_to_target": "{{target}}",
                        "generation_kwargs": {"until": ["\n", ".", ",", ";", ":", "!", "?"],
                                              "do_sample": False, "max_gen_toks": 24},
                        # the generation starts with the space before the word: keep its first word
                        "filter_list": [{"name": "first_word", "filter": [
                            {"function": "regex", "regex_pattern": r"^\s*(\S+)", "fallback": ""},
                            {"function": "take_first"}]}],
                        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
                        "metadata": {"version": 1.0}},
    }
    for task, spec in tasks.items():
        (out / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return out


@contextmanager
def _offline():
    """No Hugging Face Hub access: the env vars for anything read later, and the flags that
    ``datasets`` and ``huggingface_hub`` already read at import."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    flags = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved_flags = [getattr(mod, attr, None) for mod, attr in flags]
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    for mod, attr in flags:
        setattr(mod, attr, True)
    try:
        yield
    finally:
        for (mod, attr), value in zip(flags, saved_flags, strict=True):
            setattr(mod, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def _quiet_truncation():
    """The hf backend warns once per request whose context is longer than the model's, and transformers'
    tokenizer once per run; cropping to the newest tokens is what LmkitLM does silently, so these are
    no news (the harness's other warnings still show)."""
    names = ("lm_eval.models.huggingface", "transformers.tokenization_utils_base")
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def task_names(task_dir: str | os.PathLike) -> list[str]:
    """The ``task:`` names of the YAML files in ``task_dir``."""
    specs = (yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(Path(task_dir).glob("*.yaml")))
    return [s["task"] for s in specs if isinstance(s, dict) and "task" in s]


def run_harness(lm: LmkitLM | str, task_dir: str | os.PathLike, tasks: Sequence[str] | None = None,
                limit: int | float | None = None, num_fewshot: int = 0, **kwargs) -> dict:
    """``lm_eval.simple_evaluate`` on the tasks defined in ``task_dir`` (default: all of them), offline.

    ``lm``: an ``LmkitLM``, or the name of one of the harness's own model types with its
    ``model_args``: ``run_harness("hf", task_dir, model_args=hf_model_args(OUT_DIR))`` evaluates a
    folder written by ``lmkit.export.to_hf`` through the harness's Hugging Face backend.

    Only ``task_dir`` is indexed (not the harness's built-in tasks: that takes seconds and none of
    them is reachable offline). ``limit``: examples per task (a float below 1: a fraction).
    ``kwargs`` go to ``simple_evaluate`` (e.g. ``bootstrap_iters``). Returns its results dict
    (``results_frame`` turns it into a table).
    """
    from lm_eval.tasks import TaskManager

    tasks = list(tasks) if tasks is not None else task_names(task_dir)
    if not tasks:
        raise ValueError(f"no task YAML in {task_dir}; write one with build_last_word_task")
    kwargs.setdefault("bootstrap_iters", 0)  # stderr by bootstrap costs seconds per metric
    kwargs.setdefault("log_samples", False)
    with _offline(), _quiet_truncation():
        manager = TaskManager(include_path=str(task_dir), include_defaults=False)
        # num_fewshot None keeps the task's own setting (0 for ours) without the harness's override warning
        return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                       num_fewshot=num_fewshot or None, **kwargs)


def hf_model_args(folder: str | os.PathLike, prefix: str = "\n", **extra) -> str:
    """``model_args`` for the harness's own ``hf`` model on a folder written by ``lmkit.export.to_hf``:
    ``pretrained=FOLDER`` and ``prefix_token_id``, the token that conditions a first token with no
    context before it — the newline, as ``LmkitLM`` uses (a character vocabulary has no end-of-text
    token for the harness to fall back on) — and ``device`` (cuda > mps > cpu; the harness's own
    default is cuda). ``extra``: more arguments (``dtype="float32"``, ``batch_size=16``)."""
    from transformers import AutoTokenizer  # seconds to import: only when an export is evaluated

    ids = AutoTokenizer.from_pretrained(folder, local_files_only=True).encode(prefix)
    if len(ids) != 1:
        raise ValueError(f"prefix={prefix!r} is {len(ids)} tokens for the tokenizer in {folder}; pass one "
                         f"that is a single token")
    args = {"pretrained": folder, "prefix_token_id": ids[0], "device": auto_device().type, **extra}
    return ",".join(f"{k}={v}" for k, v in args.items())


def results_frame(results: dict):
    """One pandas row per (task, metric, filter) of a ``simple_evaluate`` result: task, metric, filter,
    value, stderr (NaN when not computed)."""
    import pandas as pd

    rows = []
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")  # "acc,none": metric acc after filter "none"
            if not filt or metric.endswith("_stderr"):
                continue  # alias, name, sample_len
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            rows.append({"task": task, "metric": metric, "filter": filt, "value": float(value),
                         "stderr": float(stderr) if isinstance(stderr, int | float) else float("nan")})
    return pd.DataFrame(rows, columns=["task", "metric", "filter", "value", "stderr"])
