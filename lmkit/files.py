"""Safe file writing shared by checkpoints, tokenizers and prepared data: hashes, atomic JSON, atomic
folder swaps. A reader never sees a half-written file or folder under its final name."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data``: a temp file in the same folder, fsync, then ``os.replace`` (all or nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # open() keeps the umask, mkstemp would not
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as UTF-8 JSON, atomically (see ``write_bytes_atomic``)."""
    write_bytes_atomic(path, json.dumps(obj, ensure_ascii=False).encode("utf-8"))


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (new names, renames) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file directly in ``folder``, then the folder itself."""
    for p in folder.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(folder)


def swap_into_place(new: Path, dest: Path, trash: Path) -> None:
    """Rename the finished folder ``new`` to ``dest``; an old ``dest`` moves to ``trash`` first and
    comes back if the rename fails, so one complete copy exists at every moment."""
    if dest.exists():
        os.replace(dest, trash)
    try:
        os.replace(new, dest)
    except BaseException:
        if trash.exists():
            os.replace(trash, dest)
        raise


_JSON_TYPES = {dict: "an object", list: "an array", object: "any value"}


def read_json(path, what: str = "file", fix: str = "fix or delete it", *, missing: Any = FileNotFoundError,
              kind: type = dict, error: type[Exception] = ValueError) -> Any:
    """The JSON value in ``path``, of type ``kind`` (``dict``, ``list``, or ``object`` for any); every way
    the file can be wrong is an ``error`` saying so in one sentence: ``{what} {path} is not valid JSON
    (...); {fix}``. A missing file returns ``missing``, or raises FileNotFoundError when ``missing`` is
    left at that default."""
    path = Path(path)
    if not path.is_file():
        if missing is FileNotFoundError:
            raise FileNotFoundError(f"{what} {path} does not exist; {fix}")
        return missing
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path} is not UTF-8 text (bad byte at offset {e.start}); {fix}") from None
    try:
        found = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}; "
                    f"truncated?); {fix}") from None
    except RecursionError:  # nesting deeper than the parser's stack: no file lmkit writes
        raise error(f"{what} {path} is not valid JSON (nested too deeply); {fix}") from None
    if not isinstance(found, kind):
        raise error(f"{what} {path} holds a JSON {type(found).__name__}, expected {_JSON_TYPES[kind]}; {fix}")
    return found


def read_json_object(path) -> dict:
    """A JSON object from ``path``, or ``{}`` when the file is missing, unreadable or not an object: for
    listings (run registries) that pass over a folder they cannot read instead of failing on it."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def check_shape(obj: Any, schema: dict, path, error: type[Exception] = ValueError) -> Any:
    """``obj`` (JSON read from ``path``) if it has the shape ``schema`` describes (JSON Schema, draft
    2020-12); else ``error`` naming the file, the field and what is wrong, so well-formed JSON of the
    wrong shape is refused at the door instead of failing deep inside the code that trusts it."""
    from jsonschema import Draft202012Validator

    problem = next(iter(sorted(Draft202012Validator(schema).iter_errors(obj), key=lambda e: list(e.path))), None)
    if problem is not None:
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in problem.path).lstrip(".") or "the file"
        message = problem.message if len(problem.message) <= 200 else problem.message[:200] + "…"
        raise error(f"{path}: {field}: {message}; the file is not as lmkit writes it")
    return obj
