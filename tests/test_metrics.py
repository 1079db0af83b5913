"""The metric seam and the probability metrics, each recomputed independently: by scikit-learn, by a float64 loop
written here, or on inputs whose answer is known by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score, roc_curve

from ticketctl.analysis import metrics as M
from ticketctl.data.tasks import get_task, predictions, score
from ticketctl.errors import UsageError


def _probs(rng, n, c, sharp=2.0):
    z = rng.normal(0, sharp, (n, c))
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_nll_matches_sklearn_log_loss():
    rng = np.random.default_rng(0)
    p = _probs(rng, 300, 3)
    y = rng.integers(0, 3, 300)
    assert M.nll(p, y) == pytest.approx(log_loss(y, p, labels=[0, 1, 2]), rel=1e-9)
    batch = np.stack([p, _probs(rng, 300, 3)])  # leading axis: one value per ensemble
    assert M.nll(batch, y)[1] == pytest.approx(log_loss(y, batch[1], labels=[0, 1, 2]), rel=1e-9)


def test_brier_is_the_multiclass_sum_by_hand():
    rng = np.random.default_rng(1)
    p = _probs(rng, 50, 4).astype(np.float32)
    y = rng.integers(0, 4, 50)
    total = 0.0
    for i in range(50):
        for c in range(4):
            total += (float(p[i, c]) - (1.0 if y[i] == c else 0.0)) ** 2
    assert M.brier(p, y) == pytest.approx(total / 50, rel=1e-12)
    # two classes: twice sklearn's binary Brier (which scores the positive class only)
    assert M.brier(np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 1])) == pytest.approx(2 * (0.2**2 + 0.6**2) / 2)


def _with_confidence(conf, correct, c=4):
    """Rows whose top probability is ``conf`` on class 0, the rest spread evenly; gold 0 when correct else 1."""
    rows = [[p] + [(1 - p) / (c - 1)] * (c - 1) for p in conf]
    return np.array(rows), np.array([0 if ok else 1 for ok in correct])


def test_ece_bins_known_by_hand():
    # 2 equal-width bins (0, .5], (.5, 1]: {.3}: |0 - .3| * 1/4; {.6, .7, .9}: |2/3 - 2.2/3| * 3/4
    p, y = _with_confidence([0.3, 0.6, 0.7, 0.9], [False, True, False, True])
    assert M.ece(p, y, bins=2) == pytest.approx(0.3 / 4 + (0.2 / 3) * 3 / 4)
    # equal mass: {.3, .6}: |.5 - .45| * 1/2; {.7, .9}: |.5 - .8| * 1/2
    assert M.adaptive_ece(p, y, bins=2) == pytest.approx(0.05 / 2 + 0.3 / 2)
    # a confidence of exactly .5 falls in the first bin (right-closed bins)
    p, y = _with_confidence([0.5, 0.75], [True, True], c=2)
    assert M.ece(p, y, bins=2) == pytest.approx(0.5 * 0.5 + 0.25 * 0.5)
    # perfectly calibrated bins: 0
    p, y = _with_confidence([0.75] * 4, [True, True, True, False])
    assert M.ece(p, y, bins=15) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(UsageError):
        M.ece(p, y, bins=0)


def test_adaptive_ece_uneven_bins_and_batch():
    # 5 examples, 2 bins: ranks 0-2 -> bin 0 (floor(r*2/5)), ranks 3-4 -> bin 1
    p, y = _with_confidence([0.9, 0.3, 0.5, 0.8, 0.4], [True, False, True, True, True])
    # bin 0: .3 (wrong), .4 (right), .5 (right): |2/3 - .4| * 3/5; bin 1: .8, .9 both right: |1 - .85| * 2/5
    want = abs(2 / 3 - 0.4) * 3 / 5 + 0.15 * 2 / 5
    assert M.adaptive_ece(p, y, bins=2) == pytest.approx(want)
    assert M.adaptive_ece(np.stack([p, p]), y, bins=2) == pytest.approx([want, want])


def _aurc_direct(conf, correct):
    order = sorted(range(len(conf)), key=lambda i: -conf[i])
    risks, wrong = [], 0
    for i, j in enumerate(order, start=1):
        wrong += 0 if correct[j] else 1
        risks.append(wrong / i)
    return sum(risks) / len(risks)


def test_aurc_and_eaurc_against_the_risk_coverage_curve():
    rng = np.random.default_rng(2)
    conf = rng.permutation(200) / 200 + 0.001  # distinct
    correct = rng.random(200) < 0.7
    assert M.aurc(conf, correct) == pytest.approx(_aurc_direct(list(conf), list(correct)), rel=1e-12)
    oracle_conf = np.where(correct, 2.0, 1.0) + conf * 1e-3  # every error ranked last
    oracle = _aurc_direct(list(oracle_conf), list(correct))
    assert M.oracle_aurc(correct) == pytest.approx(oracle, rel=1e-12)
    assert M.aurc(conf, correct) - M.oracle_aurc(correct) > 0.05  # a random ranking is far from the oracle
    assert M.aurc(oracle_conf, correct) - M.oracle_aurc(correct) == pytest.approx(0.0, abs=1e-12)


def test_entropy_decomposition():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (5, 40, 3))
    c = M.combine_members(logits, "probs", regression=False)
    member = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mean = member.mean(0)
    h = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    got = M.evaluate(["total_entropy", "expected_entropy", "mutual_information"], c, np.zeros(40, dtype=int))
    assert got["total_entropy"] == pytest.approx(h(mean).mean(), rel=1e-10)
    assert got["expected_entropy"] == pytest.approx(np.mean([h(member[m]).mean() for m in range(5)]), rel=1e-10)
    assert got["mutual_information"] == pytest.approx((h(mean) - h(member).mean(0)).mean(), rel=1e-10)
    assert got["mutual_information"] > 0
    # identical members disagree on nothing
    same = M.combine_members(np.repeat(logits[:1], 3, axis=0), "probs", regression=False)
    assert M.evaluate(["mutual_information"], same, np.zeros(40, dtype=int))["mutual_information"] == pytest.approx(
        0.0, abs=1e-12)
    # under --combine logits the split still comes from the members' own probabilities
    lg = M.combine_members(logits, "logits", regression=False)
    assert M.evaluate(["total_entropy"], lg, np.zeros(40, dtype=int))["total_entropy"] == pytest.approx(
        h(mean).mean(), rel=1e-10)


def test_temperature_scaling_recovers_a_known_temperature():
    """Labels drawn from softmax(s); the model reports s * 2 (over-confident): the fitted temperature is 2 within
    5% (n = 20,000 gives a standard error near 1%)."""
    rng = np.random.default_rng(4)
    s = rng.normal(0, 2, (20000, 3))
    p = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    y = (rng.random((20000, 1)) > p.cumsum(-1)).sum(-1)
    model = 2.0 * s
    log_probs = model - np.log(np.exp(model).sum(-1, keepdims=True))
    t = M.fit_temperature(log_probs, y)
    assert t == pytest.approx(2.0, rel=0.05)
    assert M.fit_temperature(s - np.log(np.exp(s).sum(-1, keepdims=True)), y) == pytest.approx(1.0, rel=0.05)
    scaled, reported = M.cross_fitted_scaling(log_probs, y, folds=5)
    assert reported == pytest.approx(t)
    assert M.nll(scaled, y) < M.nll(np.exp(log_probs), y) - 0.05  # scaling helps an over-confident model
    assert M.nll(scaled, y) == pytest.approx(log_loss(y, p), rel=0.02)  # and nearly reaches the truth


def test_cross_fitting_never_uses_a_scored_example():
    """An example's scaled probability depends only on the other folds: changing the labels of fold 0 changes no
    scaled probability in fold 0."""
    rng = np.random.default_rng(5)
    z = np.log(_probs(rng, 100, 2, sharp=3.0))
    y = rng.integers(0, 2, 100)
    a, _ = M.cross_fitted_scaling(z, y, folds=5)
    y2 = y.copy()
    fold0 = M.fold_of(100, 5) == 0
    y2[fold0] = 1 - y2[fold0]
    b, _ = M.cross_fitted_scaling(z, y2, folds=5)
    np.testing.assert_array_equal(a[fold0], b[fold0])
    assert not np.allclose(a[~fold0], b[~fold0])
    with pytest.raises(UsageError):
        M.cross_fitted_scaling(z[:8], y[:8], folds=5)


def test_ood_auroc_and_fpr_against_sklearn():
    rng = np.random.default_rng(6)
    a = rng.normal(0, 1, 300)
    b = rng.normal(1, 1, 200)
    want = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b])
    assert M.ood_auroc(a, b) == pytest.approx(want, rel=1e-12)
    ties_a, ties_b = np.round(a), np.round(b)  # many ties: each counts half
    assert M.ood_auroc(ties_a, ties_b) == pytest.approx(
        roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[ties_a, ties_b]), rel=1e-12)
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(300), np.ones(200)], np.r_[a, b], drop_intermediate=False)
    assert M.fpr_at_tpr(a, b, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)])


def test_gaussian_nll_by_a_direct_loop():
    rng = np.random.default_rng(7)
    gold = rng.uniform(0, 5, 30)
    pred = gold + rng.normal(0, 0.5, 30)
    spread = rng.uniform(0.1, 0.4, 30)
    total = 0.0
    for i in range(30):
        others = [j for j in range(30) if j % 5 != i % 5]
        noise = np.mean([max((gold[j] - pred[j]) ** 2 - spread[j] ** 2, 0.0) for j in others])
        var = spread[i] ** 2 + noise
        total += 0.5 * np.log(2 * np.pi * var) + (gold[i] - pred[i]) ** 2 / (2 * var)
    assert M.gaussian_nll(pred, spread, gold, folds=5) == pytest.approx(total / 30, rel=1e-12)


def test_the_seam_gives_the_task_metrics_unchanged():
    rng = np.random.default_rng(8)
    for name, n in (("mrpc", 60), ("cola", 60)):
        task = get_task(name)
        logits = rng.normal(0, 1, (3, n, 2))
        y = rng.integers(0, 2, n)
        c = M.combine_members(logits, "probs", regression=False)
        mean = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).mean(0)
        assert M.evaluate(list(task.metrics), c, y) == score(task, predictions(task, np.log(mean)), y)
    task = get_task("stsb")
    out = rng.normal(2, 1, (4, 50, 1))
    y = rng.uniform(0, 5, 50)
    c = M.combine_members(out, "probs", regression=True)
    assert M.evaluate(list(task.metrics), c, y) == score(task, out.mean(0)[:, 0], y)
    assert c.spread == pytest.approx(out[..., 0].std(0))


def test_registry_directions_and_vote():
    assert M.get("accuracy").higher_is_better and not M.get("nll").higher_is_better
    assert M.get("temperature").direction == "reported"
    keep, undefined = M.parse_scores("accuracy,nll,ece", regression=False, combine="vote")
    assert keep == ["accuracy"] and undefined == ["nll", "ece"]
    keep, _ = M.parse_scores("all", regression=False, combine="probs")
    assert {"nll", "brier", "ece", "adaptive_ece", "ts_nll", "ts_ece", "temperature", "aurc", "eaurc",
            "mutual_information"} <= set(keep) and "accuracy" not in keep
    with pytest.raises(UsageError, match="unknown score"):
        M.parse_scores("nope", regression=False, combine="probs")
    with pytest.raises(UsageError, match="regression"):
        M.parse_scores("nll", regression=True, combine="probs")
    # vote: predictions from vote shares, ties broken by mean probability
    logits = np.array([[[2.0, 0.0]], [[0.0, 1.0]]])  # one vote each; class 0 more probable on average
    assert M.combine_members(logits, "vote", regression=False).predictions.tolist() == [0]


# ---------------------------------------------------------------------------------------------- ensemble --scores


def _members(tmp_path, m=4, n=60, task="mrpc", seed=9):
    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    paths = []
    gold = rng.uniform(0, 5, n) if task == "stsb" else None  # drawn where the first member drew it before
    for i in range(m):
        if task == "stsb":
            labels = gold.astype(np.float32)
            outputs = (gold + rng.normal(0, 0.5, n)).astype(np.float32)[:, None]
        else:
            outputs = (np.eye(2)[labels] * 2 + rng.normal(0, 2, (n, 2))).astype(np.float32)
        meta = {"task": task, "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": str(i),
                "policy": "dense"}
        paths.append(str(write_artifact(tmp_path / f"{task}{i}.safetensors", "logits",
                                        {"outputs": outputs, "ids": np.arange(n), "labels": labels}, meta)))
    return paths, labels


def _cli(*args):
    import contextlib
    import io

    from ticketctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def test_ensemble_scores_in_json_match_the_functions(tmp_path):
    import json

    from ticketctl.store.artifacts import read_artifact

    paths, y = _members(tmp_path)
    code, out, err = _cli("ensemble", "--format", "json", "--scores", "nll,brier,ece,mutual_information",
                          "--ece-bins", "10", *paths)
    assert code == 0, err
    row = json.loads(out.splitlines()[0])
    logits = np.stack([read_artifact(p).tensors["outputs"] for p in paths]).astype(np.float64)
    member = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mean = member.mean(0)
    assert row["nll"] == pytest.approx(log_loss(y, mean), rel=1e-9)
    assert row["brier"] == pytest.approx(((mean - np.eye(2)[y]) ** 2).sum(-1).mean(), rel=1e-9)
    assert row["ece"] == pytest.approx(M.ece(mean, y, 10))
    assert row["accuracy"] == pytest.approx(np.mean(mean.argmax(-1) == y))
    # without --scores: the table the task always printed, no further column
    code, out, _ = _cli("ensemble", "--format", "json", *paths)
    assert set(json.loads(out.splitlines()[0])) == {"members", "combine", "accuracy", "f1"}


def test_ensemble_size_scores_average_over_combinations(tmp_path):
    import json

    from ticketctl.store.artifacts import read_artifact

    paths, y = _members(tmp_path)
    code, out, err = _cli("ensemble", "--format", "json", "--size", "2", "--scores", "nll,aurc", *paths)
    assert code == 0, err
    row = json.loads(out.splitlines()[0])
    logits = np.stack([read_artifact(p).tensors["outputs"] for p in paths]).astype(np.float64)
    member = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    pairs = list(itertools.combinations(range(4), 2))
    want = np.mean([log_loss(y, member[list(c)].mean(0)) for c in pairs])
    assert row["mean_nll"] == pytest.approx(want, rel=1e-9)
    aurcs = [_aurc_direct(list(member[list(c)].mean(0).max(-1)), list(member[list(c)].mean(0).argmax(-1) == y))
             for c in pairs]
    assert row["mean_aurc"] == pytest.approx(np.mean(aurcs), rel=1e-9)


def test_ensemble_scores_refusals_and_vote(tmp_path):
    paths, _ = _members(tmp_path)
    code, out, err = _cli("ensemble", "--scores", "nope", *paths)
    assert code != 0 and "unknown score" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli("ensemble", "--ece-bins", "0", "--scores", "ece", *paths)
    assert code != 0 and "--ece-bins" in err and "Traceback" not in err
    code, out, err = _cli("ensemble", "--format", "tsv", "--combine", "vote", "--scores", "nll,ece", *paths)
    assert code == 0 and "nll, ece undefined under --combine vote" in err
    assert "nll" not in out.splitlines()[0].split("\t")
    stsb, _ = _members(tmp_path, task="stsb")
    code, out, err = _cli("ensemble", "--scores", "nll", *stsb)
    assert code != 0 and "regression" in err
    code, out, err = _cli("ensemble", "--format", "tsv", "--scores", "all", *stsb)
    assert code == 0 and "gaussian_nll" in out.splitlines()[0], err


def test_class_axis_helpers_agree_with_numpy_ties_included():
    rng = np.random.default_rng(10)
    for c in (2, 3, 12):
        a = rng.integers(0, 3, (50, 7, c)).astype(np.float64)  # many ties
        best, arg = M._top(a)
        np.testing.assert_array_equal(arg, a.argmax(-1))
        np.testing.assert_array_equal(best, a.max(-1))
        np.testing.assert_allclose(M._csum(a), a.sum(-1))


def test_combination_values_match_one_ensemble_at_a_time():
    """The membership-matrix path (every k-member ensemble at once) against combine_members on each ensemble alone:
    classification under probs and logits, and regression (spread as the members' population std)."""
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 40)
    x = rng.normal(0, 2, (5, 40, 3))
    combos = np.array(list(itertools.combinations(range(5), 3)))
    names = ["accuracy", "nll", "brier", "ece", "aurc", "mutual_information", "ts_nll"]
    for how in ("probs", "logits"):
        got = M.combination_values(x, y, combos, names, how, regression=False)
        for b, combo in enumerate(combos):
            one = M.evaluate(names, M.combine_members(x[combo], how, regression=False), y)
            for name in names:
                assert got[name][b] == pytest.approx(one[name], rel=1e-9, abs=1e-12), (how, name)
    gold = rng.uniform(0, 5, 40)
    r = rng.normal(2, 1, (5, 40, 1))
    got = M.combination_values(r, gold, combos, ["pearson", "gaussian_nll", "spread_error_corr"], "probs", True)
    for b, combo in enumerate(combos):
        one = M.evaluate(["pearson", "gaussian_nll", "spread_error_corr"], M.combine_members(r[combo], "probs", True),
                         gold)
        for name, v in one.items():
            assert got[name][b] == pytest.approx(v, rel=1e-9), name


def test_member_entropies_only_for_the_metrics_that_read_them(monkeypatch):
    """weighted_values computes the members' entropies (and each ensemble's weighted mean of them) only when a named
    metric reads ``member_entropy``; the values are the same either way."""
    rng = np.random.default_rng(12)
    y = rng.integers(0, 3, 30)
    x = rng.normal(0, 2, (4, 30, 3))
    w = np.full((2, 4), 0.25)
    w[1] = [0.5, 0.5, 0, 0]
    reads = {n for n, m in M.REGISTRY.items() if m.member_entropy}
    assert reads == {"expected_entropy", "mutual_information"}
    want = M.weighted_values(x, y, w, ["nll", "mutual_information"], "probs", False)
    shapes = []
    real = M.entropy
    monkeypatch.setattr(M, "entropy", lambda p: shapes.append(np.shape(p)) or real(p))
    got = M.weighted_values(x, y, w, ["nll", "brier"], "probs", False)
    assert shapes == []  # no entropy computed without an entropy metric
    np.testing.assert_array_equal(got["nll"], want["nll"])
    again = M.weighted_values(x, y, w, ["mutual_information"], "probs", False)
    assert (4, 30, 3) in shapes  # the members' own entropies, once
    np.testing.assert_array_equal(again["mutual_information"], want["mutual_information"])
    member = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    h = lambda p: -(p * np.log(p)).sum(-1)  # noqa: E731
    assert again["mutual_information"][1] == pytest.approx((h(member[:2].mean(0)) - h(member[:2]).mean(0)).mean(),
                                                           rel=1e-10)


def test_shared_fits_are_not_reused_for_other_inputs():
    """ts_nll/ts_ece and aurc/eaurc share one computation per ensemble: a new ensemble (even built in a loop where the
    old one is freed) gets its own."""
    rng = np.random.default_rng(12)
    y = rng.integers(0, 2, 40)
    for _ in range(5):
        x = rng.normal(0, 3, (2, 40, 2))
        got = M.evaluate(["aurc", "ts_nll"], M.combine_members(x, "probs", regression=False), y)
        p = M.combine_members(x, "probs", regression=False).probs
        assert got["aurc"] == pytest.approx(_aurc_direct(list(p.max(-1)), list(p.argmax(-1) == y)), rel=1e-12)
        assert got["ts_nll"] == pytest.approx(M.nll(M.cross_fitted_scaling(np.log(p), y)[0], y), rel=1e-12)


def test_fold_temperatures_match_separate_fits():
    """The cross-fitting folds' temperatures are fitted from the full fit (a second-order start, then Newton's
    method to NEWTON_TOL): each within 1e-8 (relative) of a separate weighted fit of that fold's complement run to
    1e-9, and the scaled probabilities within 1e-7 of those the separate fits give (a small probability's relative
    error is its log's size times the temperature's). Over-confident and
    under-confident ensembles, two and three classes, 40 to 2,000 examples (the 8th-example start included)."""
    rng = np.random.default_rng(21)
    for n, c, sharp in [(40, 2, 1.0), (408, 2, 6.0), (1000, 3, 2.0), (2000, 2, 0.5)]:
        y = rng.integers(0, c, n)
        x = rng.normal(0, sharp, (3, n, c))
        x[np.arange(3)[:, None], np.arange(n), y] += sharp  # informative, so every fit has a minimum
        log_probs = x - np.log(np.exp(x).sum(-1, keepdims=True))
        scaled, reported = M.cross_fitted_scaling(log_probs, y, folds=5)
        fold = M.fold_of(n, 5)
        want = np.empty_like(scaled)
        for f in range(5):
            t = M.fit_temperature(log_probs, y, (fold != f).astype(np.float64), steps=100)
            z = log_probs[:, fold == f] / t[:, None, None]
            want[:, fold == f] = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
            _, others, _, zy = M._shifted(log_probs, y)
            got = 1.0 / M._fitted_betas(others, zy, 5)[1][:, f]
            np.testing.assert_allclose(got, t, rtol=1e-8, err_msg=f"n={n} C={c} fold {f}")
        np.testing.assert_allclose(scaled, want, rtol=1e-7, atol=1e-12)
        np.testing.assert_allclose(reported, M.fit_temperature(log_probs, y), rtol=1e-8)


def test_stable_argsort_is_a_stable_sort_with_ties():
    rng = np.random.default_rng(22)
    key = np.round(rng.random((50, 300)) * rng.integers(3, 2000, (50, 1))) / 7  # rows with many ties, rows with few
    np.testing.assert_array_equal(M.stable_argsort(key), np.argsort(key, axis=-1, kind="stable"))
    np.testing.assert_array_equal(M.stable_argsort(-key), np.argsort(-key, axis=-1, kind="stable"))


def test_sorted_pairs_order_as_a_stable_sort_also_with_ties_and_one_ulp_neighbours():
    """The packed-bit sort of the sorting metrics gives, bit for bit, what a stable argsort and its gathers give:
    rows without ties, with equal confidences, and with confidences one unit in the last place apart (which share
    the bits above the lowest and must not be ordered by correctness)."""
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 1.0, (6, 40))
    conf[1] = np.round(conf[1], 1)  # ties
    bits = conf.view(np.int64)
    bits[2, 5] = bits[2, 6] ^ 1  # neighbours one ulp apart, no exact tie
    conf[3, 0] = 0.0
    correct = rng.random((6, 40)) < 0.6
    correct[2, 5], correct[2, 6] = bits[2, 5] < bits[2, 6], bits[2, 5] > bits[2, 6]  # correctness against the order
    ordered, in_order, tied = M._sorted_pairs(conf, correct)
    order = np.argsort(conf, axis=-1, kind="stable")
    np.testing.assert_array_equal(ordered, np.take_along_axis(conf, order, axis=-1))
    np.testing.assert_array_equal(in_order, np.take_along_axis(correct, order, axis=-1))
    np.testing.assert_array_equal(tied, [False, True, False, False, False, False])


def test_batch_sort_metrics_with_tied_confidences_equal_the_direct_ones():
    """aurc and adaptive_ece of a batch share one sort (the descending order derived from the ascending one): with
    tied confidences they equal the stand-alone functions, which sort stably. The ties are exact in any summation
    order: 10 patterns of member outputs, each repeated at 6 examples with their own labels."""
    rng = np.random.default_rng(23)
    y = rng.integers(0, 2, 60)
    x = np.tile(rng.normal(0, 2, (6, 10, 2)), (1, 6, 1))
    combos = np.array([[0, 1, 2], [1, 3, 5], [0, 4, 5], [2, 3, 4]])
    got = M.combination_values(x, y, combos, ["aurc", "adaptive_ece"], "probs", regression=False)
    for b, combo in enumerate(combos):
        p = M.combine_members(x[combo], "probs", regression=False).probs
        conf, correct = p.max(-1), p.argmax(-1) == y
        assert len(set(conf.tolist())) == 10  # tied indeed
        assert got["aurc"][b] == pytest.approx(_aurc_direct(list(conf), list(correct)), rel=1e-12)
        assert got["adaptive_ece"][b] == pytest.approx(float(M.adaptive_ece(p, y)), rel=1e-12)


def test_fitted_metrics_do_not_depend_on_the_threads(monkeypatch):
    """ts_nll and ts_ece are scored chunk by chunk on metric_threads() threads: the same values, bit for bit, on one
    thread and on two (chunks made small so that there are several)."""
    rng = np.random.default_rng(24)
    y = rng.integers(0, 3, 50)
    x = rng.normal(0, 2, (7, 50, 3))
    combos = np.array(list(itertools.combinations(range(7), 3)))
    monkeypatch.setattr(M, "CHUNK_ELEMENTS", 600)  # 4 ensembles a chunk: 9 chunks
    got = {}
    for threads in ("1", "2"):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        assert M.metric_threads() == int(threads)
        got[threads] = M.combination_values(x, y, combos, ["ts_nll", "ts_ece", "nll"], "probs", regression=False)
    for name in ("ts_nll", "ts_ece", "nll"):
        np.testing.assert_array_equal(got["1"][name], got["2"][name])


def test_temperature_alone_is_the_full_fit_and_needs_no_folds():
    """`temperature` is the fit on all examples: defined on fewer examples than cross-fitting needs (8 < 2 x 5), and
    equal to fit_temperature within the fits' tolerance, alone or beside ts_nll."""
    rng = np.random.default_rng(25)
    y = rng.integers(0, 2, 8)
    x = rng.normal(0, 3, (3, 8, 2))
    x[:, np.arange(8), y] += 2.0
    c = M.combine_members(x, "probs", regression=False)
    want = M.fit_temperature(np.log(c.probs), y)
    assert M.evaluate(["temperature"], c, y)["temperature"] == pytest.approx(float(want), rel=1e-8)
    with pytest.raises(UsageError):
        M.evaluate(["ts_nll"], M.combine_members(x, "probs", regression=False), y)
    y40 = rng.integers(0, 2, 40)
    x40 = rng.normal(0, 3, (3, 40, 2))
    x40[:, np.arange(40), y40] += 2.0
    c40 = M.combine_members(x40, "probs", regression=False)
    both = M.evaluate(["ts_nll", "temperature"], c40, y40)
    assert both["temperature"] == pytest.approx(float(M.fit_temperature(np.log(c40.probs), y40)), rel=1e-8)
