"""``finetune --calibration-file`` / ``protocol --calibration-file`` (issue #33): a labelled file scored at the end of
training as the split ``calibration``, outside what makes a member finished (adding it retrains nothing), and the
protocol report's ts_nll/ts_ece fitting their temperature there, as ``stats --calibration-split calibration`` does
on the same artifacts."""

from __future__ import annotations

import json

import pytest

from ticketctl.store.artifacts import read_artifact

CAL_ROWS = [  # MRPC's columns, other examples than the tiny dev split's
    ("1", "The train left on time.", "The train departed as scheduled."),
    ("0", "The soup was cold.", "Mountains are tall."),
    ("1", "He painted the fence.", "The fence was painted by him."),
    ("0", "The lamp is broken.", "Children sing songs."),
    ("1", "The team scored twice.", "Two goals were scored by the team."),
    ("0", "Snow fell overnight.", "The printer is out of ink."),
]


def _calibration_file(tmp_path, labels=True):
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    lines += [f"{lab if labels else -1}\t{300 + i}\t{400 + i}\t{a}\t{b}" for i, (lab, a, b) in enumerate(CAL_ROWS)]
    path = tmp_path / ("cal.tsv" if labels else "cal-unlabelled.tsv")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_finetune_scores_the_calibration_file_and_refuses_an_unlabelled_one(cli, tiny_args, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "2", "--out", runs, *tiny_args,
                         "--calibration-file", _calibration_file(tmp_path))
    assert code == 0, err
    dev, cal = out.split()
    art = read_artifact(cal, "logits")
    assert art.meta["split"] == "calibration" and art.tensors["outputs"].shape == (6, 2)
    assert art.tensors["labels"].tolist() == [int(r[0]) for r in CAL_ROWS]
    assert art.meta["config"] == read_artifact(dev, "logits").meta["config"]  # the same member
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")}
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "2", "--out", runs, *tiny_args,
                         "--calibration-file", _calibration_file(tmp_path, labels=False))
    assert code == 3 and out == "" and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--calibration-file needs labels" in err
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")} == before  # nothing written


def test_a_finished_member_is_not_retrained_for_a_calibration_file(cli, tiny_args, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "4", "--out", runs, *tiny_args)
    assert code == 0, err
    (dev,) = out.split()
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")}
    tiny = [a for a in tiny_args if a != "--quiet"]
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "4", "--out", runs, *tiny,
                         "--calibration-file", _calibration_file(tmp_path))
    assert code == 0, err
    assert out.split() == [dev]  # reused: the dev artifact only, under the name it had
    assert "before --calibration-file was given" in err and "--split calibration" in err
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")} == before


def _stats_ts_nll(cli, devs, cals):
    code, out, err = cli("stats", *devs, *cals, "--calibration-split", "calibration", "--score", "ts_nll", "--by",
                         "scheme", "--size", "2", "--resamples", "99", "--format", "json")
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines() if line.strip()]
    return row


def test_protocol_report_fits_the_temperature_on_the_calibration_file(cli, tiny_args, tmp_path):
    cal_file = _calibration_file(tmp_path)
    plan = ["protocol", *tiny_args, "--task", "mrpc", "--seeds", "1-2", "--schemes", "dense", "--size", "2",
            "--resamples", "99"]
    code, out, err = cli(*plan, "--out", tmp_path / "first", "--report", tmp_path / "r1",
                         "--calibration-file", cal_file)
    assert code == 0, err
    cals = sorted((tmp_path / "first").glob("mrpc-logits-calibration-dense-s*.safetensors"))
    devs = sorted((tmp_path / "first").glob("mrpc-logits-dev-dense-s*.safetensors"))
    assert len(cals) == 2 and len(devs) == 2
    section = json.loads((tmp_path / "r1" / "report.json").read_text())["calibration"]
    # 8 dev examples: too few to cross-fit over 5 folds, but the calibration file fits the temperature
    assert "ts_nll" in section["metrics"] and section["skipped"] == []
    assert section["temperature_fit"] == "calibration split calibration (6 examples)"
    (row,) = [r for r in section["rows"] if r["metric"] == "ts_nll"]
    stats = _stats_ts_nll(cli, devs, cals)
    assert stats["temperature_fit"] == section["temperature_fit"]
    for key in ("single_mean", "ensemble_mean"):
        assert row[key] == pytest.approx(stats[key], abs=1e-9), key
    md = (tmp_path / "r1" / "report.md").read_text()
    assert f"fitted on all of the calibration file `{cal_file}`" in md
    # members finished without the file: nothing to run, nothing retrained, and the report says it cross-fits
    runs = tmp_path / "runs"
    code, out, err = cli(*plan, "--out", runs, "--report", tmp_path / "r2")
    assert code == 0, err
    without = json.loads((tmp_path / "r2" / "report.json").read_text())["calibration"]
    assert without["temperature_fit"] == "cross-fitted over 5 folds" and without["skipped"] == ["ts_nll", "ts_ece"]
    code, out, err = cli(*plan, "--out", runs, "--report", tmp_path / "r3", "--calibration-file", cal_file, "--dry-run")
    assert code == 0 and out.strip().splitlines()[-1] == "0 to run, 2 done", out
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")}
    code, out, err = cli(*plan, "--out", runs, "--report", tmp_path / "r3", "--calibration-file", cal_file)
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")} == before  # nothing trained
    missing = json.loads((tmp_path / "r3" / "report.json").read_text())["calibration"]
    assert missing["temperature_fit"] == "cross-fitted over 5 folds" and missing["calibration_missing"] == 2
    assert "2 member(s) have no outputs on it" in (tmp_path / "r3" / "report.md").read_text()
