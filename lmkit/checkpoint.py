"""Checkpoints: self-describing, atomic, verified, and never unpickled.

A checkpoint is a folder::

    step_000500/
        model.safetensors          weights of the uncompiled, unwrapped model
        config.json                format, GPTConfig, TrainConfig, step, parent checkpoint; for a
                                   classifier also "task": "classification" and its head's settings
        tokenizer.json             the tokenizer (lmkit.tokenizer JSON), when there is one
        metrics.json               the metric history up to this step
        trainer_state.safetensors  optimizer tensors and RNG states (for exact resume)
        trainer_state.json         the rest of the optimizer state, RNG states, data position
        manifest.json              SHA-256 and size of every file above; written last

It is written into a hidden temporary folder beside its final place and renamed into place only
when complete, so a crash or a full disk mid-save never leaves a half-written checkpoint under the
final name. Only safetensors and JSON are read back: a pickle inside a checkpoint is never run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file

from .classifier import GPTClassifier
from .files import check_shape, fsync_dir, fsync_tree, read_json, sha256, swap_into_place
from .model import GPT, GPTConfig, unwrap
from .tokenizer import tokenizer_from_dict

log = logging.getLogger(__name__)

FORMAT = "lmkit-checkpoint/1"
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step_(\d+)(?:_(\w+))?$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupted or of an unknown format."""


# The shape of each JSON file of a checkpoint (JSON Schema): read back, every file is checked against
# its schema before any value in it is used, so a hand-edited or forged file is refused with its field.
_INT0 = {"type": "integer", "minimum": 0}
MANIFEST_SCHEMA = {"type": "object", "required": ["format", "files"], "properties": {
    "format": {"const": FORMAT}, "files": {"type": "object", "additionalProperties": {
        "type": "object", "required": ["sha256", "bytes"],
        "properties": {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "bytes": _INT0}}}}}
CONFIG_SCHEMA = {"type": "object", "required": ["format", "step", "model"], "properties": {
    "format": {"const": FORMAT}, "step": _INT0, "model": {"type": "object"}, "train": {"type": ["object", "null"]},
    "parent": {"type": ["string", "null"]}, "task": {"enum": ["lm", "classification"]},
    "classifier": {"type": ["object", "null"]}}}
METRICS_SCHEMA = {"type": "array", "items": {"type": "object", "required": ["step"], "properties": {"step": _INT0}}}
_NUMBER = {"type": "number"}
_UINT32 = {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}  # a Mersenne Twister state word
TRAINER_STATE_SCHEMA = {"type": "object", "required": ["param_groups", "scalars", "numpy", "python", "step"],
                        "properties": {
    "param_groups": {"type": "array", "items": {"type": "object", "required": ["params", "lr"], "properties": {
        "params": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**31}},
        "lr": _NUMBER, "weight_decay": _NUMBER, "eps": _NUMBER,
        "betas": {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}}}},
    "scalars": {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": _NUMBER}},
    "numpy": {"type": "array", "prefixItems": [{"const": "MT19937"}, {"type": "integer", "minimum": 0, "maximum": 624},
                                               {"enum": [0, 1]}, _NUMBER], "items": False, "minItems": 4},
    "python": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": 9}, {
        "type": "array", "items": _UINT32, "minItems": 625, "maxItems": 625}, {"type": ["number", "null"]}],
               "items": False, "minItems": 3},
    "step": {"type": "integer", "minimum": 0, "maximum": 2**62}, "world_size": {"type": "integer", "minimum": 1}}}


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    model_config: GPTConfig
    train_config: dict | None
    parent: str | None
    metrics: list
    task: str = "lm"  # "lm" (a GPT) or "classification" (a lmkit.classifier.GPTClassifier)
    classifier: dict | None = None  # n_classes, labels, pooling, class_weights, feature_norm of a classifier


# ----------------------------------------------------------------------------------------- writing

def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True), encoding="utf-8")



def _write_tensors(write, path: Path) -> None:
    """Run a safetensors ``write``; its failure (a full disk, no permission) becomes the OSError it is,
    with the errno safetensors reports, so callers see one kind of error for every write."""
    try:
        write()
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        raise OSError(int(code.group(1)) if code else errno.EIO, f"cannot write tensors ({e})", str(path)) from None


def weights_to_save(model: torch.nn.Module, weights: dict | None = None) -> tuple[dict, dict]:
    """The tensors of ``model.safetensors`` and its metadata: ``weights`` (a full state dict, e.g.
    gathered from FSDP shards) or else the model's own, on the CPU. A shared (tied) parameter is stored
    once, under the first of its names in sorted order; the metadata maps each other name to it (what
    ``safetensors.torch.save_model`` writes, and ``load_model`` reads back)."""
    state = dict(model.state_dict() if weights is None else weights)
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    aliases = {}
    for group in names.values():
        kept, *others = sorted(group)
        for other in others:
            if state.pop(other, None) is not None:
                aliases[other] = kept
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, aliases


def save(path, model: GPT, tokenizer=None, *, step: int = 0, train_config: dict | None = None,
         trainer_state: tuple[dict, dict] | None = None, metrics: list | None = None,
         parent: str | None = None, weights: dict | None = None) -> Path:
    """Write a checkpoint folder at ``path`` atomically and return its path.

    ``trainer_state`` is ``(tensors, meta)`` from ``Trainer.state_dict()``; without it the checkpoint
    holds a model for inference and fine-tuning but cannot resume training exactly.
    ``model`` may also be a ``lmkit.classifier.GPTClassifier`` (read it back with ``load_classifier``);
    one with LoRA adapters still unmerged saves for resuming only: ``merge_lora`` it first.
    ``weights``: the full state dict to write instead of ``model.state_dict()`` (a model sharded with
    FSDP holds only its shard: the Trainer gathers the whole on rank 0 and passes it here).
    """
    path = Path(path)
    model = unwrap(model)
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"cannot save {path}: the tokenizer has {tokenizer.vocab_size} ids but the model's "
                         f"vocabulary has {model.config.vocab_size}; save the tokenizer the model was built for")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors, aliases = weights_to_save(model, weights)
        _write_tensors(lambda: save_file(tensors, str(tmp / "model.safetensors"), metadata=aliases or None), path)
        config = {"format": FORMAT, "step": step, "model": model.config.to_dict(), "train": train_config,
                  "parent": parent}
        config.update(model.checkpoint_config())  # a classifier adds its task and head
        _write_json(tmp / "config.json", config)
        if tokenizer is not None:
            _write_json(tmp / "tokenizer.json", tokenizer.to_dict())
        if metrics is not None:
            _write_json(tmp / "metrics.json", metrics)
        if trainer_state is not None:
            tensors, meta = trainer_state
            _write_tensors(lambda: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                             str(tmp / "trainer_state.safetensors")), path)
            _write_json(tmp / "trainer_state.json", meta)
        files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
        _write_json(tmp / MANIFEST, {"format": FORMAT, "files": files})
        fsync_tree(tmp)
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        swap_into_place(tmp, path, old)
        shutil.rmtree(old, ignore_errors=True)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("saved checkpoint %s", path)
    return path


# ----------------------------------------------------------------------------------------- reading

def verify(path) -> None:
    """Check the manifest: every file present with its recorded size and SHA-256. Raises CheckpointError."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise CheckpointError(f"{path}: no checkpoint folder here")
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no {MANIFEST}; the checkpoint is incomplete (its save was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{manifest_path}: not a valid {FORMAT} manifest") from None
    files = check_shape(manifest, MANIFEST_SCHEMA, manifest_path, CheckpointError)["files"]
    for name, entry in files.items():
        f = path / name
        if "/" in name or name.startswith(".") or not (f.is_file() or f.is_symlink()):
            raise CheckpointError(f"{path}: file {name!r} listed in the manifest is missing")
        if f.is_symlink():  # its content would live elsewhere, out of the checkpoint's keeping
            raise CheckpointError(f"{f}: is a symbolic link (to {os.readlink(f)}); a checkpoint holds its own "
                                  f"files: copy the real file in its place")
        if f.stat().st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
            raise CheckpointError(f"{f}: SHA-256 does not match the manifest; the file is corrupted")


def _read_json(path: Path, kind: type = object):
    return read_json(path, "checkpoint file", "the checkpoint is damaged; use another one of the run", kind=kind,
                     error=CheckpointError)


def list_checkpoints(run_or_dir) -> list[Path]:
    """Checkpoint folders under ``run/checkpoints`` (or the folder itself), oldest step first."""
    root = Path(run_or_dir)
    if (root / "checkpoints").is_dir():
        root = root / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def clean_stale(run_or_dir) -> list[str]:
    """Tidy what a killed save left beside the checkpoints: unfinished ``.step_N.tmp-*`` folders are
    removed; a ``.step_N.old-*`` copy is put back when ``step_N`` itself is missing (a crash between
    the two renames of an overwrite), removed otherwise. Call only while holding the run's lock."""
    root = Path(run_or_dir)
    root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    done = []
    for p in sorted(root.glob(".*")) if root.is_dir() else []:
        m = re.match(r"^\.(step_\w+)\.(tmp|old)-", p.name)
        if not m or not p.is_dir():
            continue
        final = root / m.group(1)
        if m.group(2) == "old" and not final.exists():
            os.rename(p, final)
            done.append(f"restored {final.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}")
    for line in done:
        log.info("%s: %s", root, line)
    return done


def newest_intact_checkpoint(run_or_dir) -> Path | None:
    """The newest checkpoint that passes ``verify``, or None. Temporary folders are skipped."""
    for p in reversed(list_checkpoints(run_or_dir)):
        try:
            verify(p)
            return p
        except CheckpointError as e:
            log.warning("skipping %s", e)
    return None


def latest_valid(run_or_dir) -> Path | None:
    """Deprecated name of ``newest_intact_checkpoint`` (kept for one release)."""
    warnings.warn("lmkit.checkpoint.latest_valid is now newest_intact_checkpoint", DeprecationWarning, stacklevel=2)
    return newest_intact_checkpoint(run_or_dir)


def resolve(path) -> Path:
    """A checkpoint folder, or a run folder (→ its newest valid checkpoint), verified."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    if (path / "checkpoints").is_dir() and not list_checkpoints(path):
        raise CheckpointError(f"{path}: this run folder has no checkpoints yet")
    if not (path / MANIFEST).exists() and list_checkpoints(path):  # a run folder or its checkpoints/
        best = newest_intact_checkpoint(path)
        if best is None:
            raise CheckpointError(f"{path}: none of its checkpoints is complete and intact")
        return best
    try:
        verify(path)
    except CheckpointError as e:
        previous = newest_intact_checkpoint(path.parent) if path.parent.exists() else None
        hint = f"; the newest valid checkpoint beside it is {previous}" if previous and previous != path else ""
        raise CheckpointError(f"{e}{hint}") from None
    return path


def read_info(path) -> CheckpointInfo:
    """Config, step, parent and metrics of a checkpoint (verified), without loading weights."""
    path = resolve(path)
    cfg = _read_json(path / "config.json")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'config.json'}: format {cfg.get('format') if isinstance(cfg, dict) else cfg!r}"
                              f" is not {FORMAT}")
    check_shape(cfg, CONFIG_SCHEMA, path / "config.json", CheckpointError)
    try:
        model_config = GPTConfig.from_dict(cfg["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: bad model config ({e})") from None
    metrics = _read_json(path / "metrics.json", list) if (path / "metrics.json").exists() else []
    check_shape(metrics, METRICS_SCHEMA, path / "metrics.json", CheckpointError)
    return CheckpointInfo(path, int(cfg["step"]), model_config, cfg.get("train"), cfg.get("parent"), metrics,
                          cfg.get("task", "lm"), cfg.get("classifier"))


def load(path, device="cpu") -> tuple[GPT, object]:
    """Rebuild ``(model, tokenizer)`` from a checkpoint folder (or a run folder: its newest valid one),
    or from the ``CheckpointInfo`` that ``read_info`` returned for it (verified then, not again).

    The model comes back in eval mode on ``device``; the tokenizer is None if none was saved.
    """
    info = path if isinstance(path, CheckpointInfo) else read_info(path)
    if info.task != "lm":
        raise ValueError(f"{info.path} holds a {info.task} model (a GPT with a classification head), not a "
                         f"language model; load it with lmkit.checkpoint.load_classifier(path)")
    model = GPT(info.model_config)
    load_weights(model, info.path, device)
    return model.to(device).eval(), load_tokenizer_of(info)


def load_classifier(path, device="cpu"):
    """Rebuild ``(classifier, tokenizer, labels)`` from a classifier checkpoint (or run folder), or from
    its ``CheckpointInfo`` (as ``load``).

    The classifier is a ``lmkit.classifier.GPTClassifier`` in eval mode on ``device``; ``labels`` are
    its class names, index = class id.
    """
    info = path if isinstance(path, CheckpointInfo) else read_info(path)
    if info.task != "classification":
        raise ValueError(f"{info.path} holds a language model, not a classifier; load it with "
                         f"lmkit.checkpoint.load(path)")
    spec = info.classifier if isinstance(info.classifier, dict) else {}
    if spec.get("lora_unmerged"):
        raise CheckpointError(f"{info.path} holds unmerged LoRA adapters (a checkpoint for resuming the LoRA run); "
                              f"save the model after lmkit.finetune.merge_lora(model) to get a loadable classifier")
    try:
        model = GPTClassifier(GPT(info.model_config), spec["n_classes"], labels=spec["labels"],
                              pooling=spec["pooling"], class_weights=spec.get("class_weights"),
                              feature_norm=spec["feature_norm"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{info.path / 'config.json'}: bad classifier settings ({e!r})") from None
    load_weights(model, info.path, device)
    return model.to(device).eval(), load_tokenizer_of(info), list(model.labels)


def load_tokenizer_of(info: CheckpointInfo):
    """The tokenizer saved with a checkpoint (verified by ``read_info``), or None. One whose vocabulary
    is not the model's is refused: its ids would index embeddings that do not exist, or leave some unused."""
    tok_path = info.path / "tokenizer.json"
    if not tok_path.exists():
        return None
    try:
        tokenizer = tokenizer_from_dict(_read_json(tok_path, dict))
    except ValueError as e:
        raise CheckpointError(f"{tok_path}: not a valid tokenizer ({e})") from None
    if tokenizer.vocab_size != info.model_config.vocab_size:
        raise CheckpointError(f"{tok_path}: the tokenizer has {tokenizer.vocab_size} ids but the model's vocabulary "
                              f"has {info.model_config.vocab_size}; the checkpoint is inconsistent (was tokenizer.json "
                              f"replaced?): use one saved by lmkit")
    return tokenizer


def check_same_tokenizer(info: CheckpointInfo, saved, other, what: str) -> None:
    """Refuse ``other`` (a tokenizer) unless it is the checkpoint's own ``saved`` one: with another
    vocabulary the same token ids would stand for other text. ``what`` names where ``other`` came from."""
    if saved.to_dict() == other.to_dict():
        return
    mine, theirs = saved.to_dict()["type"], other.to_dict()["type"]
    raise ValueError(f"{info.path} was trained with a {mine} tokenizer of {saved.vocab_size} ids, but {what} is a "
                     f"different {theirs} tokenizer of {other.vocab_size} ids: its token ids would mean other text. "
                     f"Use the data the run was trained on (or data prepared with its tokenizer)")


def load_weights(model: GPT, path, device="cpu") -> None:
    """Copy a checkpoint's weights into ``model`` (configs must match). Safetensors only."""
    file = Path(path) / "model.safetensors"
    try:
        missing, unexpected = load_model(unwrap(model), str(file), strict=False, device=str(device))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{file}: cannot read weights ({e})") from None
    if missing or unexpected:
        raise CheckpointError(f"{file}: weights do not fit the model (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})")


def load_trainer_state(path) -> tuple[dict, dict]:
    """``(tensors, meta)`` saved by ``save(trainer_state=...)``."""
    path = Path(path)
    file = path / "trainer_state.safetensors"
    if not file.exists():
        raise CheckpointError(f"{path}: holds no trainer state, so training cannot resume from it exactly")
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: cannot read ({e})") from None
    meta = check_shape(_read_json(path / "trainer_state.json", dict), TRAINER_STATE_SCHEMA, path / "trainer_state.json",
                       CheckpointError)
    expected = {"rng.torch": torch.get_rng_state(), "rng.batch": torch.Generator().get_state()}
    for key, like in expected.items():  # torch.set_rng_state takes nothing else
        found = tensors.get(key)
        if found is None or found.dtype != like.dtype or found.shape != like.shape:
            raise CheckpointError(f"{file}: {key} is {'missing' if found is None else f'{found.dtype} {tuple(found.shape)}'}"
                                  f", not a {like.dtype} {tuple(like.shape)} generator state")
    numpy_keys = tensors.get("rng.numpy")
    if numpy_keys is None or numpy_keys.shape != (624,):
        raise CheckpointError(f"{file}: rng.numpy is not numpy's 624-word generator state")
    return tensors, meta


# ------------------------------------------------------------------------- optimizer and RNG state

def flatten_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """Split an optimizer ``state_dict`` into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for pid, st in state_dict["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for pid, st in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def capture_rng() -> tuple[dict, dict]:
    """Python, numpy, torch and CUDA generator states as (tensors, JSON-able meta)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, internal, gauss = random.getstate()
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}
    return tensors, meta


def restore_rng(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    kind, pos, has_gauss, cached = meta["numpy"]  # JSON may give 3.0 for 3: the setters take ints only
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = meta["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), None if gauss is None else float(gauss)))
