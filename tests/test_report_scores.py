"""``ticketctl protocol --report-score NAME``: the report's headline analyses (Table 1, the split of its difference,
Figure 3, the cost frontier) on any registered metric with a direction, compared with ``ticketctl stats --score``
and ``stats.gain_curves`` on the same artifacts; added to a finished run without training anything; refused in one
line before anything trains where the metric cannot be reported."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_analysis import logits_file

SEEDS = "1-4"


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _protocol(tiny_model, glue_dir, *args) -> list[str]:
    return [sys.executable, "-m", "ticketctl", "protocol", "--task", "mrpc", "--model", str(tiny_model), "--data-dir",
            str(glue_dir), "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--seeds", SEEDS, "--schemes",
            "dense,bagging", "--out", "runs", "--report", "report", "--resamples", "199", "--size", "2-3",
            "--jobs", "1", "--threads", "1", *map(str, args)]


def _run(cmd, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _trained(out: Path) -> list[str]:
    path = out / "protocol" / "journal.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["job"] for e in events if e["event"] == "done" and e["ran"]]


def _stats(args: list[str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "ticketctl", "stats", *args, "--format", "json"],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _same(got, want, what) -> None:
    if want is None:
        assert got is None, what
    elif isinstance(want, float):
        assert got == pytest.approx(want), what
    else:
        assert got == want, what


@pytest.mark.slow
def test_report_score_on_a_finished_run_trains_nothing_and_matches_stats_score(tiny_model, glue_dir, tmp_path):
    """BASELINE and BAGGING over 4 seeds, first without --report-score; the rerun with ``--report-score
    nll,accuracy`` trains nothing, keeps every artifact and adds one section per metric whose Table 1 is
    ``stats --score NAME``'s rows, whose Figure 3 is ``stats.gain_curves`` with that scorer and whose frontier is
    ``stats --by scheme --cost --score NAME``'s rows, signs and verdicts following the metric's direction."""
    from ticketctl.analysis import grouping, stats

    _run(_protocol(tiny_model, glue_dir), tmp_path)
    first = json.loads((tmp_path / "report" / "report.json").read_text())
    assert first["scores"] == {} and "## On " not in (tmp_path / "report" / "report.md").read_text()
    trained = _trained(tmp_path / "runs")
    assert len(trained) == 8
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.safetensors")}

    proc = _run(_protocol(tiny_model, glue_dir, "--report-score", "nll,accuracy"), tmp_path)
    assert proc.stdout.strip() == "report/report.md"
    assert _trained(tmp_path / "runs") == trained  # nothing ran again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.safetensors")} == made
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["run"]["jobs_run"] == 0 and data["plan"]["report_scores"] == ["nll", "accuracy"]
    assert data["table1"] == first["table1"]  # the headline sections are the same
    assert list(data["scores"]) == ["nll", "accuracy"]
    assert data["scores"]["nll"]["direction"] == "lower is better"
    assert data["scores"]["accuracy"]["direction"] == "higher is better"

    logits = [str(tmp_path / m["path"]) for m in data["members"]]
    members, grouped = stats.load_groups(logits, "scheme")
    for name, sec in data["scores"].items():
        higher = sec["direction"] == "higher is better"
        # Table 1: stats --score NAME on the same artifacts, the verdict by the metric's direction
        want = {r["group"]: r for r in _stats([*logits, "--size", "3", "--resamples", "199", "--score", name])}
        assert [r["group"] for r in sec["table1"]] == ["dense", "bagging"]
        for row in sec["table1"]:
            for key in ("members", "single_mean", "single_std", "ensemble_mean", "ensemble_gain", "vs_ref",
                        "diff_low", "diff_high", "p_value", "p_single", "p_paper", "verdict"):
                _same(row.get(key), want[row["group"]].get(key), (name, row["group"], key))
        bagging = next(r for r in sec["table1"] if r["group"] == "bagging")
        sign = 1 if higher else -1
        expected = ("no significant difference" if not bagging["p_value"] < 0.05 or bagging["vs_ref"] == 0 else
                    "better" if sign * bagging["vs_ref"] > 0 else "worse")
        assert bagging["verdict"] == expected
        # the split: single-member part + ensembling part = vs_ref, in the metric's units
        t1 = {r["group"]: r for r in sec["table1"]}
        (part,) = sec["parts"]
        assert part["single_diff"] == pytest.approx(t1["bagging"]["single_mean"] - t1["dense"]["single_mean"])
        assert part["single_diff"] + part["ensembling_diff"] == pytest.approx(t1["bagging"]["vs_ref"])
        assert part["p_single"] == pytest.approx(t1["bagging"]["p_single"])
        # Figure 3: stats.gain_curves with the metric's scorer: scheme minus reference, whatever the direction
        curves = stats.gain_curves(stats.scorer_of(members, "probs", name), grouped, grouping.pick_ref(grouped, None))
        assert [[x[0], x[1]] for x in sec["figure3"]["bagging"]] == [[k, pytest.approx(v)] for k, v in
                                                                      curves["bagging"]]
        assert sec["figure3"]["bagging"][2][1] == pytest.approx(bagging["vs_ref"])  # k = 3: Table 1's difference
        # the cost frontier: stats --by scheme --cost --score NAME
        want = _stats([*logits, "--by", "scheme", "--cost", "--score", name])
        assert [{k: v for k, v in r.items() if v is not None} for r in sec["frontier"]["rows"]] == [
            {k: (pytest.approx(v) if isinstance(v, float) else v) for k, v in r.items()
             if v is not None and k not in ("metric", "direction")} for r in want]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## On nll (lower is better)" in md and "a negative difference favours the scheme" in md
    assert "## On accuracy (higher is better)" in md and "a positive difference favours the scheme" in md
    assert md.count("| p_paper | verdict |") == 2  # the two sections' Table 1 (the calibration section's has none)
    for name in ("nll", "accuracy"):
        assert (tmp_path / "report" / f"mrpc-fig3-gain-{name}.png").is_file()
        assert (tmp_path / "report" / f"mrpc-frontier-{name}.png").is_file()
    # the resolved plan keeps the option and is still the same run: nothing to do
    assert 'report_score = "nll,accuracy"' in (tmp_path / "report" / "plan.toml").read_text()
    again = _run([sys.executable, "-m", "ticketctl", "protocol", "--plan", "report/plan.toml", "--dry-run"], tmp_path)
    assert again.stdout.splitlines()[-1] == "0 to run, 8 done"


@pytest.mark.parametrize("task, score, message", [
    ("mrpc", "lottery", "--report-score lottery: not a registered metric (choose from accuracy, "),
    ("mrpc", "nll,temperature", "--report-score temperature: a quantity reported, neither better nor worse"),
    ("mrpc", "gaussian_nll", "--report-score gaussian_nll: a regression metric, and this task is classification"),
    ("stsb", "nll", "--report-score nll: a classification metric, and this task is regression"),
    ("stsb", "spread_error_corr", "--report-score spread_error_corr: undefined for one member"),
    ("mrpc", "nll,nll", "--report-score 'nll,nll': give names separated by commas, each once"),
])
def test_report_scores_that_cannot_be_reported_are_one_line_before_training(cli, tiny_args, tmp_path, task, score,
                                                                             message):
    code, out, err = cli("protocol", *tiny_args, "--task", task, "--out", tmp_path / "runs", "--seeds", "1-2",
                         "--schemes", "dense", "--report-score", score)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_own_data_whose_labels_make_it_a_regression_refuses_a_classification_score(cli, tiny_args, tmp_path):
    """The kind of own data without --metric is known from its labels only: refused when the data is read, before
    any job runs; with --metric pearson the plan alone refuses it."""
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\nthe cat sat,0.5\na dog ran,1.5\nthe bird flew,2.5\n")
    args = [a for a in tiny_args if a not in ("--data-dir", tiny_args[tiny_args.index("--data-dir") + 1])]
    common = [*args, "--task", "mine", "--train-file", train, "--validation-file", train, "--out", tmp_path / "runs",
              "--seeds", "1-2", "--schemes", "dense", "--report-score", "brier"]
    for extra in ([], ["--metric", "pearson"]):
        code, out, err = cli("protocol", *common, *extra)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "--report-score brier: a classification metric, and this task is regression" in err, err
        assert not list(tmp_path.rglob("*.safetensors"))
    code, out, err = cli("protocol", *common[:-1], "gaussian_nll", "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "2 to run, 0 done", err


def test_report_score_comes_from_a_plan_file_and_goes_back_into_plan_toml(tmp_path):
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol.plan import build
    from ticketctl.protocol.report import plan_toml

    (tmp_path / "p.toml").write_text('task = "mrpc"\nseeds = "1-2"\nschemes = "dense"\nreport_score = ["nll", "ece"]\n')
    plan = build({}, TrainConfig(), DataOptions(), RunOptions(), tmp_path / "p.toml")
    assert plan.report_scores == ["nll", "ece"]
    (tmp_path / "back.toml").write_text(plan_toml(plan))
    assert build({}, TrainConfig(), DataOptions(), RunOptions(), tmp_path / "back.toml").report_scores == ["nll", "ece"]
    plain = build({"task": "mrpc", "seeds": "1-2", "schemes": "dense"}, TrainConfig(), DataOptions(), RunOptions())
    assert plain.report_scores == [] and "report_score" not in plan_toml(plain)
    # the option changes no job: the same graph with and without it
    assert plan.jobs_graph() == plain.jobs_graph()


def _synthetic(tmp_path, seeds: int = 6, examples: int = 300) -> tuple[dict, dict, np.ndarray]:
    """Two schemes of ``seeds`` paired seeds on a binary task whose labels are drawn from known log-odds: ``dense``
    sees them with little noise (right more often) but 4 times too sharp (over-confident: a high NLL), ``random``
    with more noise at the right scale (close to calibrated: a low NLL). Returns (scheme -> paths, scheme ->
    logits (seeds, examples, 2), labels)."""
    rng = np.random.default_rng(7)
    truth = rng.normal(0, 1.5, examples)
    labels = (rng.random(examples) < 1 / (1 + np.exp(-truth))).astype(np.int64)
    paths, outputs = {"dense": [], "random": []}, {"dense": [], "random": []}
    for s in range(1, seeds + 1):
        for scheme, noise, sharp, cost in (("dense", 0.2, 4.0, 1.0), ("random", 2.0, 0.4, 0.5)):
            o = np.stack([np.zeros(examples), sharp * (truth + rng.normal(0, noise, examples))], -1)
            outputs[scheme].append(o.astype(np.float32))
            paths[scheme].append(Path(logits_file(
                tmp_path / f"{scheme}{s}.safetensors", o, labels, policy=scheme, seed=str(s),
                cost={"relative_flops": cost, "flops_per_example": 2e9 * cost, "params": 1000, "nonzero_params": 1000,
                      "mean_tokens": 10.0})))
    return paths, {g: np.array(v, dtype=np.float64) for g, v in outputs.items()}, labels


def _by_hand(logits: np.ndarray, labels: np.ndarray, metric: str) -> list[float]:
    """The mean over every k-member combination of ``metric`` of the mean member probabilities, k = 1..members."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = e / e.sum(-1, keepdims=True)

    def value(p):
        if metric == "nll":
            return -np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)))
        return np.mean(p.argmax(-1) == labels)

    n = len(logits)
    return [float(np.mean([value(probs[list(c)].mean(0)) for c in itertools.combinations(range(n), k)]))
            for k in range(1, n + 1)]


def test_sections_follow_each_metrics_direction(tmp_path):
    """The calibrated, less accurate scheme against the over-confident, accurate one over 6 paired seeds: on NLL
    (lower is better) its differences are negative and its verdict is better; on accuracy (higher is better) they
    are negative too and its verdict is worse. Figure 3 and the frontier's means are the float64 means by hand, and
    report.md says each direction and which sign favours the scheme."""
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol import report
    from ticketctl.protocol.plan import build

    paths, outputs, labels = _synthetic(tmp_path)
    plan = build({"seeds": "1-6", "schemes": "dense,random", "size": "2-3", "resamples": 199,
                  "report_score": "nll,accuracy"}, TrainConfig(), DataOptions(), RunOptions())
    data = report.analyse(plan, paths, {})
    verdicts = {"nll": "better", "accuracy": "worse"}
    for name, sec in data["scores"].items():
        hand = {g: _by_hand(outputs[g], labels, name) for g in outputs}
        row = next(r for r in sec["table1"] if r["group"] == "random")
        assert row["vs_ref"] == pytest.approx(hand["random"][2] - hand["dense"][2])
        assert row["vs_ref"] < 0 and row["p_value"] < 0.05 and row["verdict"] == verdicts[name], (name, row)
        assert [x[:2] for x in sec["figure3"]["random"]] == [
            [k, pytest.approx(hand["random"][k - 1] - hand["dense"][k - 1])] for k in range(1, 7)]
        assert all(x[2] <= x[1] <= x[3] for x in sec["figure3"]["random"][:5])  # k = 6: one combination, no interval
        for r in sec["frontier"]["rows"]:
            assert r["mean"] == pytest.approx(hand[r["group"]][r["k"] - 1])
        # at budget 1 random affords 2 members, dense 1: by NLL only random is on the frontier, by accuracy only dense
        at_one = {r["group"]: r["on_frontier"] for r in sec["frontier"]["rows"] if r["budget"] == 1}
        assert at_one == {"dense": name == "accuracy", "random": name == "nll"}
    assert data["scores"]["nll"]["direction"] == "lower is better"
    md = "\n".join(report.md_scores(data, str, {"nll": {"figure3": "f.png", "frontier": None}}))
    assert "## On nll (lower is better)" in md and "so a negative difference favours the scheme" in md
    assert "## On accuracy (higher is better)" in md and "so a positive difference favours the scheme" in md
    assert "![Figure 3 on nll](f.png)" in md and "![Cost frontier on nll]" not in md
    # every number report.md prints for the section is in the data: here Figure 3's first cell
    first = data["scores"]["nll"]["figure3"]["random"][0]
    assert f"| {first[1]:+.4f} [{first[2]:+.4f}, {first[3]:+.4f}] |" in md


def test_a_temperature_scaled_score_on_too_few_examples_is_left_out_with_the_reason(tmp_path):
    """8 examples cannot be cross-fitted over 5 folds: ts_nll's section says so, nll's is there."""
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol import report
    from ticketctl.protocol.plan import build

    paths, _, _ = _synthetic(tmp_path, seeds=2, examples=8)
    plan = build({"seeds": "1-2", "schemes": "dense,random", "size": "2", "resamples": 199,
                  "report_score": "ts_nll,nll"}, TrainConfig(), DataOptions(), RunOptions())
    data = report.analyse(plan, paths, {})
    assert data["scores"]["ts_nll"] == {"metric": "ts_nll", "skipped": "8 examples: temperature scaling cross-fits "
                                        "over 5 folds, which needs at least 10"}
    assert len(data["scores"]["nll"]["table1"]) == 2
    md = "\n".join(report.md_scores(data, str, {}))
    assert "## On ts_nll\n\nLeft out: 8 examples: temperature scaling cross-fits over 5 folds" in md
    assert "## On nll (lower is better)" in md
