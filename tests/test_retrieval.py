"""Gorilla's retrieval-aware training: the documentation store, the two retrievers, recall@k, the
retrieval-aware prompts and their masking, renamed copies, context growth and the evaluation matrix."""

import numpy as np
import pandas as pd
import pytest
import torch

from lmkit import GPT, GPTConfig, viz
from lmkit.apicalls import build_pairs, call_metrics
from lmkit.instruct import (
    IGNORE_INDEX,
    RAT_PREFIX,
    InstructionData,
    format_prompt,
    generate_calls,
    grow_context,
)
from lmkit.retrieval import (
    DOC_MAX_CHARS,
    GORILLA_TFHUB,
    METRICS,
    BM25Retriever,
    DenseRetriever,
    api_document,
    api_documents,
    document_sources,
    evaluation_matrix,
    gorilla_findings,
    oracle_documents,
    rat_context,
    recall_at_k,
    renamed_copies,
    retrieval_report,
    score_matrix,
    store_positions,
)
from lmkit.tokenizer import CharTokenizer

STORE = [  # the store's layout: the module line, the docstring without its first sentence, the signature
    "module zlib: compression\nCompute a CRC-32 checksum of data, starting from value.\nzlib.crc32(data, value)",
    "module heapq: heap queue\nPush item onto heap, keeping the heap invariant.\nheapq.heappush(heap, item)",
    "module shlex: shell lexing\nEscape a string for use in a POSIX shell command line.\nshlex.quote(s)",
    "module uuid: identifiers\nGenerate a random universally unique identifier.\nuuid.uuid4()",
]


@pytest.fixture(scope="module")
def pairs():
    return build_pairs(max_call_chars=64)


@pytest.fixture(scope="module")
def store(pairs):
    return api_documents(pairs)


def test_the_store_holds_every_api_once_without_its_instruction(pairs, store):
    assert len(store) == len(pairs) and list(store["function"]) == list(pairs["function"])
    for instruction, call, document in zip(pairs["instruction"], pairs["call"], store["document"], strict=True):
        assert instruction not in document  # otherwise the store is an answer key
        assert " ".join(instruction.split()) not in " ".join(document.split())
        assert document.endswith("\n" + call) or document == call  # the signature survives the cap
        assert len(document) <= max(DOC_MAX_CHARS, len(call))
    math_sqrt = store.set_index("function").loc["math.sqrt", "document"]
    assert math_sqrt.startswith("module math: ") and math_sqrt.endswith("\nmath.sqrt(x)")


def test_api_document_removes_the_instruction_wherever_it_occurs():
    doc = api_document("m.f(x)", "m", "Return x twice. A module.", "Return x twice.\n\nReturn x twice, really.",
                       "Return x twice.")
    assert "Return x twice." not in doc and doc == "module m: A module.\nReturn x twice, really.\nm.f(x)"
    assert api_document("m.f(x)", "m", "", None, "Do it.", max_chars=3) == "m.f(x)"  # the call is never cut


def test_bad_stores_and_k_are_clear_errors(pairs):
    with pytest.raises(ValueError, match="store is empty"):
        BM25Retriever([])
    with pytest.raises(ValueError, match="store is empty"):
        DenseRetriever([], model=object(), tokenizer=object())
    with pytest.raises(ValueError, match="pairs is empty"):
        api_documents(pairs.iloc[:0])
    with pytest.raises(ValueError, match="max_chars=0"):
        api_documents(pairs, max_chars=0)
    with pytest.raises(ValueError, match=r"k=0 must be an integer >= 1"):
        BM25Retriever(STORE).search(["crc"], k=0)
    with pytest.raises(ValueError, match="k=0"):
        recall_at_k(np.zeros((1, 2), dtype=int), [0], 0)


def test_bm25_ranks_the_distinctive_document_first():
    bm25 = BM25Retriever(STORE)
    ranked = bm25.search(["checksum of some data", "escape a string for the shell", "a unique identifier"], k=3)
    assert ranked.shape == (3, 3) and list(ranked[:, 0]) == [0, 2, 3]
    assert bm25.search(["heap"], k=10).shape == (1, 4)  # k is capped at the store's size


def test_dense_retriever_ranks_by_meaning():
    dense = DenseRetriever(STORE)
    assert np.allclose(np.linalg.norm(dense.embeddings, axis=1), 1, atol=1e-5)
    # no word in common with the right document: only the embedding can find it
    ranked = dense.search(["add an element to a priority queue", "quote text so bash reads it literally"], k=2)
    assert list(ranked[:, 0]) == [1, 2]


def test_recall_at_k_counts_the_right_document_in_the_first_k():
    ranked = np.array([[2, 0, 1], [1, 2, 0], [0, 1, 2], [2, 1, 0]])
    gold = [0, 1, 1, 2]
    assert recall_at_k(ranked, gold, 1) == 0.5  # rows 1 and 3
    assert recall_at_k(ranked, gold, 2) == 1.0
    with pytest.raises(ValueError, match="one row per gold"):
        recall_at_k(ranked, gold[:2], 1)
    table, top = retrieval_report([BM25Retriever(STORE)], ["crc checksum", "shell quote"], [0, 2], ks=(1, 2))
    assert list(table.columns) == ["recall@1", "recall@2", "ms_per_query"] and table.loc["BM25", "recall@1"] == 1.0
    assert top["BM25"].shape == (2, 2)


def char_tokenizer():
    return CharTokenizer(sorted(set("".join(STORE) + "".join(format_prompt("Compute it.", "d")) + "=*_\n")))


def test_rat_prompts_put_the_document_first_and_mask_everything_but_the_call():
    tok = char_tokenizer()
    df = pd.DataFrame({"instruction": ["Compute a checksum."], "call": ["zlib.crc32(data, value)"]})
    data = InstructionData.from_pairs(df, tok, 256, documents=[STORE[0]])
    prompt = format_prompt("Compute a checksum.", STORE[0])
    assert prompt == f"{RAT_PREFIX}{STORE[0]}\nInstruction: Compute a checksum.\nCall: "
    x, y = data.example(0)
    assert tok.decode(x.tolist()) + "\n" == prompt + "zlib.crc32(data, value)\n"
    counted = y[y != IGNORE_INDEX]
    assert tok.decode(counted.tolist()) == "zlib.crc32(data, value)\n"  # the loss sees the answer only
    assert data.truncated == 0


def test_a_long_rat_prompt_loses_the_start_of_its_document_never_the_instruction_or_answer():
    tok = char_tokenizer()
    df = pd.DataFrame({"instruction": ["Compute a checksum."], "call": ["zlib.crc32(data, value)"]})
    plain = format_prompt("Compute a checksum.")
    answer = "zlib.crc32(data, value)\n"
    block = len(plain) + len(answer) + 10  # room for the instruction, the answer and 11 document characters
    data = InstructionData.from_pairs(df, tok, block, documents=[STORE[0]])
    x, y = data.example(0)
    text = tok.decode(x.tolist()) + "\n"
    assert data.truncated == 1 and len(x) == block
    assert text.endswith(plain + answer)  # instruction and answer whole
    assert text[: -len(plain + answer)] == (STORE[0] + "\n")[-11:]  # the end of the document, where the signature is
    with pytest.raises(ValueError, match=r"example 0: its answer .* and the last .* characters of its prompt"):
        InstructionData.from_pairs(df, tok, len(plain) + len(answer) - 5, documents=[STORE[0]])
    with pytest.raises(ValueError, match="2 documents for 1 pairs"):
        InstructionData.from_pairs(df, tok, 256, documents=STORE[:2])


def test_renamed_copies_change_every_name_alike_in_call_and_document(pairs, store):
    sub = pairs.iloc[:20]
    out = renamed_copies(sub, store["document"][:20], copies=2, seed=0)
    assert len(out) == 60 and list(out.columns) == [*pairs.columns, "document"]
    assert out.iloc[:20]["call"].tolist() == sub["call"].tolist()  # the originals first, unchanged
    for original, copy in zip(list(sub.itertuples()) * 2, out.iloc[20:].itertuples(), strict=True):
        assert copy.document.endswith("\n" + copy.call)  # the document's signature is the new call
        assert copy.instruction == original.instruction
        assert copy.call != original.call and len(copy.call) == len(original.call)
        assert original.function not in copy.document  # the real name is gone
        assert copy.document.startswith(f"module {copy.module}: ")
    with pytest.raises(ValueError, match="copies=-1"):
        renamed_copies(sub, store["document"][:20], copies=-1)


def test_grow_context_keeps_every_weight_and_short_outputs():
    model = GPT(GPTConfig(vocab_size=20, n_layer=2, n_head=2, n_embd=16, block_size=16)).eval()
    grown = grow_context(model, 64)
    assert grown.config.block_size == 64 and grown.num_params() == model.num_params()
    x = torch.randint(0, 20, (2, 16))
    torch.testing.assert_close(grown(x).logits, model(x).logits)
    assert grown(torch.randint(0, 20, (1, 64))).logits.shape == (1, 64, 20)
    with pytest.raises(ValueError, match="pos_encoding='learned'"):
        grow_context(GPT(GPTConfig(vocab_size=20, n_layer=1, n_head=2, n_embd=16, block_size=16,
                                   pos_encoding="learned")), 64)
    with pytest.raises(ValueError, match="only grows"):
        grow_context(model, 8)


def test_score_matrix_is_call_metrics_per_cell():
    refs = ["math.sqrt(x)", "json.dumps(obj)"]
    predictions = {("without RAT", "none"): ["math.sqrt(x)", "json.dumpz(obj)"],
                   ("with RAT", "oracle"): ["math.sqrt( x )", "not a call"]}
    table = score_matrix(predictions, refs)
    assert list(table.index) == list(predictions) and list(table.columns) == ["n", *METRICS]
    assert table.loc[("without RAT", "none"), "hallucination_rate"] == 0.5  # json.dumpz does not exist
    assert table.loc[("with RAT", "oracle"), "unparseable_rate"] == 0.5
    for cell, predicted in predictions.items():
        assert table.loc[cell].to_dict() == pytest.approx(call_metrics(predicted, refs), nan_ok=True)
    with pytest.raises(ValueError, match="at least one"):
        score_matrix({}, refs)


def test_evaluation_matrix_has_a_row_per_model_and_document():
    tok = char_tokenizer()
    models = {name: GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=256))
              for name in ("without RAT", "with RAT")}
    df = pd.DataFrame({"instruction": ["Compute a checksum.", "Push it."],
                       "call": ["zlib.crc32(data, value)", "heapq.heappush(heap, item)"]})
    documents = {"none": None, "oracle": STORE[:2]}
    table, predictions = evaluation_matrix(models, tok, df, documents, max_new_tokens=5, progress=False)
    assert list(table.index) == [(m, d) for m in models for d in documents] and (table["n"] == 2).all()
    assert set(predictions) == set(table.index)
    assert predictions[("with RAT", "oracle")] == generate_calls(models["with RAT"], tok, df["instruction"],
                                                                 documents=STORE[:2], max_new_tokens=5)
    with pytest.raises(ValueError, match=r"documents\['oracle'\] has 1 documents for 2 pairs"):
        evaluation_matrix(models, tok, df, {"oracle": STORE[:1]}, progress=False)
    fig = viz.retrieval_matrix(table, GORILLA_TFHUB)
    assert len(fig.data) == 2 * (2 + 2)  # per panel: two models' bars, and the paper's diamonds (it has both)


def test_document_sources_are_none_each_retrievers_top_hit_and_the_oracle():
    store = pd.DataFrame({"function": ["zlib.crc32", "heapq.heappush", "shlex.quote", "uuid.uuid4"], "document": STORE})
    pairs = pd.DataFrame({"function": ["shlex.quote", "zlib.crc32"],
                          "instruction": ["a unique identifier", "checksum of data"]})
    sources = document_sources(store, pairs, [BM25Retriever(STORE)])
    assert list(sources) == ["none", "BM25", "oracle"] and sources["none"] is None
    assert sources["oracle"] == [STORE[2], STORE[0]]
    assert sources["BM25"] == [STORE[3], STORE[0]]  # the first query finds uuid's document, not its own
    assert store_positions(store, pairs) == [2, 0] and oracle_documents(store, pairs) == sources["oracle"]
    tok = char_tokenizer()
    calls = pd.DataFrame({"instruction": ["quote it.", "A longer instruction, this one."], "call": ["a.b(c)", "d.e()"]})
    longest = max(STORE, key=len)  # the context holds the longest instruction + call with the longest document
    assert rat_context(store, calls, tok) == len(format_prompt(calls["instruction"][1], longest) + "d.e()\n") - 1
    with pytest.raises(ValueError, match=r"no document for \['math.sqrt'\]"):
        document_sources(store, pd.DataFrame({"function": ["math.sqrt"], "instruction": ["root"]}))


def test_gorilla_findings_hold_on_the_papers_figures_and_fail_where_the_numbers_say_so():
    paper = gorilla_findings(GORILLA_TFHUB)
    assert len(paper) == 5 and paper["reproduces"].all()
    worse = GORILLA_TFHUB.copy()
    worse.loc[("with RAT", "BM25"), "ast_match"] = 0.9  # BM25 above zero-shot and above dense
    held = gorilla_findings(worse).set_index("finding")["reproduces"]
    assert not held["a weak retriever can hurt: RAT + BM25 below no retrieval"]
    assert not held["a better retriever helps: dense above BM25"]
    assert held["the oracle document helps a RAT model"]
    assert len(gorilla_findings(GORILLA_TFHUB.drop(index=[("with RAT", "dense")]))) == 4  # a missing cell: left out
