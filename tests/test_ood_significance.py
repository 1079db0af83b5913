"""The seed test on out-of-distribution scores (issue #33): ``ood.OodScorer`` puts an OOD column (AUROC or FPR at
95% TPR of 1 - max probability, entropy, mutual information; regression: the members' spread) under Table 1's
permutation test over seeds and jackknife interval, in ``stats --ood`` and the protocol report's OOD section. Every
number is checked against scikit-learn on scores written out by hand and an explicit loop over all seed swaps,
never against the code under test."""

from __future__ import annotations

import json
from itertools import combinations, product

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score, roc_curve

from ticketctl.analysis import ood
from ticketctl.analysis.ensemble import load_ood
from ticketctl.analysis.significance import compare, group_combinations
from ticketctl.store.artifacts import write_artifact

SEEDS = 6


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _entropy(p):
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)


def _auroc(s_in, s_out):
    return roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out])


def _fpr95(s_in, s_out):
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out],
                            drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95 - 1e-12)])


def _art(path, outputs, split, seed, policy, labels=None, task="mnli", data="d1"):
    tensors = {"outputs": np.asarray(outputs, dtype=np.float32), "ids": np.arange(len(outputs))}
    if labels is not None:
        tensors["labels"] = np.asarray(labels)
    config = {"task": task, "seed": seed, "policy": policy, "lr": 1e-4}
    meta = {"task": task, "split": split, "data_fingerprint": data, "model_fingerprint": "m1", "seed": str(seed),
            "policy": policy, "config": config, "config_hash": f"{policy}{split}{seed}"}
    return str(write_artifact(path, "logits", tensors, meta))


def _schemes(tmp_path, sharper=1.0, n_in=50, n_out=40, regression=False, labelled=True):
    """Two schemes' members, seeds 0..SEEDS-1: ``dense`` (the reference) and ``base``, whose OOD outputs are flatter
    by ``sharper`` (1: the same distribution); a seed's two members share an effect (head, data order).
    Returns (paths, {policy: (x_in (m, n, C), x_out (m, n_out, C)) float64})."""
    rng = np.random.default_rng(5)
    labels = rng.uniform(0, 5, n_in) if regression else rng.integers(0, 3, n_in)
    paths, x = [], {}
    seed_in = [rng.normal(0, 1.0, (n_in, 3)) for _ in range(SEEDS)]
    seed_out = [rng.normal(0, 1.0, (n_out, 3)) for _ in range(SEEDS)]
    for policy, flat in (("dense", 1.0), ("base", sharper)):
        ins, outs = [], []
        for s in range(SEEDS):
            if regression:
                a = labels[:, None] + 0.3 * seed_in[s][:, :1] + rng.normal(0, 0.3, (n_in, 1))
                b = 2.5 + 0.3 * seed_out[s][:, :1] + rng.normal(0, 0.6 * flat, (n_out, 1))
            else:
                a = np.eye(3)[labels] * 3 + seed_in[s] + rng.normal(0, 1.0, (n_in, 3))
                b = (seed_out[s] + rng.normal(0, 1.0, (n_out, 3))) * 1.5 / flat
            a, b = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
            ins.append(a)
            outs.append(b)
            task = "stsb" if regression else "mnli"
            gold = (labels.astype(np.float32) if regression else labels) if labelled else None
            paths.append(_art(tmp_path / f"{policy}-dev-{s}.safetensors", a, "dev", s, policy, gold, task=task))
            paths.append(_art(tmp_path / f"{policy}-ood-{s}.safetensors", b, "ood", s, policy, task=task, data="d2"))
        x[policy] = (np.stack(ins), np.stack(outs))
    return paths, x


def _hand(x_in, x_out, members, column):
    """One ensemble's OOD column (members: indices), written out directly and scored by scikit-learn."""
    what, score = column.split("_")

    def uncertainty(x):
        if score == "spread":
            return x[members, :, 0].std(axis=0)
        member = _softmax(x[members])
        mean = member.mean(axis=0)
        return {"msp": 1 - mean.max(axis=1), "entropy": _entropy(mean),
                "mi": _entropy(mean) - _entropy(member).mean(axis=0)}[score]

    return (_auroc if what == "auroc" else _fpr95)(uncertainty(x_in), uncertainty(x_out))


def _protocol_mean(x, members, k, column):
    x_in, x_out = x
    return np.mean([_hand(x_in, x_out, list(c), column) for c in combinations(members, k)])


def _by_hand(x, column, k, a_name="base", b_name="dense"):
    """A's protocol mean minus B's (one seed group), the exact two-sided p over all 2^n swaps of a seed's two
    members, and the jackknife interval (leave a seed out of both schemes, t on n - 1 dof); n: the seeds."""
    both = (np.concatenate([x[a_name][0], x[b_name][0]]), np.concatenate([x[a_name][1], x[b_name][1]]))
    n = len(x[a_name][0])
    a, b = list(range(n)), list(range(n, 2 * n))
    cache = {}

    def mean(members):
        key = tuple(sorted(members))
        if key not in cache:
            cache[key] = _protocol_mean(both, members, k, column)
        return cache[key]

    observed = mean(a) - mean(b)
    swapped = []
    for swap in product([False, True], repeat=n):
        pa = [b[s] if w else a[s] for s, w in enumerate(swap)]
        pb = [a[s] if w else b[s] for s, w in enumerate(swap)]
        swapped.append(mean(pa) - mean(pb))
    p = np.mean(np.abs(swapped) >= abs(observed) - 1e-12)
    leave = np.array([mean([m for m in a if m != a[s]]) - mean([m for m in b if m != b[s]]) for s in range(n)])
    half = sps.t.ppf(0.975, n - 1) * np.sqrt((n - 1) / n * np.sum((leave - leave.mean()) ** 2))
    return observed, p, (observed - half, observed + half)


@pytest.mark.parametrize("column, k", [("auroc_entropy", 2), ("fpr95_msp", 2), ("auroc_mi", 2), ("auroc_msp", 1)])
def test_ood_difference_interval_and_p_match_a_direct_computation(tmp_path, column, k):
    paths, x = _schemes(tmp_path, sharper=1.15)
    paired = load_ood(paths, "ood")
    order = {(a.meta["policy"], int(a.meta["seed"])): i for i, a in enumerate(paired.inside.arts)}
    a, b = [order["base", s] for s in range(SEEDS)], [order["dense", s] for s in range(SEEDS)]
    scorer = ood.OodScorer(paired, column)
    c = compare(scorer, a, b, k, 1, paired=True, resamples=20000)
    observed, p_exact, (low, high) = _by_hand(x, column, k)
    assert c.diff == pytest.approx(observed, abs=1e-9)
    assert c.p == pytest.approx(p_exact, abs=0.01)  # Monte Carlo sigma <= 0.0035 at 20,000 permutations
    assert (c.low, c.high) == pytest.approx((low, high), abs=1e-9)
    assert scorer.higher_is_better == column.startswith("auroc")


def test_a_scheme_that_separates_better_is_reported_better(cli, tmp_path):
    """base's OOD outputs are much flatter than dense's: higher AUROC (a positive difference) and lower FPR95 (a
    negative one), both "better"; the same members against themselves: no significant difference."""
    paths, x = _schemes(tmp_path, sharper=3.0)
    for column, sign in (("auroc_entropy", 1), ("fpr95_entropy", -1), ("auroc_msp", 1)):
        code, out, err = cli("stats", *paths, "--by", "policy", "--ood", "ood", "--score", column, "--size", "2",
                             "--resamples", "999", "--format", "json")
        assert code == 0, err
        rows = {r["group"]: r for r in map(json.loads, out.splitlines())}
        want = (_protocol_mean(x["base"], range(SEEDS), 2, column)
                - _protocol_mean(x["dense"], range(SEEDS), 2, column))
        assert rows["base"]["vs_ref"] == pytest.approx(want, abs=1e-9)
        assert np.sign(rows["base"]["vs_ref"]) == sign and rows["base"]["p_value"] < 0.05, rows["base"]
        assert rows["base"]["verdict"] == "better" and rows["dense"]["verdict"] == "ref"
        assert rows["base"]["single_mean"] == pytest.approx(
            _protocol_mean(x["base"], range(SEEDS), 1, column), abs=1e-9)
    same, _ = _schemes(tmp_path / "same", sharper=1.0)
    code, out, err = cli("stats", *same, "--by", "policy", "--ood", "ood", "--score", "auroc_entropy", "--size", "2",
                         "--resamples", "999", "--format", "json")
    assert code == 0, err
    base = next(r for r in map(json.loads, out.splitlines()) if r["group"] == "base")
    assert base["verdict"] in ("no significant difference", "better", "worse")  # a real test, whichever way


def test_stats_ood_needs_no_labels(cli, tmp_path):
    """Detection scores need no gold labels: an unlabelled evaluation split gives the same table."""
    rows = []
    for labelled in (True, False):
        paths, _ = _schemes(tmp_path / str(labelled), sharper=1.3, labelled=labelled)
        code, out, err = cli("stats", *paths, "--by", "policy", "--ood", "ood", "--size", "3", "--resamples", "99",
                             "--format", "json")
        assert code == 0, err
        rows.append([json.loads(line) for line in out.splitlines()])
    assert rows[0] == rows[1]
    code, out, err = cli("stats", *[p for p in paths if "-dev-" in p], "--by", "policy")
    assert code != 0 and "unlabelled" in err  # without --ood an unlabelled split is still refused


@pytest.mark.parametrize("args, message", [
    (["--score", "nll"], "with --ood give one of"),
    (["--bootstrap", "10"], "not with --ood"),
    (["--combine", "vote"], "vote"),
    (["--cost"], "Table 1 only"),
])
def test_stats_ood_refuses_what_it_cannot_do(cli, tmp_path, args, message):
    paths, _ = _schemes(tmp_path)
    code, out, err = cli("stats", *paths, "--by", "policy", "--ood", "ood", *args)
    assert code != 0 and out == "" and message in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------- regression


def test_regression_ood_by_the_members_spread(cli, tmp_path):
    """STS-B-like members: the spread's AUROC and FPR95 for ensembles, against scikit-learn on the standard
    deviation of the members' predictions; none for one member (refused for a one-member ensemble, None in the
    k = 1 row); and the seed test by spread."""
    paths, x = _schemes(tmp_path, sharper=2.0, regression=True)
    dense = [p for p in paths if "/dense-" in p]
    code, out, err = cli("ensemble", *dense, "--ood", "ood", "--format", "json")
    assert code == 0, err
    (whole,) = [json.loads(line) for line in out.splitlines()]
    code, out, err = cli("ensemble", *dense, "--ood", "ood", "--size", "1-3", "--format", "json")
    assert code == 0, err
    by_k = {r["k"]: r for r in map(json.loads, out.splitlines())}
    x_in, x_out = x["dense"]
    for column in ("auroc_spread", "fpr95_spread"):
        assert whole[column] == pytest.approx(_hand(x_in, x_out, list(range(SEEDS)), column), abs=1e-9)
        assert by_k[1][f"mean_{column}"] is None
        for k in (2, 3):
            assert by_k[k][f"mean_{column}"] == pytest.approx(_protocol_mean(x["dense"], range(SEEDS), k, column),
                                                              abs=1e-9)
    assert "auroc_msp" not in whole and "pearson" in whole
    code, out, err = cli("ensemble", dense[0], dense[1], "--ood", "ood")
    assert code != 0 and "at least two members" in err and len(err.strip().splitlines()) == 1, err
    paired = load_ood(paths, "ood")
    order = {(a.meta["policy"], int(a.meta["seed"])): i for i, a in enumerate(paired.inside.arts)}
    a, b = [order["base", s] for s in range(SEEDS)], [order["dense", s] for s in range(SEEDS)]
    c = compare(ood.OodScorer(paired, "auroc_spread"), a, b, 2, 1, paired=True, resamples=20000)
    observed, p_exact, (low, high) = _by_hand(x, "auroc_spread", 2)
    assert c.diff == pytest.approx(observed, abs=1e-9) and c.diff > 0  # base's OOD predictions spread more
    assert c.p == pytest.approx(p_exact, abs=0.01)
    assert (c.low, c.high) == pytest.approx((low, high), abs=1e-9)
    assert np.isnan(ood.OodScorer(paired, "auroc_spread").scores(np.eye(len(paired.inside))[:2])).all()


def test_group_combinations_are_the_protocols():
    assert group_combinations([5, 3, 8, 1], 2, 2).tolist() == [[5, 3], [8, 1]]
    assert group_combinations([0, 1, 2], 1, 2).tolist() == [[0, 1], [0, 2], [1, 2]]
    assert group_combinations([0, 1], 1, 3).shape == (0, 3)


# ---------------------------------------------------------------------------------------------- the report


@pytest.mark.parametrize("task", ["mrpc", "stsb"])
def test_protocol_report_tests_ood_scores_against_baseline(cli, tiny_args, tmp_path, task):
    """A tiny protocol with --ood-file: the report's OOD section has, per column, BAGGING minus BASELINE for 2-member
    ensembles and single members with interval and p-value (checked against the artifacts by hand), the verdict by
    the column's direction, and stats --by scheme --ood gives the same numbers. STS-B: by the members' spread, for
    ensembles only."""
    from ticketctl.store.artifacts import read_artifact

    texts = tmp_path / "ood.jsonl"
    texts.write_text("".join(json.dumps({"sentence1": f"Rivers flood in spring {i}.", "sentence2": "Tea at four."})
                             + "\n" for i in range(12)))
    runs, report = tmp_path / "runs", tmp_path / "report"
    code, out, err = cli("protocol", *tiny_args, "--task", task, "--seeds", "1-3", "--schemes", "dense,bagging",
                         "--size", "2", "--resamples", "99", "--out", runs, "--report", report, "--ood-file", texts)
    assert code == 0, err
    section = json.loads((report / "report.json").read_text())["ood"]
    regression = task == "stsb"
    columns = ["auroc_spread", "fpr95_spread"] if regression else ood.columns(2)
    assert section["ref"] == "dense" and section["columns"] == columns and section["regression"] == regression
    x = {}
    for scheme in ("dense", "bagging"):
        def stack(split):
            files = sorted(runs.glob(f"{task}-logits-{split}-{scheme}-s*.safetensors"))
            return np.stack([read_artifact(p).tensors["outputs"] for p in files]).astype(np.float64)
        x[scheme] = (stack("dev"), stack("ood"))
        row = next(r for r in section["rows"] if r["scheme"] == scheme)
        assert row[f"ensemble_{columns[0]}"] == pytest.approx(_protocol_mean(x[scheme], range(3), 2, columns[0]))
        assert (f"single_{columns[0]}" in row) != regression
    tests = {t["score"]: t for t in section["tests"]}
    assert set(tests) == set(columns) and {t["scheme"] for t in section["tests"]} == {"bagging"}
    paths = sorted(str(p) for p in runs.glob(f"{task}-logits-*.safetensors"))
    for column, t in tests.items():
        diff, _, (low, high) = _by_hand(x, column, 2, "bagging", "dense")
        assert t["diff"] == pytest.approx(diff, abs=1e-9) and (t["low"], t["high"]) == pytest.approx((low, high))
        assert t["direction"] == ("higher is better" if column.startswith("auroc") else "lower is better")
        if column.endswith(("_mi", "_spread")):
            assert t["single_diff"] is None and t["p_single"] is None  # undefined for one member
        else:
            single, _, (low, high) = _by_hand(x, column, 1, "bagging", "dense")
            assert t["single_diff"] == pytest.approx(single, abs=1e-9)
            assert (t["single_low"], t["single_high"]) == pytest.approx((low, high))
        code, out, err = cli("stats", *paths, "--by", "scheme", "--ood", "ood", "--score", column, "--size", "2",
                             "--resamples", "99", "--format", "json")
        assert code == 0, err
        row = next(r for r in map(json.loads, out.splitlines()) if r["group"] == "bagging")
        assert (row["vs_ref"], row["diff_low"], row["diff_high"]) == pytest.approx((t["diff"], t["low"], t["high"]))
        assert row["p_value"] == t["p"] and row["verdict"] == t["verdict"]
        assert t["p"] >= 0.25  # 3 paired seeds: the smallest two-sided p is 2/8
    md = (report / "report.md").read_text()
    assert f"| bagging (BAGGING) | `{columns[0]}` |" in md and "permutation p-value over seeds" in md
