"""Instruction → API-call pairs from the standard library, the module split and the Gorilla metrics."""

import importlib.util
import inspect
import sys

import pytest

from lmkit import apicalls
from lmkit.apicalls import (
    ast_match,
    build_pairs,
    call_metrics,
    call_template,
    exact_match,
    first_sentence,
    module_pairs,
    parse_call,
    resolves,
    score_calls,
    split_by_module,
)


@pytest.fixture(scope="module")
def pairs():
    return build_pairs()


@pytest.fixture(autouse=True)
def fresh_resolver():
    resolves.cache_clear()  # each test sees resolves' real work, not an earlier test's cached answer
    yield
    resolves.cache_clear()


def test_every_target_is_a_parseable_existing_public_call(pairs):
    assert len(pairs) > 400 and pairs["module"].nunique() >= 40
    assert list(pairs.columns) == ["module", "function", "instruction", "call"]
    assert pairs["function"].is_unique
    for row in pairs.itertuples():
        parsed = parse_call(row.call)
        assert parsed is not None, row.call
        path, args, kws = parsed
        assert path == row.function and path.startswith(row.module + ".")
        assert resolves(path), path
        assert not any(part.startswith("_") for part in path.split(".")), path
        assert not any(a.lstrip("*").startswith("_") for a in args) and not any(k.startswith("_") for k in kws)
        assert row.instruction and row.instruction == " ".join(row.instruction.split())
        assert row.instruction[0].isalpha() and len(row.instruction.split()) >= 2


def test_known_pairs_and_deterministic_order(pairs):
    by_function = pairs.set_index("function")
    assert by_function.loc["math.sqrt", "instruction"] == "Return the square root of x."
    assert by_function.loc["math.sqrt", "call"] == "math.sqrt(x)"
    # time.sleep's docstring starts with the signature line "sleep(seconds)": dropped from the text,
    # used for the parameter names when inspect.signature cannot read the builtin
    assert by_function.loc["time.sleep", "instruction"] == "Delay execution for a given number of seconds."
    assert by_function.loc["time.sleep", "call"] == "time.sleep(seconds)"
    assert "bisect.bisect" not in by_function.index and "bisect.bisect_right" in by_function.index  # alias once
    assert build_pairs().equals(pairs)
    first = build_pairs(["math", "json"], max_per_module=3)
    assert list(first["module"]) == ["math"] * 3 + ["json"] * 3
    assert list(first["function"][:3]) == sorted(pairs.loc[pairs["module"] == "math", "function"])[:3]
    short = build_pairs(["json", "math"], max_call_chars=20)
    assert len(short) and short["call"].str.len().max() <= 20
    with pytest.raises(ValueError, match="standard-library"):
        build_pairs(["numpy"])


def test_module_pairs_skip_private_undocumented_foreign_and_classes(tmp_path):
    (tmp_path / "fakemod.py").write_text(
        "from math import sqrt\n"
        "def area(width, height, *rest, unit='m', _cache=None, **options):\n"
        "    '''Compute   the area\n    of a rectangle. More text follows.'''\n"
        "def _hidden(x):\n    '''Return x.'''\n"
        "def bare(x):\n    pass\n"
        "def sig_only(x):\n    '''sig_only(x)'''\n"
        "class Shape:\n    '''A shape.'''\n"
    )
    spec = importlib.util.spec_from_file_location("fakemod", tmp_path / "fakemod.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = module_pairs(mod)
    assert rows == [{"module": "fakemod", "function": "fakemod.area",
                     "instruction": "Compute the area of a rectangle.",
                     "call": "fakemod.area(width, height, *rest, unit=unit, **options)"}]
    assert module_pairs(mod, "pkg.fake")[0]["call"].startswith("pkg.fake.area(")


def test_call_template_writes_each_parameter_kind():
    def f(a, /, b, c=1, *args, d, e=2, **kw): ...

    params = [(p.name, p.kind) for p in inspect.signature(f).parameters.values()]
    assert call_template("m.f", params) == "m.f(a, b, c, *args, d=d, e=e, **kw)"
    assert call_template("m.g", []) == "m.g()"


@pytest.mark.parametrize("doc, expected", [
    ("Return the square root of x.", "Return the square root of x."),
    ("sqrt(x)", None),  # only a signature line
    ("sleep(seconds)\n\nDelay execution for a given number of seconds.  The argument may be", "Delay execution "
     "for a given number of seconds."),
    ("log(x, [base=math.e])\nReturn the logarithm of x to the given base.\n\nIf the base...", "Return the "
     "logarithm of x to the given base."),
    ("gmtime([seconds]) -> (tm_year, tm_mon,\n                       tm_sec)\n\nConvert seconds to UTC (a.k.a.\n"
     "GMT). When", "Convert seconds to UTC (a.k.a. GMT)."),
    ("Return the value, e.g. 3. Then more.", "Return the value, e.g. 3."),
    ("x.__contains__(y) <==> y in x.", None),
    ("", None), (None, None), ("   \n  ", None), ("Hello.", None),  # one word is no instruction
])
def test_first_sentence(doc, expected):
    assert first_sentence(doc) == expected


def test_split_by_module_never_shares_a_module(pairs):
    train, val, test = split_by_module(pairs, val_fraction=0.1, test_fraction=0.2, seed=0)
    sets = [set(s["module"]) for s in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    n = pairs["module"].nunique()
    assert len(sets[2]) == round(0.2 * n) and len(sets[1]) == round(0.1 * n)
    assert len(train) + len(val) + len(test) == len(pairs)
    assert set(train["function"]) | set(val["function"]) | set(test["function"]) == set(pairs["function"])
    again = split_by_module(pairs, seed=0)
    assert all(a.equals(b) for a, b in zip(again, (train, val, test), strict=True))
    assert set(split_by_module(pairs, seed=1)[2]["module"]) != sets[2]
    with pytest.raises(ValueError, match="module"):
        split_by_module(pairs[pairs["module"].isin(["math", "json"])], val_fraction=0.5, test_fraction=0.5)


def test_exact_and_ast_match_on_hand_written_calls():
    assert exact_match("math.sqrt(x)", "math.sqrt(x)") and exact_match("  math.sqrt(x)\n", "math.sqrt(x)")
    assert not exact_match("math.sqrt( x )", "math.sqrt(x)")  # exact means exact, up to outer/runs of space
    assert ast_match("math.sqrt( x )", "math.sqrt(x)")
    assert not ast_match("math.sqrt(y)", "math.sqrt(x)")
    assert not ast_match("cmath.sqrt(x)", "math.sqrt(x)")
    assert parse_call("os.path.join(a, *p)") == ("os.path.join", ["a", "*p"], frozenset())
    assert ast_match("os.path.join(a,*p)", "os.path.join(a, *p)")
    assert not ast_match("os.path.join(*p, a)", "os.path.join(a, *p)")  # positional order counts
    assert ast_match("json.dumps(obj, indent=indent, sort_keys=sort_keys)",
                     "json.dumps(obj, sort_keys=sort_keys, indent=indent)")  # keywords are a set
    assert not ast_match("json.dumps(obj, indent=indent)", "json.dumps(obj, sort_keys=sort_keys)")
    assert parse_call("f(**kw)") == ("f", [], frozenset({"**kw"}))
    for garbage in ("math.sqrt(x", "Return the square root", "", "x + 1", "re.compile(p).match(s)", "a; b()"):
        assert parse_call(garbage) is None, garbage
        assert not ast_match(garbage, garbage)


def test_resolves_finds_real_functions_only():
    for path in ("math.sqrt", "os.path.join", "urllib.parse.quote", "xml.sax.saxutils.escape", "len", "str.join"):
        assert resolves(path), path
    for path in ("math.squareroot", "math.pi", "os.path.joinx", "nosuchmodule.f", "math.sqrt.x", "class.f", ""):
        assert not resolves(path), path


def test_resolves_never_imports_outside_the_standard_library(tmp_path, monkeypatch):
    assert "numpy" in sys.modules and not resolves("numpy.sqrt")  # installed and imported, still not stdlib
    outsider = next((n for n in ("datasketch", "sacrebleu", "peft", "kaleido")
                     if n not in sys.modules and importlib.util.find_spec(n)), None)
    if outsider is not None:
        before = set(sys.modules)
        assert not resolves(f"{outsider}.anything")
        assert set(sys.modules) == before
    # stdlib modules with import side effects are never imported ("this" prints; antigravity opens a
    # browser, so it is checked without calling resolves)
    assert not resolves("this.s") and "this" not in sys.modules
    assert not apicalls._is_stdlib_module("antigravity") and "antigravity" not in sys.modules
    # a file named like a stdlib module, found first on sys.path, is not the standard library: never run
    marker = tmp_path / "ran.txt"
    if "poplib" not in sys.modules:
        (tmp_path / "poplib.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef POP3(): pass\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        assert not resolves("poplib.POP3")
        assert "poplib" not in sys.modules and not marker.exists()
    # a module inside the standard library's folder but not named in sys.stdlib_module_names: not imported
    (tmp_path / "notstdlib_helper.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(): pass\n")
    monkeypatch.setattr(apicalls, "_stdlib_dirs", lambda: (str(tmp_path.resolve()),))
    assert not resolves("notstdlib_helper.f")
    assert "notstdlib_helper" not in sys.modules and not marker.exists()


def test_generated_text_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = [f"__import__('os').system('touch {marker}')", f"os.system('touch {marker}')",
            f"open({str(marker)!r}, 'w')", f"exec(\"open({str(marker)!r}, 'w')\")"]
    scores = score_calls(evil, ["math.sqrt(x)"] * len(evil))
    assert not marker.exists()
    assert scores["parsed"].tolist() == [False, True, True, True]  # __import__(...).system is no dotted name
    assert scores["hallucinated"].tolist() == [False, False, False, False]  # os.system, open, exec exist


def test_score_calls_and_metrics_by_hand():
    preds = ["math.sqrt(x)", "math.sqrt(y)", "math.squareroot(x)", "os.path.join(a,*p)", "the square root"]
    refs = ["math.sqrt(x)", "math.sqrt(x)", "math.sqrt(x)", "os.path.join(a, *p)", "math.sqrt(x)"]
    df = score_calls(preds, refs)
    assert df["exact"].tolist() == [True, False, False, False, False]
    assert df["ast"].tolist() == [True, False, False, True, False]
    assert df["parsed"].tolist() == [True, True, True, True, False]
    assert df["hallucinated"].tolist() == [False, False, True, False, False]  # garbage is unparseable, not hallucinated
    m = call_metrics(preds, refs)
    assert m == {"n": 5, "exact_match": 0.2, "ast_match": 0.4, "hallucination_rate": 0.25, "unparseable_rate": 0.2}
    nothing = call_metrics(["???"], ["math.sqrt(x)"])
    assert nothing["unparseable_rate"] == 1.0 and nothing["hallucination_rate"] != nothing["hallucination_rate"]  # NaN
    with pytest.raises(ValueError, match="one per reference"):
        score_calls(["a()"], [])
