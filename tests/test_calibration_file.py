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
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--seeds", "1-2", "--schemes", "dense", "--out",
                         tmp_path / "p", "--report", tmp_path / "r", "--calibration-file",
                         _calibration_file(tmp_path, labels=False))
    assert code == 3 and len(err.strip().splitlines()) == 1 and "--calibration-file needs labels" in err
    assert not list((tmp_path / "p").glob("*.safetensors")) and not (tmp_path / "r").exists()


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


def _members_with_calibration(tmp_path, n_dev=60, n_cal=40):
    """Dense, random and student-random members of seeds 1-6 (dev and calibration logits artifacts of each member,
    paired by their config hash; a student costs 0.75 of a dense member) and their margins on both splits."""
    import numpy as np

    from test_analysis import logits_file

    from ticketctl.store import paths

    rng = np.random.default_rng(11)
    labels = {"dev": rng.integers(0, 2, n_dev), "calibration": rng.integers(0, 2, n_cal)}
    members: dict[str, list] = {"dense": [], "random": [], "student-random": []}
    margins = {}
    for s in range(1, 7):
        for policy, signal, scale in (("dense", 0.6, 3.0), ("random", 0.5, 0.4), ("student-random", 0.7, 2.0)):
            cost = {"relative_flops": 0.75 if policy.startswith("student") else 1.0, "flops_per_example": 1e9}
            for split, data in (("dev", "d1"), ("calibration", "d2")):
                m = scale * ((2 * labels[split] - 1) * signal + rng.normal(0, 1.0, len(labels[split])))
                margins[policy, s, split] = m
                path = tmp_path / paths.logits_name("mrpc", split, policy, s, f"{policy}{s}" * 4)
                logits_file(path, np.stack([-m / 2, m / 2], -1), labels[split], policy=policy, seed=str(s),
                            split=split, data_fingerprint=data, config_hash=f"{policy}{s}", cost=cost,
                            split_source="cal.tsv" if split == "calibration" else "dev.tsv")
                if split == "dev":
                    members[policy].append(path)
    return members, margins, labels


def _hand_ts_nll(m_dev, y_dev, m_cal, y_cal):
    """One member's NLL on dev after temperature scaling fitted on the calibration split, by scipy."""
    import numpy as np
    from scipy.optimize import minimize_scalar

    def nll(m, y, t):
        z = np.where(y == 1, m, -m) / t  # the gold class's margin over the other
        return float(np.mean(np.logaddexp(0, -z)))

    t = np.exp(minimize_scalar(lambda lt: nll(m_cal, y_cal, np.exp(lt)), bounds=(-5, 5), method="bounded",
                               options={"xatol": 1e-10}).x)
    return nll(m_dev, y_dev, t)


def test_the_report_and_its_students_fit_on_the_calibration_split(tmp_path):
    """The calibration section of a plan with --calibration-file and --distill-from, on synthetic artifacts: the
    single members' and the students' ts_nll are each member's dev NLL at the temperature scipy fits on its own
    calibration outputs; without a calibration artifact for one member, both cross-fit and say so."""
    import numpy as np

    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol import report
    from ticketctl.protocol.plan import build

    members, margins, labels = _members_with_calibration(tmp_path)
    plan = build({"task": "mrpc", "seeds": "1-6", "schemes": "dense,random", "size": "2", "groups": "2",
                  "distill_from": "random", "resamples": "99"}, TrainConfig(),
                 DataOptions(calibration_file="cal.tsv"), RunOptions())
    data = report.analyse(plan, members, {})
    report._add_students(plan, data, members)
    cal = data["calibration"]
    assert cal["temperature_fit"] == cal["students_temperature_fit"] == "calibration split calibration (40 examples)"
    hand = {key: _hand_ts_nll(margins[key + ("dev",)], labels["dev"], margins[key + ("calibration",)],
                              labels["calibration"]) for key in {k[:2] for k in margins}}
    rows = {r["group"]: r for r in cal["rows"] if r["metric"] == "ts_nll"}
    for scheme in ("dense", "random"):
        assert rows[scheme]["single_mean"] == pytest.approx(np.mean([hand[scheme, s] for s in range(1, 7)]), abs=1e-6)
    student = {r["metric"]: r for r in cal["students"]}["ts_nll"]
    assert student["single_mean"] == pytest.approx(np.mean([hand["student-random", s] for s in range(1, 7)]),
                                                   abs=1e-6)
    md = report.md_calibration(data, str, None)
    assert any("fitted on all of the calibration file `cal.tsv`" in line for line in md)
    # one student without its calibration outputs: the students cross-fit, the members still fit on the split
    next(tmp_path.glob("mrpc-logits-calibration-student-random-s3-*.safetensors")).unlink()
    data = report.analyse(plan, members, {})
    report._add_students(plan, data, members)
    assert data["calibration"]["students_temperature_fit"] == "cross-fitted over 5 folds"
    assert data["calibration"]["temperature_fit"].startswith("calibration split")
    assert any("The students' `ts_` metrics: temperature cross-fitted" in line
               for line in report.md_calibration(data, str, None))


def test_report_score_sections_fit_where_the_calibration_section_does(tmp_path):
    """--report-score ts_nll with --calibration-file: the section's Table 1 is the calibration section's ts_nll row
    (each member's dev NLL at the temperature scipy fits on its calibration outputs) and names the fit; a metric
    without a temperature has no temperature_fit."""
    import numpy as np

    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol import report
    from ticketctl.protocol.plan import build

    members, margins, labels = _members_with_calibration(tmp_path)
    members.pop("student-random")
    plan = build({"task": "mrpc", "seeds": "1-6", "schemes": "dense,random", "size": "2", "groups": "2",
                  "resamples": "99", "report_score": "ts_nll,nll"}, TrainConfig(),
                 DataOptions(calibration_file="cal.tsv"), RunOptions())
    data = report.analyse(plan, members, {})
    section = data["scores"]["ts_nll"]
    assert section["temperature_fit"] == "calibration split calibration (40 examples)"
    assert "temperature_fit" not in data["scores"]["nll"]
    cal_rows = {r["group"]: r for r in data["calibration"]["rows"] if r["metric"] == "ts_nll"}
    for row in section["table1"]:
        scheme = row["group"]
        hand = np.mean([_hand_ts_nll(margins[scheme, s, "dev"], labels["dev"], margins[scheme, s, "calibration"],
                                     labels["calibration"]) for s in range(1, 7)])
        assert row["single_mean"] == pytest.approx(hand, abs=1e-6)
        assert row["ensemble_mean"] == pytest.approx(cal_rows[scheme]["ensemble_mean"], abs=1e-12)
    assert any("Its temperature is fitted: calibration split calibration" in line
               for line in report.md_scores(data, str, {}))
