"""The real notebooks under papermill with overridden parameters: they run, and the values take effect.

(`make test` also runs every notebook with its defaults under nbval.)"""

import json

import nbformat
import pandas as pd
import pytest
import yaml

from lmkit import checkpoint, runs

pytestmark = [pytest.mark.slow, pytest.mark.network, pytest.mark.notebook]


def test_the_numbered_notebooks_take_overridden_parameters(tmp_path):
    prepared = tmp_path / "prepared"
    smoke = yaml.safe_load((runs.NOTEBOOK_DIR / "params" / "smoke.yaml").read_text())
    profile = {
        "all": {"prepared_dir": str(prepared)},
        "01_data": {"keep": "both", "tokenizer": "bpe", "vocab_size": 300, "compare_vocab_sizes": [300]},
        "02_attention": {"runs_root": str(tmp_path / "attention"), "quick_train_steps": 12},
        "03_training": {**smoke["03_training"], "runs_root": str(tmp_path / "training"), "run_name": "smoke"},
        "04_finetuning": {**smoke["04_finetuning"], "runs_root": str(tmp_path / "finetune")},
        "05_evaluation": {**smoke["05_evaluation"], "runs_root": str(tmp_path / "finetune")},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    notebooks = [runs.NOTEBOOK_DIR / f"{n}.ipynb" for n in ("01_data", "02_attention", "03_training", "04_finetuning",
                                                              "05_evaluation")]
    out = runs.run_pipeline(notebooks, profile=tmp_path / "p.yaml", runs_root=tmp_path / "runs")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["01_data"]["kept"] == summary["01_data"]["documents"] == 77  # keep=both removed nothing
    assert summary["01_data"]["vocab_size"] == 300
    assert json.loads((prepared / "meta.json").read_text())["tokenizer"] == "bpe"
    assert summary["02_attention"]["trained_checkpoint"] == "step_000012"  # no run there: it trained one
    assert (next((tmp_path / "attention").iterdir()) / "figures" / "attention.html").is_file()
    assert summary["03_training"]["steps"] == 20
    (run,) = (tmp_path / "training").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert run.name.endswith("-smoke") and config["model"]["n_layer"] == 1 and config["model"]["vocab_size"] == 300
    assert (run / "checkpoints" / "step_000020" / "manifest.json").is_file()
    assert {"config.json", "metrics.jsonl", "diagnostics.jsonl", "samples.txt", "attention"} <= {
        p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "attention").glob("step_*")) == [
        "step_000000.safetensors", "step_000010.safetensors", "step_000020.safetensors"]  # untrained, then each eval
    assert (run / "samples.txt").read_text().count("--- temperature") == 3
    training_cell = next(c for c in nbformat.read(out / "03_training.ipynb", as_version=4).cells
                         if "LiveLossPlot(" in c.source)
    # the live FigureWidget was replaced in place by a static figure: the saved notebook keeps a plot
    assert "application/vnd.plotly.v1+json" in training_cell.outputs[0].get("data", {})
    assert {p.name for p in out.iterdir()} >= {"01_data.html", "03_training.html", "summary.json"}

    # 04: no pretraining run under its runs_root, so it pretrained one on the BPE data, then fine-tuned
    (pretrain,) = (tmp_path / "finetune").glob("*-pretrain-for-finetune")
    finetune = tmp_path / "finetune" / summary["04_finetuning"]["run"]
    parent = checkpoint.newest_intact_checkpoint(pretrain)
    assert parent.name == "step_000012" and summary["04_finetuning"]["parent"].endswith("step_000012")
    config = json.loads((finetune / "config.json").read_text())
    assert config["kind"] == "finetune" and config["passage_chars"] == 64 and config["split_seed"] == 0
    test_passages = pd.read_csv(finetune / "test_passages.csv")
    assert set(test_passages["label"]) == {"comedy", "history", "tragedy"} and (test_passages["text"].str.len() == 64).all()
    found = runs.load_runs(finetune.parent)
    inner = found[found["run"].str.startswith(finetune.name + "/")]  # the container itself is not a run
    methods = {"full", "lora", "probe", "scratch"}
    assert len(inner) == 6 and set(inner["method"].dropna()) == methods and (inner["parent"] == str(parent)).all()  # + instruct, instruct-rat
    for method in methods:  # every method's checkpoint loads as a classifier and names its parent
        (sub,) = finetune.glob(f"*-{method}")
        last = checkpoint.newest_intact_checkpoint(sub)
        assert last.name == "step_000003" and checkpoint.read_info(last).parent == str(parent)
        model, tok, labels = checkpoint.load_classifier(last)
        assert labels == ["comedy", "history", "tragedy"] and tok.vocab_size == 300
    (instruct,) = finetune.glob("*-instruct")
    assert checkpoint.newest_intact_checkpoint(instruct).name == "step_000004"
    table = pd.read_csv(finetune / "classification.csv", index_col=0)
    assert list(table.index) == ["full", "lora", "probe", "scratch", "minilm", "majority baseline"]
    assert table.loc["lora", "trainable"] < table.loc["full", "trainable"] == table.loc["full", "total"]
    assert {"minilm_accuracy", "api_test_ast_match", "api_train_exact_match"} <= set(summary["04_finetuning"])
    assert (finetune / "api_calls.csv").is_file() and (out / "04_finetuning.html").is_file()
    (rat,) = finetune.glob("*-instruct-rat")  # section 5: retrieval-aware training, then Gorilla's matrix
    assert checkpoint.newest_intact_checkpoint(rat).name == "step_000004" and checkpoint.read_info(
        checkpoint.newest_intact_checkpoint(rat)).model_config.block_size > 128  # the context grew (RoPE)
    matrix = pd.read_csv(finetune / "api_calls_rat.csv", index_col=[0, 1])
    assert list(matrix.index) == [(m, d) for m in ("without RAT", "with RAT") for d in ("none", "BM25", "dense", "oracle")]
    assert {"rat_oracle_ast_match", "bm25_recall_at_1", "dense_recall_at_1"} <= set(summary["04_finetuning"])

    # 05 evaluated the one pretraining run there (on the BPE data), the classifiers under noise, the harness task
    evaluation = summary["05_evaluation"]
    assert evaluation["runs"] == 1 and evaluation["best_run"] == pretrain.name and evaluation["best_bits_per_char"] > 0
    assert {f"{m}_accuracy_noise_0.2" for m in methods} <= set(evaluation)
    assert 0 <= evaluation["harness_acc"] <= 1 and evaluation["harness_perplexity"] > 1
    (evaluated,) = (tmp_path / "finetune").glob("*-evaluation")
    table = pd.read_csv(evaluated / "language_modelling.csv")
    assert table["tokens"].tolist() == [2999] and table["tokenizer"].tolist() == ["bpe"]
    assert (evaluated / "harness.csv").is_file() and (evaluated / "harness" / "shakespeare_last_word.yaml").is_file()


def test_evaluation_notebook_skips_each_section_with_a_message_when_there_are_no_runs(tmp_path):
    out = runs.run_pipeline([runs.NOTEBOOK_DIR / "05_evaluation.ipynb"], runs_root=tmp_path / "out", log=lambda _: None,
                            profile=_profile(tmp_path, {"05_evaluation": {"runs_root": str(tmp_path / "empty")}}))
    summary = json.loads((out / "summary.json").read_text())["05_evaluation"]
    assert set(summary) == {"seconds", "run"}  # no numbers: nothing to evaluate
    text = "".join(o.get("text", "") for c in nbformat.read(out / "05_evaluation.ipynb", as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert "no pretraining run with a checkpoint" in text and "run 04_finetuning first" in text
    assert "the harness is skipped" in text


def _profile(tmp_path, profile: dict):
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_instruct_steps_0_skips_the_whole_of_task_2_in_04(tmp_path):
    """One skip_section call switches the section off: its marked cells run as `pass` (no output, no
    api numbers in the summary), and the cells after it still run."""
    smoke = yaml.safe_load((runs.NOTEBOOK_DIR / "params" / "smoke.yaml").read_text())
    profile = {"04_finetuning": {**smoke["04_finetuning"], "runs_root": str(tmp_path / "finetune"),
                                 "prepared_dir": str(tmp_path / "prepared"), "instruct_steps": 0,
                                 "methods": ["probe"]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(profile))
    out = runs.run_pipeline([runs.NOTEBOOK_DIR / "04_finetuning.ipynb"], profile=tmp_path / "p.yaml",
                            runs_root=tmp_path / "runs")
    cells = nbformat.read(out / "04_finetuning.ipynb", as_version=4).cells
    marked = [c for c in cells if c.cell_type == "code" and c.source.startswith(("# task 2", "# rat"))]
    assert len(marked) == 6 + 7 and all(not c.outputs for c in marked)  # task 2, and section 5 (RAT) with it
    switches = [c for c in cells if c.cell_type == "code" and c.source.startswith("skip_section(")]
    said = ["".join(o.get("text", "") for o in c.outputs) for c in switches]
    assert "task 2 skipped" in said[0] and "section 5 skipped" in said[1]
    summary = json.loads((out / "summary.json").read_text())["04_finetuning"]
    assert "probe_accuracy" in summary and not any(k.startswith("api_") for k in summary)
    finetune = tmp_path / "finetune" / summary["run"]
    assert finetune.is_dir() and not list(finetune.glob("*-instruct*")) and not (finetune / "api_calls.csv").exists()
