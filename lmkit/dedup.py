"""Near-duplicate detection with MinHash LSH, as in SlimPajama's deduplication step, in miniature.

Each document becomes a set of shingles (word n-grams by default); two documents are near-duplicates
when the Jaccard similarity |A ∩ B| / |A ∪ B| of their shingle sets is high. MinHash (Broder, 1997)
turns each set into ``num_perm`` numbers whose agreement rate estimates Jaccard; locality-sensitive
hashing (LSH, banding; Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3) finds the
candidate pairs without comparing every pair. Both come from the ``datasketch`` library. Candidate
pairs whose estimated Jaccard reaches ``threshold`` are joined into clusters (connected components).

Shingles are taken from a *normalised* copy of the text, used only for shingling: lower case,
accents dropped, letters only, whitespace collapsed and, with ``fold=True``, a light fold of early
modern spelling (j -> i, v -> u, y -> i, a word-final e dropped, doubled letters single), so the
First Folio's "haue", "vpon", "selfe" meet the modern "have", "upon", "self".

Measured on the real Shakespeare corpus (77 texts; 35 plays in both a modern and a Folio edition):
exact Jaccard of the weakest true pair (always Cymbeline, whose modern text lacks Acts III and IV)
against the most similar pair of different works:

    shingles                                   weakest true pair   most similar different works
    word 5-grams of the raw text               0.033               0.005
    word 5-grams, lower case, letters only     0.129               0.007
    ... + spelling fold                        0.289               0.007
    word 4-grams + fold (the defaults)         0.332               0.008
    word 3-grams + fold                        0.384               0.020
    word 2-grams + fold                        0.457               0.111
    char 8-grams + fold                        0.502               0.120
    char 12-grams + fold                       0.415               0.020

The top different-work pair at the defaults is Love's Labour's Lost / The Passionate Pilgrim (the
Pilgrim reprints three of the play's poems); the top pair of unrelated plays is Henry VI parts 2/3
(0.003). ``threshold=0.1`` is 12 times the former and a third of the weakest true pair, more than 5
standard deviations of a 128-permutation estimate away from each; datasketch then bands the
signatures as 64 bands x 2 rows, which makes a pair at Jaccard 0.33 a candidate with probability
0.9994. With these defaults the 35 true pairs are the only candidates and the only clusters (seeds
0-11 checked); the estimated Jaccard of the true pairs starts at 0.32, of all other pairs stays under
0.02. The full corpus (9.5 MB) takes about 7 s on one CPU core: shingling it twice (for the
signatures, then again for the exact Jaccard of the candidate pairs) about 3.5 s, SHA-1 hashing and
MinHash about 3 s.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from datasketch import MinHash, MinHashLSH

from .corpus import metadata_or_default
from .data import Document
from .params import is_int

logger = logging.getLogger(__name__)

SHINGLE_KINDS = ("word", "char")
DEFAULT_SHINGLE_SIZE = 4  # word 4-grams: the widest measured margin between true and false pairs
DEFAULT_THRESHOLD = 0.1  # weakest true pair 0.33, strongest false pair 0.008 (see module docstring)
POLICIES = ("modern", "folio", "both")

# combining marks left by NFKD ("é" -> "e" + U+0301): the diacritical-mark blocks, enough for accents
_COMBINING = re.compile(r"[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]")
_LIGATURES = str.maketrans({"æ": "ae", "œ": "oe", "ß": "ss"})
_LETTER_RUNS = re.compile(r"[^\W\d_]+")  # letters of any script; digits, "_" and punctuation split words
_SPELLING = str.maketrans("jvy", "iui")
_FINAL_E = re.compile(r"(?<=\w)e\b")
_DOUBLED = re.compile(r"(\w)\1")


def _fold_spelling(words: list[str]) -> list[str]:
    """j -> i, v -> u, y -> i, final e dropped, doubled letters single, for each of ``words``."""
    distinct = list(set(words))  # a play has ~5,000 distinct words in ~27,000: fold each once
    folded = _DOUBLED.sub(r"\1", _FINAL_E.sub("", " ".join(distinct).translate(_SPELLING))).split(" ")
    table = dict(zip(distinct, folded, strict=True))
    return [table[w] for w in words]


def _words(text: str, fold: bool) -> list[str]:
    text = text.lower()
    if not text.isascii():
        text = _COMBINING.sub("", unicodedata.normalize("NFKD", text)).translate(_LIGATURES)
    words = _LETTER_RUNS.findall(text)
    return _fold_spelling(words) if fold and words else words


def normalize_for_shingles(text: str, fold: bool = True) -> str:
    """The copy of ``text`` that shingles are cut from (never a replacement for the text itself).

    Lower case, accents removed ("é" -> "e"), "æ"/"œ" spelled out, every run of non-letters (digits,
    punctuation, apostrophes, whitespace) one space. With ``fold``, early modern spelling variants
    are folded word by word: j -> i, v -> u, y -> i, a final "e" after a letter dropped, doubled
    letters made single ("Haue you seene" and "Have you seen" both become "hau iou sen").
    """
    return " ".join(_words(text, fold))


def _check_size(size: object, name: str = "size") -> None:
    if not is_int(size, 1):
        raise ValueError(f"{name}={size!r} must be an int >= 1 (words or characters per shingle), e.g. 4")


def _check_kind(kind: object, name: str = "kind") -> None:
    if kind not in SHINGLE_KINDS:
        raise ValueError(f"{name}={kind!r} is not a shingle kind; use one of {list(SHINGLE_KINDS)}")


def shingles(text: str, size: int = DEFAULT_SHINGLE_SIZE, kind: str = "word", fold: bool = True) -> set[str]:
    """The set of shingles of ``text``: ``size`` consecutive words (``kind="word"``) or characters
    (``kind="char"``) of ``normalize_for_shingles(text, fold)``.

    A text shorter than one shingle gives its whole normalised text as the only shingle; a text
    with no letters gives the empty set.
    """
    _check_size(size)
    _check_kind(kind)
    words = _words(text, fold)
    units: Sequence[str] = words if kind == "word" else " ".join(words)
    if not units:
        return set()
    if len(units) <= size:
        return {" ".join(words)}
    joiner = " " if kind == "word" else ""
    # zip of the sequence shifted by 0 .. size-1 yields every window of ``size`` units
    return set(map(joiner.join, zip(*(units[i:] for i in range(size)), strict=False)))  # shorter tails end it


def jaccard(a: set, b: set) -> float:
    """Exact Jaccard similarity |a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 1.0


@dataclass
class DedupResult:
    """What ``find_near_duplicates`` found.

    ``names``: every document, in input order. ``signatures``: their MinHash values, shape
    (documents, num_perm); a document without shingles has a row of zeros and no similarity.
    ``clusters``: near-duplicate groups (two or more names, each sorted), sorted by first name.
    ``pairs``: every LSH candidate pair with ``estimated_jaccard`` (from the signatures),
    ``exact_jaccard`` (from the shingle sets) and ``duplicate`` (estimated >= threshold); only
    duplicate pairs make clusters. ``params``: the settings used, plus the LSH bands and rows.
    """

    names: list[str]
    signatures: np.ndarray
    clusters: list[list[str]]
    pairs: pd.DataFrame
    params: dict = field(default_factory=dict)
    empty: list[str] = field(default_factory=list)

    def similarity(self, names: Sequence[str] | None = None) -> pd.DataFrame:
        """Square DataFrame of estimated Jaccard between documents (all, or ``names``), for a heatmap.

        Entry (i, j) is the fraction of MinHash values the two signatures share; documents without
        shingles give NaN.
        """
        position = {name: i for i, name in enumerate(self.names)}
        names = list(self.names if names is None else names)
        unknown = [n for n in names if n not in position]
        if unknown:
            raise ValueError(f"unknown document names {unknown[:5]}; use names from result.names")
        sig = self.signatures[[position[n] for n in names]]  # (n, num_perm)
        sim = np.stack([(sig == row).mean(axis=1) for row in sig]) if len(sig) else np.zeros((0, 0))  # (n, n)
        no_shingles = set(self.empty)
        empty = np.array([n in no_shingles for n in names], dtype=bool)
        sim[empty, :] = np.nan
        sim[:, empty] = np.nan
        return pd.DataFrame(sim, index=pd.Index(names, name="a"), columns=pd.Index(names, name="b"))


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold!r} must be a number in (0, 1], e.g. {DEFAULT_THRESHOLD}")
    return float(threshold)


def _check_num_perm(num_perm: object) -> None:
    if not is_int(num_perm, 16):
        raise ValueError(f"num_perm={num_perm!r} must be an int >= 16 (more permutations, finer estimates), "
                         "e.g. 128")


def _connected_components(names: list[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    parent = {name: name for name in names}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(root(name), []).append(name)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def find_near_duplicates(
    docs: Sequence[Document],
    *,
    shingle_size: int = DEFAULT_SHINGLE_SIZE,
    shingle_kind: str = "word",
    fold: bool = True,
    num_perm: int = 128,
    threshold: float = DEFAULT_THRESHOLD,
    seed: int = 1,
) -> DedupResult:
    """Group documents whose shingle sets have (estimated) Jaccard similarity >= ``threshold``.

    Each document's shingles (see ``shingles``) go into a ``datasketch.MinHash`` with ``num_perm``
    permutations drawn from ``seed``; a ``MinHashLSH`` index tuned to ``threshold`` proposes
    candidate pairs; a pair counts when its estimated Jaccard reaches ``threshold``, and clusters
    are the connected components of those pairs. Exact Jaccard is computed for candidate pairs only,
    by shingling those documents again, so only signatures are kept. Same inputs and seed, same result.
    """
    _check_size(shingle_size, "shingle_size")
    _check_kind(shingle_kind, "shingle_kind")
    _check_num_perm(num_perm)
    threshold = _check_threshold(threshold)
    if not isinstance(fold, bool):
        raise ValueError(f"fold={fold!r} must be True or False")
    if not is_int(seed):
        raise ValueError(f"seed={seed!r} must be an int")
    docs = list(docs)
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError("find_near_duplicates expects Document objects; get them from load_documents(source)")
    names = [d.name for d in docs]
    if len(set(names)) != len(names):
        raise ValueError("document names must be unique; load_documents gives unique names")

    def shingle(doc: Document) -> set[str]:
        return shingles(doc.text, shingle_size, shingle_kind, fold)

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    template = MinHash(num_perm=num_perm, seed=seed)
    signatures = np.zeros((len(docs), num_perm), dtype=np.uint64)  # (documents, num_perm)
    minhashes, empty = {}, []
    for i, doc in enumerate(docs):
        sh = shingle(doc)
        if not sh:
            empty.append(doc.name)
            continue
        mh = template.copy()  # an empty MinHash sharing the seeded permutations
        mh.update_batch([s.encode("utf-8") for s in sh])
        lsh.insert(doc.name, mh)
        minhashes[doc.name] = mh
        signatures[i] = mh.hashvalues
    if empty:
        logger.warning("%d document(s) have no letters to shingle and are never duplicates: %s",
                       len(empty), empty[:10])

    order = {name: i for i, name in enumerate(names)}
    candidates = sorted({tuple(sorted((a, b), key=order.get))
                         for a, mh in minhashes.items() for b in lsh.query(mh) if b != a},
                        key=lambda p: (order[p[0]], order[p[1]]))
    by_name = {d.name: d for d in docs}
    cache: dict[str, set[str]] = {}
    rows = []
    for a, b in candidates:
        for n in (a, b):
            if n not in cache:
                cache[n] = shingle(by_name[n])
        estimated = float(np.mean(signatures[order[a]] == signatures[order[b]]))
        rows.append(dict(a=a, b=b, estimated_jaccard=estimated, exact_jaccard=jaccard(cache[a], cache[b]),
                         duplicate=estimated >= threshold))
    pairs = pd.DataFrame(rows, columns=["a", "b", "estimated_jaccard", "exact_jaccard", "duplicate"])
    pairs = pairs.sort_values(["estimated_jaccard", "a", "b"], ascending=[False, True, True], ignore_index=True)
    clusters = _connected_components(names, pairs.loc[pairs["duplicate"], ["a", "b"]].itertuples(index=False))
    params = dict(shingle_size=shingle_size, shingle_kind=shingle_kind, fold=fold, num_perm=num_perm,
                  threshold=threshold, seed=seed, lsh_bands=lsh.b, lsh_rows=lsh.r)
    logger.info("MinHash LSH over %d documents: %d candidate pairs, %d duplicate pairs, %d clusters (%.1f s)",
                len(docs), len(pairs), int(pairs["duplicate"].sum()), len(clusters),
                time.perf_counter() - started)
    return DedupResult(names, signatures, clusters, pairs, params, empty)


def apply_dedup_policy(
    docs: Sequence[Document],
    result: DedupResult,
    keep: str = "modern",
    metadata: pd.DataFrame | None = None,
) -> tuple[list[Document], pd.DataFrame]:
    """Keep one side of each near-duplicate cluster; return (kept documents, removed table).

    ``keep="modern"`` keeps the cluster's modern edition(s), ``"folio"`` its Folio edition(s),
    ``"both"`` everything. Editions come from ``metadata`` (default: the Shakespeare table); a
    cluster with no member of the wanted edition (no edition info at all, say) keeps its first
    member by name. Documents in no cluster are always kept; the kept list keeps input order. The
    removed table has one row per dropped document: ``name``, ``cluster`` (its members),
    ``kept`` (the members kept) and ``reason``.
    """
    if keep not in POLICIES:
        raise ValueError(f"keep={keep!r} is not a policy; use one of {list(POLICIES)}")
    docs = list(docs)
    present = {d.name for d in docs}
    missing = sorted({n for c in result.clusters for n in c} - present)
    if missing:
        raise ValueError(f"cluster members {missing[:5]} are not among docs; pass the documents the result "
                         "was computed on (or run find_near_duplicates on these docs)")
    editions = metadata_or_default(metadata)["edition"]
    removed_rows = []
    for cluster in result.clusters:
        if keep == "both":
            continue
        keepers = [n for n in cluster if editions.get(n) == keep] or cluster[:1]
        for name in cluster:
            if name not in keepers:
                removed_rows.append(dict(
                    name=name, cluster=", ".join(cluster), kept=", ".join(keepers),
                    reason=f"near-duplicate of {', '.join(keepers)} (keep={keep!r})",
                ))
    removed = pd.DataFrame(removed_rows, columns=["name", "cluster", "kept", "reason"])
    dropped = set(removed["name"])
    kept_docs = [d for d in docs if d.name not in dropped]
    logger.info("dedup policy keep=%r: kept %d of %d documents", keep, len(kept_docs), len(docs))
    return kept_docs, removed
