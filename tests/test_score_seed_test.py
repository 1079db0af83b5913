"""``stats --score NAME``: the seed test of docs/statistics.md on a registered metric of probabilities, lower is
better included (docs/calibration.md "The seed test on a calibration metric").

The simulation is ``test_significance.simulate``'s (a binary task, 300 examples, 8 paired seeds, members sharing an
example effect and a seed effect); ``benchmarks/bench_score_null.py`` runs the bigger one whose rates the docs give.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from test_analysis import logits_file
from test_significance import TASK, simulate
from ticketctl.analysis.metrics import MetricScorer, combination_values, nll
from ticketctl.analysis.significance import better, compare, protocol_scores
from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions


def _schemes(tmp_path, seeds=8, examples=200, sharp=3.0):
    """Paired seeds of two schemes with the same predictions: ``random``'s members are near the true log-odds the
    labels are drawn from, ``dense`` members' logits are theirs times ``sharp`` (over-confident), so random's NLL is
    lower by construction and the accuracy is the same."""
    rng = np.random.default_rng(11)
    truth = rng.normal(0, 2, examples)  # the true log-odds of class 1: labels are drawn from it
    labels = (rng.random(examples) < 1 / (1 + np.exp(-truth))).astype(np.int64)
    paths, outputs = [], []
    for s in range(seeds):
        margin = truth + rng.normal(0, 0.3, examples)  # near the truth: random's members are close to calibrated
        soft = np.stack([np.zeros(examples), margin], -1)
        for policy, o in (("dense", sharp * soft), ("random", soft)):
            outputs.append(o)
            paths.append(logits_file(tmp_path / f"{policy}{s}.safetensors", o, labels, policy=policy, seed=str(s)))
    return paths, np.array(outputs), labels


def _rows(out):
    return [json.loads(x) for x in out.strip().split("\n")]


def test_lower_nll_is_reported_better_with_its_sign_and_words(cli, tmp_path):
    paths, outputs, labels = _schemes(tmp_path)
    code, out, err = cli("stats", *paths, "--size", "3", "--score", "nll", "--format", "json")
    assert code == 0, err
    ref, row = _rows(out)
    assert (ref["group"], row["group"]) == ("dense", "random")
    # the numbers are NLLs of 3-member ensembles (mean of member probabilities), as ensemble --scores computes them
    probs = np.exp(outputs) / np.exp(outputs).sum(-1, keepdims=True)
    random_members = probs[1::2]
    by_hand = np.mean([nll(random_members[list(c)].mean(0), labels) for c in itertools.combinations(range(8), 3)])
    assert row["ensemble_mean"] == pytest.approx(by_hand, rel=1e-9)
    # lower is better: random's NLL is lower, so vs_ref (random minus dense) is negative, and it is "better"
    assert row["vs_ref"] < 0 and row["diff_high"] < 0 and row["p_value"] < 0.05
    assert row["verdict"] == "better" and ref["verdict"] == "ref"
    code, out, _ = cli("stats", *paths, "--size", "3", "--score", "nll", "--format", "markdown")
    assert "nll (lower is better; differences are group minus dense: negative favours the group)" in out
    # the other way round: dense against random is worse, with the opposite sign
    code, out, _ = cli("stats", *paths, "--size", "3", "--score", "nll", "--ref", "random", "--format", "json")
    row = _rows(out)[1]
    assert row["group"] == "dense" and row["vs_ref"] > 0 and row["verdict"] == "worse"
    # accuracy cannot tell them apart (averaged logits: the same predictions), and its table has no verdict column
    code, out, _ = cli("stats", *paths, "--size", "3", "--combine", "logits", "--format", "json")
    row = _rows(out)[1]
    assert row["vs_ref"] == 0 and "verdict" not in row


def test_score_refusals(cli, tmp_path):
    paths, _, _ = _schemes(tmp_path, seeds=2, examples=20)
    for args, message in ((["--score", "nll", "--combine", "vote"], "undefined under --combine vote"),
                          (["--score", "temperature"], "neither better nor worse"),
                          (["--score", "nope"], "unknown score"),
                          (["--score", "gaussian_nll"], "regression"),
                          (["--score", "nll", "--by", "sparsity", "--select", "worst"], "--select must be best")):
        code, out, err = cli("stats", *paths, "--size", "1", *args)
        assert code == 2 and message in err and out == "", (args, err)


def test_metric_scorer_is_the_ensemble_scores_path():
    """One path: MetricScorer's value of a k-member ensemble is combination_values' (ensemble --size k --scores)."""
    rng = np.random.default_rng(4)
    _, outputs, labels = simulate(rng, n=4, examples=60)
    combos = np.array(list(itertools.combinations(range(8), 3)))
    for name in ("nll", "brier", "ece", "ts_nll"):
        scorer = MetricScorer(TASK, outputs, labels, name, "logits")
        weights = np.zeros((len(combos), 8))
        np.put_along_axis(weights, combos, 1.0, axis=1)
        want = combination_values(outputs, labels, combos, [name], "logits", False)[name]
        np.testing.assert_allclose(scorer.scores(weights), want, rtol=1e-12)
        first = np.array(list(itertools.combinations(range(4), 3)))  # the protocol over members 0..3, one group
        np.testing.assert_allclose(protocol_scores(scorer, [0, 1, 2, 3], 3, 1),
                                   combination_values(outputs, labels, first, [name], "logits", False)[name],
                                   rtol=1e-12)
    with pytest.raises(UsageError, match="one registered metric"):
        MetricScorer(TASK, outputs, labels, "nll,brier")


def test_metric_scorer_remembers_ensembles_without_changing_a_value():
    """The scorer computes each distinct ensemble once (a permutation test meets the same ones again): values equal
    a fresh computation row for row, in any order and with repeats, and a subset's scorer does not reuse the
    parent's values (its columns are other members)."""
    from ticketctl.analysis.metrics import weighted_values

    _, outputs, labels = simulate(np.random.default_rng(3))
    scorer = MetricScorer(TASK, outputs, labels, "ts_nll")
    rng = np.random.default_rng(0)
    weights = (rng.random((30, len(outputs))) < 0.3).astype(float)
    weights[weights.sum(1) == 0, 0] = 1.0
    fresh = weighted_values(outputs.astype(np.float64), labels, weights / weights.sum(1, keepdims=True), ["ts_nll"],
                            "probs", False)["ts_nll"]
    again = np.concatenate([weights[::-1], weights, weights[:5]])
    assert np.array_equal(scorer.scores(weights), fresh)
    assert np.array_equal(scorer.scores(again), np.concatenate([fresh[::-1], fresh, fresh[:5]]))
    assert len(scorer._known) == len({w.tobytes() for w in weights})
    sub = scorer.subset(list(range(len(outputs)))[::-1])  # the same rows now mean other members
    assert np.allclose(sub.scores(weights), scorer.scores(weights[:, ::-1]), rtol=1e-12, atol=0)  # summed in
    assert not np.allclose(sub.scores(weights), fresh)  # another order: equal to rounding, not the parent's values


def test_better_words_follow_the_direction():
    assert better(-0.1, 0.01, higher_is_better=False) == "better"
    assert better(-0.1, 0.01, higher_is_better=True) == "worse"
    assert better(0.1, 0.01, higher_is_better=False) == "worse"
    assert better(0.1, 0.2, higher_is_better=False) == "no significant difference"
    assert better(0.1, float("nan"), higher_is_better=True) == "no significant difference"


def test_nll_seed_test_holds_its_level_under_the_null():
    """120 comparisons of two schemes drawn from one distribution, compared by the NLL of 3-member ensembles: p < 0.05
    in at most 10% (a 5% test's rate over 120 trials has binomial sd 2.0%: 10% is 2.5 sd above 5%), and the 95%
    jackknife interval holds 0 in at least 88% (2.5 sd below 95%). Measured here: 4.2% (5 of 120) and 95.8% (115 of
    120); docs/calibration.md gives the bigger simulation of benchmarks/bench_score_null.py."""
    rng = np.random.default_rng(0)
    rejected = covered = 0
    sims = 120
    for i in range(sims):
        _, outputs, labels = simulate(rng)
        c = compare(MetricScorer(TASK, outputs, labels, "nll"), list(range(8, 16)), list(range(8)), 3, 1,
                    paired=True, resamples=199, seed=i)
        rejected += c.p < 0.05
        covered += c.low <= 0 <= c.high
    assert rejected / sims <= 0.10, f"false-positive rate {rejected / sims:.3f}"
    assert covered / sims >= 0.88, f"interval coverage {covered / sims:.3f}"


def test_report_calibration_section_is_stats_score_and_a_reliability_diagram(tmp_path):
    """The protocol report's probability calibration section (``protocol.report._calibration``) on two schemes of 6
    paired seeds: each metric's rows are those of ``stats --score NAME`` on the same artifacts; random's lower NLL
    (by construction) is "better"; the reliability bins pool every ensemble's and every single member's examples;
    the markdown names the figure, which is drawn."""
    from types import SimpleNamespace

    from ticketctl.analysis import plots, stats
    from ticketctl.analysis.metrics import reliability
    from ticketctl.protocol import report

    paths, outputs, labels = _schemes(tmp_path, seeds=6, examples=60)
    members = {"dense": [p for p in paths if "dense" in p], "random": [p for p in paths if "random" in p]}
    plan = SimpleNamespace(seeds=list(range(6)), member_schemes=["dense", "random"], k=2, groups=1, resamples=199,
                           report_scores=[], data=DataOptions())
    data = report.analyse(plan, members, {})
    cal = data["calibration"]
    assert cal["metrics"] == ["nll", "brier", "ece", "ts_nll", "ts_ece"] and cal["skipped"] == []
    for name in cal["metrics"]:
        want = stats.table1(paths, size=2, resamples=199, score=name)
        got = [r for r in cal["rows"] if r["metric"] == name]
        assert [r["group"] for r in got] == [r.group for r in want.rows] == ["dense", "random"]
        for row, w in zip(got, want.rows):
            for key in ("single_mean", "ensemble_mean", "vs_ref", "diff_low", "diff_high", "p_value", "p_single"):
                assert row[key] == pytest.approx(getattr(w, key), nan_ok=True), (name, key)
            assert row["verdict"] == w.verdict
    nll_random = next(r for r in cal["rows"] if r["metric"] == "nll" and r["group"] == "random")
    assert nll_random["vs_ref"] < 0 and nll_random["verdict"] == "better"
    # reliability: single members pooled (6 members x 60 examples), ensembles of 2 (all 15 combinations)
    rel = cal["reliability"]["random"]
    probs = np.exp(outputs[1::2]) / np.exp(outputs[1::2]).sum(-1, keepdims=True)
    for key, want in reliability(probs, labels).items():
        np.testing.assert_allclose(rel["single"][key], want, rtol=1e-6)  # members stored as float32
    assert sum(rel["single"]["count"]) == 6 * 60 and sum(rel["ensemble"]["count"]) == 15 * 60 and rel["k"] == 2
    # a hand check of the top bin: the single members' examples with top confidence in (14/15, 1]
    conf = probs.max(-1)
    inside = (conf > 14 / 15) & (conf <= 1.0)
    assert rel["single"]["count"][14] == inside.sum()
    assert rel["single"]["accuracy"][14] == pytest.approx(np.mean((probs.argmax(-1) == labels)[inside]))
    lines = "\n".join(report.md_calibration(data, lambda g: g, "mrpc-reliability.png"))
    assert "## Probability calibration" in lines and "![Reliability diagram](mrpc-reliability.png)" in lines
    assert lines.count("| nll |") == 2 and "better" in lines
    figure = tmp_path / "reliability.png"
    plots.plot_reliability(cal["reliability"], str(figure), "test")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _regression_schemes(tmp_path, seeds=6, examples=40):
    """STS-B members of two schemes on paired seeds: ``dense`` members err with one spread everywhere (sd 0.8),
    ``random`` members with a spread that varies by example (sd 0.1 to 1.0: smaller on average, and the members'
    spread follows the error), so random's Gaussian NLL is lower and its spread-error correlation higher by
    construction."""
    rng = np.random.default_rng(7)
    gold = rng.uniform(0, 5, examples)
    sd = np.linspace(0.1, 1.0, examples)[rng.permutation(examples)]
    paths, outputs = [], []
    for s in range(seeds):
        for policy, o in (("dense", gold + rng.normal(0, 0.8, examples)), ("random", gold + rng.normal(0, sd))):
            outputs.append(o)
            paths.append(logits_file(tmp_path / f"{policy}{s}.safetensors", o[:, None], gold, task="stsb",
                                     policy=policy, seed=str(s)))
    return paths, np.array(outputs, dtype=np.float32).astype(np.float64), gold


def _gaussian_nll_by_hand(pred, spread, gold, folds=5):
    """docs/calibration.md's definition, example by example in float64: s^2 of example i is the mean over the
    examples of the other folds (j mod 5 != i mod 5) of max((y_j - pred_j)^2 - spread_j^2, 0)."""
    n = len(gold)
    total = 0.0
    for i in range(n):
        others = [j for j in range(n) if j % folds != i % folds]
        noise = sum(max((gold[j] - pred[j]) ** 2 - spread[j] ** 2, 0.0) for j in others) / len(others)
        var = spread[i] ** 2 + noise
        total += 0.5 * np.log(2 * np.pi * var) + (gold[i] - pred[i]) ** 2 / (2 * var)
    return total / n


def test_report_calibration_section_on_regression_is_stats_score_with_na_for_single_spread(tmp_path):
    """A regression task's calibration section (``protocol.report._calibration``): gaussian_nll and
    spread_error_corr rows equal ``stats --score NAME``'s on the same artifacts; the Gaussian NLL of single members
    (spread 0: the variance is the cross-fitted noise alone) and of 2-member ensembles, and the ensembles' spread-error
    correlation, equal a float64 computation here; spread_error_corr has no single-member number (None in the JSON,
    n/a in the markdown, and no p-value from ``stats`` either); the verdicts follow each metric's direction; no
    reliability diagram."""
    from types import SimpleNamespace

    from ticketctl.analysis import stats
    from ticketctl.protocol import report

    paths, outputs, gold = _regression_schemes(tmp_path)
    members = {"dense": [p for p in paths if "dense" in p], "random": [p for p in paths if "random" in p]}
    plan = SimpleNamespace(seeds=list(range(6)), member_schemes=["dense", "random"], k=2, groups=1, resamples=199,
                           report_scores=[], data=DataOptions())
    data = report.analyse(plan, members, {})
    cal = data["calibration"]
    assert cal["metrics"] == ["gaussian_nll", "spread_error_corr"] and cal["skipped"] == []
    assert cal["regression"] and cal["reliability"] is None and cal["single_undefined"] == ["spread_error_corr"]
    assert cal["directions"] == {"gaussian_nll": "lower is better", "spread_error_corr": "higher is better"}
    for name in cal["metrics"]:
        want = stats.table1(paths, size=2, resamples=199, score=name)
        got = [r for r in cal["rows"] if r["metric"] == name]
        assert [r["group"] for r in got] == [r.group for r in want.rows] == ["dense", "random"]
        for row, w in zip(got, want.rows):
            for key in ("ensemble_mean", "vs_ref", "diff_low", "diff_high", "p_value"):
                assert row[key] == pytest.approx(getattr(w, key), nan_ok=True), (name, key)
            for key in ("single_mean", "single_std", "ensemble_gain", "p_single"):
                if name == "spread_error_corr":  # undefined for one member: no number, not NaN's p-value
                    assert row[key] is None and np.isnan(getattr(w, key)), key
                else:
                    assert row[key] == pytest.approx(getattr(w, key), nan_ok=True), (name, key)
            assert row["verdict"] == w.verdict
    combos = list(itertools.combinations(range(6), 2))
    for i, g in enumerate(("dense", "random")):
        mine = outputs[i::2]
        rows = {r["metric"]: r for r in cal["rows"] if r["group"] == g}
        single = np.mean([_gaussian_nll_by_hand(o, np.zeros_like(o), gold) for o in mine])
        ens = np.mean([_gaussian_nll_by_hand(mine[list(c)].mean(0), mine[list(c)].std(0), gold) for c in combos])
        assert rows["gaussian_nll"]["single_mean"] == pytest.approx(single, rel=1e-9)
        assert rows["gaussian_nll"]["ensemble_mean"] == pytest.approx(ens, rel=1e-9)
        corr = np.mean([np.corrcoef(mine[list(c)].std(0), np.abs(mine[list(c)].mean(0) - gold))[0, 1]
                        for c in combos])
        assert rows["spread_error_corr"]["ensemble_mean"] == pytest.approx(corr, rel=1e-9)
    rows = {r["metric"]: r for r in cal["rows"] if r["group"] == "random"}
    assert rows["gaussian_nll"]["vs_ref"] < 0 and rows["gaussian_nll"]["verdict"] == "better"
    assert rows["spread_error_corr"]["vs_ref"] > 0 and rows["spread_error_corr"]["verdict"] == "better"
    text = "\n".join(report.md_calibration(data, lambda g: g, None))
    lines = text.splitlines()
    assert "## Probability calibration" in text and "No reliability diagram" in text and "![" not in text
    corr_rows = [line for line in lines if line.startswith("| spread_error_corr |")]
    assert len(corr_rows) == 2 and all(line.count("| n/a |") == 3 for line in corr_rows)
    assert all("n/a" not in line for line in lines if line.startswith("| gaussian_nll |"))
    # students (single members, never ensembled) get the metrics defined for one member: gaussian_nll, here
    # random's members standing in as students of dense in 2 seed groups
    from ticketctl.protocol import distilled

    loaded, grouped = report.load_schemes(paths)
    students = distilled.Students(loaded, grouped["dense"], grouped["random"], grouped["dense"], "dense",
                                  "student-dense", 2)
    taught = distilled.calibration(students, [n for n in cal["metrics"] if n not in cal["single_undefined"]])
    assert [r["metric"] for r in taught] == ["gaussian_nll"]
    assert taught[0]["single_mean"] == pytest.approx(
        np.mean([_gaussian_nll_by_hand(o, np.zeros_like(o), gold) for o in outputs[1::2]]), rel=1e-9)


def test_predict_ensemble_rows_carry_total_entropy_and_mutual_information(capsys):
    """By hand: members with probabilities (3/4, 1/4) and (1/4, 3/4) on one example average to (1/2, 1/2): total
    entropy ln 2 = 0.6931; each member's entropy -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.5623; mutual information 0.1308.
    Two members agreeing on (1/2, 1/2): ln 2 and 0."""
    from ticketctl.analysis.combine import combined_outputs
    from ticketctl.data.tasks import get_task
    from ticketctl.stages.predict import row_uncertainty, write_predictions

    outputs = np.array([[[np.log(3), 0.0], [0.0, 0.0]], [[0.0, np.log(3)], [0.0, 0.0]]])  # (members, examples, C)
    got = row_uncertainty(outputs)
    member_entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    np.testing.assert_allclose(got, [[np.log(2), np.log(2) - member_entropy], [np.log(2), 0.0]], atol=1e-12)
    assert round(got[0, 1], 4) == 0.1308
    task = get_task("mrpc")
    write_predictions(task, ["a", "b"], combined_outputs(task, outputs, "probs"), None, None, got)
    assert capsys.readouterr().out == ("id\tprediction\tp_0\tp_1\ttotal_entropy\tmutual_information\n"
                                       "a\t0\t0.5000\t0.5000\t0.6931\t0.1308\n"
                                       "b\t0\t0.5000\t0.5000\t0.6931\t0.0000\n")
