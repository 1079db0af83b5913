"""Your own data (#17): CSV/TSV/JSON/JSONL files and `datasets` folders through the real CLI on the tiny model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import MRPC_ROWS
from ticketctl.data import custom
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import read_artifact

ROWS = [{"a": a, "b": b, "label": "para" if lab == "1" else "other"} for lab, a, b in MRPC_ROWS]


def write(path: Path, rows: list[dict], fmt: str | None = None) -> Path:
    fmt = fmt or custom.file_format(path)
    cols = list(rows[0])
    if fmt == "csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, cols)
            w.writeheader()
            w.writerows(rows)
    elif fmt == "tsv":
        path.write_text("\n".join(["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def files(tmp_path):
    return write(tmp_path / "train.csv", ROWS * 2), write(tmp_path / "dev.jsonl", ROWS[:8])


@pytest.fixture()
def own(tiny_model):
    return ["--model", str(tiny_model), "--epochs", "1", "--batch-size", "8", "--quiet", "--device", "cpu"]


def test_every_format_reads_the_same_split(tmp_path):
    """Quotes, commas and tabs-free text survive each format; the four give one content fingerprint."""
    rows = ROWS + [{"a": 'He said "yes, fine".', "b": "Commas, quotes \"and\" more.", "label": "para"}]
    task = custom.infer_task("t", ["a", "b", "label"], rows, ("a", "b"), "label", None, "x")
    fps = {fmt: custom.read_split(task, write(tmp_path / f"d.{fmt}", rows)).fingerprint
           for fmt in ("csv", "tsv", "json", "jsonl")}
    assert len(set(fps.values())) == 1, fps
    gz = tmp_path / "d.csv.gz"
    import gzip

    gz.write_bytes(gzip.compress((tmp_path / "d.csv").read_bytes()))
    assert custom.read_split(task, gz).fingerprint == fps["csv"]
    split = custom.read_split(task, tmp_path / "d.csv")
    assert split.texts[-1] == ('He said "yes, fine".', 'Commas, quotes "and" more.')
    assert task.labels == ("other", "para") and task.metrics == ("accuracy", "f1")


def test_task_inference_and_metric_override():
    ints = [{"text": "x", "label": v} for v in (2, 0, 1, 2)]
    t = custom.infer_task("t", ["text", "label"], ints, None, "label", None, "s")
    assert t.text_columns == ("text",) and t.labels == ("0", "1", "2") and t.metrics == ("accuracy",)
    floats = [{"text": "x", "score": v} for v in ("0.5", "3", "4.25")]
    t = custom.infer_task("t", ["text", "score"], floats, None, "score", None, "s")
    assert t.is_regression and t.metrics == ("pearson", "spearman")
    t = custom.infer_task("t", ["text", "label"], ints, None, "label", "spearman", "s")  # 0..2 ratings as scores
    assert t.is_regression and t.headline == "spearman"
    t = custom.infer_task("t", ["text", "label"], ints[:2] * 2, None, "label", "matthews", "s")
    assert t.labels == ("0", "2") and t.metrics == ("matthews", "accuracy", "f1")
    with pytest.raises(UsageError, match="--metric f1 needs two classes"):
        custom.infer_task("t", ["text", "label"], ints, None, "label", "f1", "s")
    with pytest.raises(UsageError, match="--text-columns"):
        custom.infer_task("t", ["q", "label"], ints, None, "label", None, "s")
    with pytest.raises(InputError, match="every training label is 'x'"):
        custom.infer_task("t", ["text", "label"], [{"text": "a", "label": "x"}] * 3, None, "label", None, "s")


def test_finetune_ensemble_stats_on_own_files(cli, own, files, tmp_path):
    train, dev = files
    data = ["--train-file", train, "--validation-file", dev, "--text-columns", "a,b", "--task", "para"]
    paths = []
    for seed in (1, 2):
        code, out, err = cli("finetune", *data, *own, "--seed", seed, "--out", tmp_path / "r")
        assert code == 0, err
        paths += out.split()
    art = read_artifact(paths[0], "logits")
    assert art.meta["task"] == "para" and paths[0].startswith(str(tmp_path / "r" / "para-logits-dev-dense-s1"))
    assert art.meta["task_spec"]["labels"] == ["other", "para"]
    assert np.array_equal(art.tensors["labels"], [1 if r["label"] == "para" else 0 for r in ROWS[:8]])
    code, out, err = cli("ensemble", *paths, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["members"] == 2 and {"accuracy", "f1"} <= set(json.loads(out))
    code, out, err = cli("stats", *paths, "--by", "seed", "--format", "tsv")
    assert code == 0, err
    # The tokenised splits are cached: a second seed reads them instead of tokenising again.
    assert len(list((tmp_path / "r" / "cache").glob("para-tokens-*.safetensors"))) == 2


def test_search_and_ticket_finetune_on_own_files(cli, own, files, tmp_path):
    train, dev = files
    data = ["--train-file", train, "--validation-file", dev, "--text-columns", "a,b"]
    code, out, err = cli("search", *data, *own, "--out", tmp_path)
    assert code == 0, err
    mask = out.split()[-1]
    assert Path(mask).name.startswith("custom-mask-base-30pct")
    code, out, err = cli("finetune", *data, *own, "--mask", mask, "--out", tmp_path)
    assert code == 0, err
    assert read_artifact(out.split()[0], "logits").meta["policy"] == "base"


def test_custom_tasks_with_other_definitions_do_not_mix(cli, own, files, tmp_path):
    train, dev = files
    base = ["--train-file", train, "--validation-file", dev, "--text-columns", "a,b", *own]
    _, one, _ = cli("finetune", *base, "--out", tmp_path)
    _, two, _ = cli("finetune", *base, "--metric", "f1", "--out", tmp_path)
    code, out, err = cli("ensemble", one.split()[0], two.split()[0])
    assert code == 3 and "cannot mix task definitions" in err and err.count("\n") == 1


@pytest.mark.parametrize("args, code, message", [
    (["--task", "mrpc"], 2, "is a GLUE task"),
    (["--data-dir", "x"], 2, "--data-dir is for GLUE tasks"),
    (["--text-columns", "a,zz"], 3, "no column(s) 'zz'"),
    (["--label-column", "y"], 3, "no label column 'y'"),
    (["--metric", "bleu"], 2, "--metric bleu"),
    (["--task", "a b"], 2, "a task name is"),
])
def test_bad_own_data_is_one_line(cli, own, files, tmp_path, args, code, message):
    train, dev = files
    got, out, err = cli("finetune", "--train-file", train, "--validation-file", dev, "--text-columns", "a,b", *own,
                        "--out", tmp_path, *args)
    assert got == code and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.glob("*.safetensors"))


def test_unknown_validation_label_and_missing_validation_file(cli, own, files, tmp_path):
    train, _ = files
    dev = write(tmp_path / "dev.json", ROWS[:3] + [{"a": "x", "b": "y", "label": "neither"}])
    code, _, err = cli("finetune", "--train-file", train, "--validation-file", dev, "--text-columns", "a,b", *own,
                       "--out", tmp_path)
    assert code == 3 and "row 4: label 'neither' is not one of the training labels (other, para)" in err
    code, _, err = cli("finetune", "--train-file", train, *own, "--out", tmp_path)
    assert code == 2 and "--train-file needs --validation-file" in err
    code, _, err = cli("finetune", *own, "--out", tmp_path)
    assert code == 2 and "--task is required" in err


def dataset_folder(tmp_path, monkeypatch, name: str, second: str):
    """A local folder of data files that datasets.load_dataset reads as a dataset: train.csv (the rows twice) and
    SECOND.csv (the first 8 rows), with the datasets cache inside tmp_path."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    folder = tmp_path / name
    folder.mkdir()
    write(folder / "train.csv", ROWS * 2)
    write(folder / f"{second}.csv", ROWS[:8])
    return folder


def test_dataset_folder_through_datasets(cli, own, tmp_path, monkeypatch):
    """--dataset goes through datasets.load_dataset (here a local folder of data files; a hub name the same way)."""
    folder = dataset_folder(tmp_path, monkeypatch, "my-data", "validation")
    code, out, err = cli("finetune", "--dataset", folder, "--text-columns", "a,b", *own, "--out", tmp_path / "r")
    assert code == 0, err
    art = read_artifact(out.split()[0], "logits")
    assert art.meta["task"] == "my-data" and art.meta["split_source"].startswith("dataset:")
    # The same rows from files make the same training data: one identity, so the run is reused.
    code, out2, err = cli("finetune", "--train-file", folder / "train.csv", "--validation-file",
                          folder / "validation.csv", "--text-columns", "a,b", "--task", "my-data", *own,
                          "--out", tmp_path / "r")
    assert code == 0 and out2 == out, err


def test_hub_classlabel_keeps_its_class_order(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    feats = datasets.Features({"text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos", "mixed"])})
    ds = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 1]}, features=feats),
        "validation": datasets.Dataset.from_dict({"text": ["d"], "label": [1]}, features=feats)})
    for split in ("train", "validation"):
        ds[split].to_parquet(str(tmp_path / "pq" / f"{split}.parquet"))
    cols, rows, source, names = custom.hub_table(str(tmp_path / "pq"), None, "train")
    task = custom.infer_task("t", cols, rows, None, "label", None, source, names.get("label"))
    assert task.labels == ("neg", "pos", "mixed")
    assert custom.split_of(task, cols, rows, source, "train").labels.tolist() == [2, 0, 1]


def test_a_header_only_training_file_is_one_line(cli, own, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("a,b,label\n")
    dev = write(tmp_path / "dev.csv", ROWS[:3])
    code, out, err = cli("finetune", "--train-file", train, "--validation-file", dev, "--text-columns", "a,b", *own,
                         "--out", tmp_path)
    assert code == 3 and "no examples" in err and err.count("\n") == 1


def test_dataset_without_validation_split_names_another(cli, own, tmp_path, monkeypatch):
    """A dataset with train/test only (IMDB's layout) exits 3 with a hint; --validation-split test scores on test,
    and --eval-split adds more splits of the dataset (a local folder knows train/validation/test only: here train)."""
    folder = dataset_folder(tmp_path, monkeypatch, "imdb-like", "test")
    code, out, err = cli("finetune", "--dataset", folder, "--text-columns", "a,b", *own, "--out", tmp_path / "r")
    assert code == 3 and "--validation-split" in err and out == ""
    code, out, err = cli("finetune", "--dataset", folder, "--text-columns", "a,b", "--validation-split", "test",
                         "--eval-split", "train", *own, "--out", tmp_path / "r")
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 2 and "-dev-" in paths[0] and "-train-" in paths[1]
    assert read_artifact(paths[0], "logits").meta["split_source"].endswith("[test]")
    code, out, err = cli("finetune", "--task", "mrpc", "--validation-split", "test", *own)
    assert code == 2 and "--dataset" in err
