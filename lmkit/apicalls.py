"""Instruction → API-call pairs from the Python standard library, and the metrics to score generated calls.

The task is the one Gorilla (Patil et al. 2023, "Gorilla: Large Language Model Connected with Massive
APIs") fine-tunes for: given a natural-language instruction, write the API call that does it. Here the
API is the installed standard library, so the data is real text that needs no download:

    instruction = the first sentence of a function's docstring   "Return the square root of x."
    call        = the function's dotted path with the names of   "math.sqrt(x)"
                  its parameters as arguments

``build_pairs`` makes the table, ``split_by_module`` splits it so that test modules are never seen
in training, and ``score_calls`` / ``call_metrics`` score generated calls as the Gorilla paper does:

* **exact match** — the generated text equals the reference after whitespace is normalised;
* **AST match** — both parse as a call (``ast``) of the same dotted function path with the same
  positional argument names in the same order and the same set of keyword names (keyword values are
  not compared); Gorilla matches sub-trees of the API call the same way, so formatting does not count;
* **hallucination** — a parseable call whose function does not exist: its dotted path does not
  resolve to a callable in the standard library (``resolves``). Generated text is only ever parsed,
  never executed or ``eval``'d, and nothing outside the standard library is imported to check it.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import importlib.util
import inspect
import keyword
import logging
import os
import re
import sys
import sysconfig
import types
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .params import is_int

log = logging.getLogger(__name__)

# Commonly used modules that exist on every platform and build of CPython, and whose import has no
# side effects (no files, threads, windows, output or deprecation warnings). Left out on purpose:
# os and sys (platform-specific function sets), itertools and datetime (classes, not functions),
# colorsys (no docstrings), lzma and bz2 (optional at build time), uu and cgi (deprecated).
DEFAULT_MODULES: tuple[str, ...] = (
    "math", "cmath", "statistics", "decimal", "random", "secrets", "bisect", "heapq",
    "operator", "functools", "copy", "pprint", "string", "textwrap", "re", "fnmatch", "glob",
    "difflib", "shlex", "unicodedata", "codecs", "struct", "html", "xml.sax.saxutils",
    "urllib.parse", "email.utils", "json", "csv", "pickle", "base64", "binascii", "quopri",
    "zlib", "gzip", "hashlib", "os.path", "shutil", "filecmp", "tempfile", "mimetypes",
    "ipaddress", "uuid", "calendar", "time", "locale", "platform", "getpass", "inspect",
    "types", "typing", "dataclasses", "warnings", "traceback", "linecache", "gc",
)

# Standard-library modules that do something when imported (open a browser, print, start Tk,
# change the terminal), or hold CPython's own test suite: ``resolves`` never imports these.
_NEVER_IMPORT = frozenset({
    "antigravity", "this", "__hello__", "__phello__", "__main__", "idlelib", "tkinter", "turtle",
    "turtledemo", "readline", "test",
})

_ABBREVIATIONS = ("e.g.", "i.e.", "a.k.a.", "etc.", "vs.", "cf.")
_SIGNATURE_START = re.compile(r"\s*[A-Za-z_][\w.]*\(")
_SKIP_NAMES = frozenset({"main", "test"})  # command-line entry points, not library API


# ------------------------------------------------------------------------------------ the dataset

def docstring_text(doc: str | None) -> str:
    """A docstring cleaned (``inspect.cleandoc``) and without a leading signature line such as
    ``sleep(seconds)`` and its indented continuation lines; ``""`` for no docstring."""
    if not doc:
        return ""
    text = inspect.cleandoc(doc)
    if _SIGNATURE_START.match(text):
        lines = text.split("\n")[1:]
        while lines and lines[0][:1].isspace():
            lines.pop(0)
        text = "\n".join(lines)
    return text


def first_sentence(doc: str | None) -> str | None:
    """The first sentence of a docstring, whitespace collapsed; None when there is no real sentence.

    A leading signature line such as ``sleep(seconds)`` (builtins' docstrings often start with one)
    is dropped first. The sentence ends at the first ``.``/``!``/``?`` followed by a space or the end,
    outside parentheses and not in an abbreviation such as ``e.g.``; without one, the whole first
    paragraph is taken. A real sentence starts with a letter, has at least two words and is not
    itself a signature.
    """
    if not doc or not doc.strip():
        return None
    text = docstring_text(doc)
    paragraph = " ".join(text.strip().split("\n\n", 1)[0].split())
    sentence = _cut_sentence(paragraph)
    if len(sentence.split()) < 2 or not sentence[0].isalpha() or _SIGNATURE_START.match(sentence):
        return None  # e.g. a slot wrapper's "x.__contains__(y) <==> y in x."
    return sentence


def _cut_sentence(text: str) -> str:
    depth = 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch in ".!?" and depth <= 0 and (i + 1 == len(text) or text[i + 1] == " "):
            word = text[:i + 1].rsplit(" ", 1)[-1].lstrip("(")
            if word.lower() not in _ABBREVIATIONS:
                return text[:i + 1]
    return text


def call_template(path: str, params: Iterable[tuple[str, inspect._ParameterKind]]) -> str:
    """``path(...)`` with each parameter written as it would be passed: ``x``, ``*args``,
    ``name=name`` (keyword-only) or ``**kwargs``."""
    parts = []
    for name, kind in params:
        if kind is inspect.Parameter.VAR_POSITIONAL:
            parts.append(f"*{name}")
        elif kind is inspect.Parameter.KEYWORD_ONLY:
            parts.append(f"{name}={name}")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            parts.append(f"**{name}")
        else:
            parts.append(name)
    return f"{path}({', '.join(parts)})"


def _parameters(obj, doc: str | None) -> list[tuple[str, inspect._ParameterKind]] | None:
    """Parameter (name, kind) pairs from ``inspect.signature``, or else from a docstring's signature
    line when that line is valid Python (``sleep(seconds)``); None when neither can be read."""
    try:
        return [(p.name, p.kind) for p in inspect.signature(obj).parameters.values()]
    except (ValueError, TypeError):
        pass
    match = _SIGNATURE_START.match(doc or "")
    if not match:
        return None
    inner, depth = [], 1
    for ch in doc[match.end():]:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            break
        inner.append(ch)
    try:
        args = ast.parse(f"def f({''.join(inner)}): pass").body[0].args
    except (SyntaxError, ValueError):
        return None  # "reduce(function, iterable[, initial])": brackets are not Python
    P = inspect.Parameter
    return ([(a.arg, P.POSITIONAL_ONLY) for a in args.posonlyargs]
            + [(a.arg, P.POSITIONAL_OR_KEYWORD) for a in args.args]
            + ([(args.vararg.arg, P.VAR_POSITIONAL)] if args.vararg else [])
            + [(a.arg, P.KEYWORD_ONLY) for a in args.kwonlyargs]
            + ([(args.kwarg.arg, P.VAR_KEYWORD)] if args.kwarg else []))


def module_functions(module: types.ModuleType) -> list[tuple[str, object]]:
    """Public module-level functions of ``module`` as (name, object), sorted by name, each object once.

    Counted: functions, builtins and bound methods of module-level instances (``random.choice``)
    whose name has no leading underscore and that the module defines (``__module__`` is the module
    or its C accelerator ``_name``) or exports on purpose (listed in ``__all__``); an import such as
    ``from os import stat`` is neither. Classes are not functions and are left out, and so are
    command-line entry points (``main``, ``test``). An object bound to several names (``bisect.bisect``
    is ``bisect.bisect_right``) is kept once, under its own ``__name__`` when that is one of them.
    """
    exported = set(getattr(module, "__all__", ()))
    own = {module.__name__, "_" + module.__name__.rsplit(".", 1)[-1]}
    names_of: dict[int, list[str]] = {}
    objects: dict[int, object] = {}
    for name in sorted(vars(module)):
        obj = getattr(module, name)
        if name.startswith("_") or name in _SKIP_NAMES or inspect.isclass(obj):
            continue
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj)):
            continue
        if getattr(obj, "__module__", None) not in own and name not in exported:
            continue
        names_of.setdefault(id(obj), []).append(name)
        objects[id(obj)] = obj
    chosen = []
    for key, names in names_of.items():
        own_name = getattr(objects[key], "__name__", None)
        chosen.append((own_name if own_name in names else names[0], objects[key]))
    return sorted(chosen, key=lambda pair: pair[0])


def module_pairs(module: types.ModuleType, path: str | None = None) -> list[dict]:
    """One ``{"module", "function", "instruction", "call"}`` row per function of ``module_functions``
    that has a real first sentence (``first_sentence``) and readable parameter names.

    Parameters come from ``inspect.signature``, else from a signature line at the top of the
    docstring when it is valid Python (``sleep(seconds)``); parameters with a leading underscore
    (private) are left out of the call. ``path``: the name calls use (default ``module.__name__``;
    ``"os.path"`` rather than ``"posixpath"``).
    """
    path = path or module.__name__
    rows = []
    for name, obj in module_functions(module):
        doc = getattr(obj, "__doc__", None)
        instruction = first_sentence(doc)
        params = _parameters(obj, doc) if instruction else None
        if params is None:
            continue
        call = call_template(f"{path}.{name}", [(n, k) for n, k in params if not n.startswith("_")])
        rows.append({"module": path, "function": f"{path}.{name}", "instruction": instruction, "call": call})
    return rows


def build_pairs(modules: Sequence[str] | None = None, *, max_per_module: int | None = None,
                max_call_chars: int | None = None) -> pd.DataFrame:
    """(instruction, call) pairs from the standard library: one row per documented public function.

    ``modules``: dotted module names (default ``DEFAULT_MODULES``; only the standard library is
    accepted). The rows are ``module_pairs`` of each module; ``max_call_chars`` drops calls longer
    than that (a call must fit the model's context), then ``max_per_module`` keeps the first k rows
    of each module.

    Returns a DataFrame with columns ``module``, ``function`` (dotted path), ``instruction``, ``call``,
    in module order, then function name. Its contents depend on the Python version (and, for
    ``os.path``, ``time`` and a few more, the platform), never on anything else.
    """
    modules = list(DEFAULT_MODULES if modules is None else modules)
    foreign = [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names]
    if foreign:
        raise ValueError(f"build_pairs takes standard-library modules only; {foreign} are not")
    for name, value in (("max_per_module", max_per_module), ("max_call_chars", max_call_chars)):
        if value is not None and (not is_int(value, 1)):
            raise ValueError(f"{name}={value!r} must be None or a positive integer")
    rows = []
    for module_name in modules:
        kept = module_pairs(importlib.import_module(module_name), module_name)
        if max_call_chars is not None:
            kept = [r for r in kept if len(r["call"]) <= max_call_chars]
        rows += kept[:max_per_module]
    df = pd.DataFrame(rows, columns=["module", "function", "instruction", "call"])
    log.info("built %d pairs from %d modules", len(df), df["module"].nunique())
    return df


def split_by_module(df: pd.DataFrame, val_fraction: float = 0.1, test_fraction: float = 0.2,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split pairs into (train, val, test) by whole module, so test modules are unseen in training.

    The fractions count modules, not rows: the sorted module names are shuffled with ``seed`` and
    the first ``round(test_fraction * n)`` go to test, the next ``round(val_fraction * n)`` to val
    (at least one each when the fraction is above zero). Rows keep their order within a split.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value!r} must be in [0, 1)")
    modules = sorted(df["module"].unique())
    n = len(modules)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise ValueError(f"{n} module(s) cannot give {n_test} test and {n_val} val module(s) and leave "
                         "any for training; lower the fractions or use more modules")
    order = [modules[i] for i in np.random.default_rng(seed).permutation(n)]
    test, val = set(order[:n_test]), set(order[n_test:n_test + n_val])
    in_test, in_val = df["module"].isin(test), df["module"].isin(val)
    return (df[~in_test & ~in_val].reset_index(drop=True), df[in_val].reset_index(drop=True),
            df[in_test].reset_index(drop=True))


# ------------------------------------------------------------------------------------ the metrics

def normalize_whitespace(text: str) -> str:
    """Strip, and collapse every run of whitespace to one space."""
    return " ".join(str(text).split())


def exact_match(pred: str, ref: str) -> bool:
    """Same text after ``normalize_whitespace``."""
    return normalize_whitespace(pred) == normalize_whitespace(ref)


def _dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def parse_call(text: str) -> tuple[str, list[str], frozenset[str]] | None:
    """``(function_path, positional args, keyword names)`` of a call, or None if ``text`` is not one.

    The text must parse (``ast``, never ``eval``) as a single expression that calls a dotted name:
    ``"os.path.join(a, *p)"`` gives ``("os.path.join", ["a", "*p"], frozenset())``. Positional
    arguments are written back as source (``"*p"`` for a starred one); keywords are their names
    (``"**kw"`` for a double-starred mapping). ``"re.compile(p).match(s)"`` calls no dotted name: None.
    """
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = tree.body
    if not isinstance(call, ast.Call):
        return None
    path = _dotted_name(call.func)
    if path is None:
        return None
    args = [ast.unparse(a) for a in call.args]
    kws = frozenset(k.arg if k.arg is not None else f"**{ast.unparse(k.value)}" for k in call.keywords)
    return path, args, kws


def ast_match(pred: str, ref: str) -> bool:
    """Both parse as calls of the same dotted path, with the same positional arguments in the same
    order and the same set of keyword names; False when either does not parse."""
    p, r = parse_call(pred), parse_call(ref)
    return p is not None and r is not None and p == r


def _stdlib_dirs() -> tuple[str, ...]:
    paths = {sysconfig.get_path("stdlib"), os.path.dirname(os.__file__),
             sysconfig.get_path("platstdlib", vars={"platbase": sys.base_exec_prefix, "base": sys.base_prefix})}
    return tuple(os.path.realpath(p) for p in paths if p)


def _is_stdlib_module(name: str) -> bool:
    """True when the top-level module ``name`` is the standard library's own (by name *and* by where
    its file is), so a same-named third-party package or a local file never passes. Finding the spec
    does not run the module."""
    if name not in sys.stdlib_module_names or name in _NEVER_IMPORT:
        return False
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    location = spec.origin or next(iter(spec.submodule_search_locations or ()), None)
    if not location:
        return False
    location = os.path.realpath(location)
    inside = any(os.path.commonpath([location, d]) == d for d in _stdlib_dirs())
    return inside and not {"site-packages", "dist-packages"} & set(location.split(os.sep))


def _import_quietly(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # a module of another platform (msvcrt), a missing optional library, ...
            return None


@functools.lru_cache(maxsize=4096)
def resolves(function_path: str) -> bool:
    """True when ``function_path`` names a callable that exists in the standard library.

    A single name is looked up in ``builtins`` (``len``); ``str.join`` starts from the builtin
    ``str``. Otherwise the first component must be a standard-library module (``sys.stdlib_module_names``,
    located in the standard library's folder), which is imported; each further component is an
    attribute, or a submodule of a package (``urllib.parse``), imported only from within that package.
    Nothing outside the standard library is ever imported (``"numpy.sqrt"`` is False even when numpy
    is installed), modules with import side effects (``antigravity``) are never imported, and the
    text is never evaluated.
    """
    parts = str(function_path).split(".")
    if not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
        return False
    top, rest = parts[0], parts[1:]
    if top in vars(builtins) and top not in sys.stdlib_module_names:
        obj = vars(builtins)[top]
    elif _is_stdlib_module(top):
        obj = _import_quietly(top)
    else:
        return False
    for i, part in enumerate(rest, start=1):
        if obj is None:
            return False
        try:
            obj = getattr(obj, part)
            continue
        except AttributeError:
            pass
        except Exception:  # a module __getattr__ or descriptor that raises something else
            return False
        if inspect.ismodule(obj) and hasattr(obj, "__path__"):  # a package: try its submodule
            obj = _import_quietly(".".join(parts[:i + 1]))
        else:
            return False
    return obj is not None and callable(obj)


def score_calls(preds: Sequence[str], refs: Sequence[str]) -> pd.DataFrame:
    """One row per example: ``pred``, ``ref``, ``exact``, ``ast``, ``parsed`` (the prediction is a
    call, see ``parse_call``) and ``hallucinated`` (parsed, and its function does not resolve)."""
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"got {len(preds)} predictions for {len(refs)} references; pass one per reference")
    rows = []
    for pred, ref in zip(preds, refs, strict=True):
        parsed = parse_call(pred)
        rows.append({
            "pred": pred, "ref": ref, "exact": exact_match(pred, ref), "ast": ast_match(pred, ref),
            "parsed": parsed is not None, "hallucinated": parsed is not None and not resolves(parsed[0]),
        })
    return pd.DataFrame(rows, columns=["pred", "ref", "exact", "ast", "parsed", "hallucinated"])


def call_metrics(preds: Sequence[str], refs: Sequence[str]) -> dict:
    """Gorilla-style scores over a set of examples, each a fraction in [0, 1]:

    ``exact_match`` and ``ast_match`` over all examples; ``hallucination_rate`` = hallucinated /
    parseable predictions (NaN when none parses: an unparseable text calls nothing, so it is not
    counted as a hallucination); ``unparseable_rate`` = predictions that are not a call / all.
    Also ``n``, the number of examples.
    """
    scores = score_calls(preds, refs)
    n, parsed = len(scores), int(scores["parsed"].sum())
    return {
        "n": n,
        "exact_match": float(scores["exact"].mean()) if n else float("nan"),
        "ast_match": float(scores["ast"].mean()) if n else float("nan"),
        "hallucination_rate": float(scores["hallucinated"].sum() / parsed) if parsed else float("nan"),
        "unparseable_rate": (n - parsed) / n if n else float("nan"),
    }
