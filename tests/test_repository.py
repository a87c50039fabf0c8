"""The repository stands alone: no file of it refers to a path above its root.

A user's clone has nothing beside it, so code, tests, benchmarks, notebooks and documents may only
name paths inside the repository. Two ways of climbing out are looked for in every tracked text
file: a run of ``../`` that leaves the repository — taken from the notebook's folder in a notebook
(where its kernel runs), from the repository root anywhere else (where commands run and paths in
documents start) — and ``Path(__file__)`` followed by more ``.parent`` steps (or a higher
``parents[N]``) than the file is deep. (`test_benchmarks` also runs the benchmarks from a copy of the repository with nothing beside
it, which catches what a pattern cannot.)
"""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOTDOTS = re.compile(r"(?<![\w.])((?:\.\./)+)")  # ../ ../../ ...
FILE_PARENTS = re.compile(r"__file__\)(?:\.resolve\(\))?((?:\.parent\b)*)(?:\.parents\[(\d+)\])?")
# deliberate: strings that are not paths to read, each with the reason
ALLOWED = {("tests/test_data.py", "../../../"): "a hostile archive member name, which extraction must refuse"}
NOT_SCANNED = {"tests/test_repository.py": "this file: its patterns and examples climb out on purpose"}


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = []
    for name in names.decode().split("\0"):
        path = REPO / name
        if name and name not in NOT_SCANNED and path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def escapes(path: Path, lines: list[str]) -> list[str]:
    """What in ``lines`` of the file ``path`` names a place above the repository root."""
    rel = path.relative_to(REPO)
    depth = len(rel.parts) - 1  # folders between the repository root and the file
    base_depth = depth if path.suffix == ".ipynb" else 0  # how many ../ stay inside
    found = []
    for number, line in enumerate(lines, 1):
        for m in DOTDOTS.finditer(line):
            ups = m.group(1).count("../")
            if ups > base_depth and (str(rel), m.group(1)) not in ALLOWED:
                found.append(f"{rel}:{number}: {line.strip()[:120]}")
        for m in FILE_PARENTS.finditer(line):
            steps = m.group(1).count(".parent") + (int(m.group(2)) + 1 if m.group(2) else 0)
            if steps > depth + 1:  # depth + 1 steps from the file reach the repository root
                found.append(f"{rel}:{number}: {line.strip()[:120]}")
    return found


def test_no_file_refers_to_a_path_above_the_repository_root():
    files = tracked_text_files()
    assert len(files) > 50 and any(f.suffix == ".ipynb" for f in files)
    found = [hit for f in files for hit in escapes(f, f.read_text(encoding="utf-8", errors="replace").splitlines())]
    assert not found, "paths above the repository root (a clean clone has nothing beside it):\n" + "\n".join(found)


def test_the_check_sees_each_way_of_climbing_out():
    bench = REPO / "benchmarks" / "common.py"  # depth 1: two steps up from the file reach the root
    assert escapes(bench, ['TEXT = Path(__file__).resolve().parents[2] / "beside" / "input.txt"'])
    assert escapes(bench, ["ROOT = Path(__file__).resolve().parent.parent.parent"])
    assert escapes(bench, ['text = open("../../beside/data/input.txt")'])
    assert escapes(REPO / "README.md", ["see ../beside/DESIGN.md"])
    assert escapes(bench, ["a text (the start of ``../beside/data/input.txt`` next to the repository)"])
    assert not escapes(bench, ["REPO_ROOT = Path(__file__).resolve().parent.parent",
                               "RESULTS = Path(__file__).resolve().parents[1] / 'results'"])
    assert not escapes(REPO / "notebooks" / "01_data.ipynb", ['"prepared_dir = \\"../data/prepared\\""'])
