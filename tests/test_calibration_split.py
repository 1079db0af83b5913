"""Temperature scaling on a separate calibration split (issue #33, ``--calibration-split SPLIT``): ts_nll, ts_ece and
temperature fit one temperature per ensemble on the members' combined outputs over a labelled split apart from the
scored one, checked against a direct float64 computation (scipy's scalar minimiser for the temperature,
scikit-learn's log loss for the NLL), never against the code under test."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import logits_artifact
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import log_loss

C = 3


def _art(*args, task="mnli", **meta):
    return logits_artifact(*args, task=task, **meta)


def _members(tmp_path, m=3, n_eval=80, n_cal=120, seed=5, cal_labels=True):
    """m members' logits (miscalibrated: scaled by 3) on a labelled evaluation split ``dev`` and a calibration
    split ``cal``; returns (dev paths, cal paths, dev logits (m, n, C), dev labels, cal logits, cal labels)."""
    rng = np.random.default_rng(seed)
    y_dev, y_cal = rng.integers(0, C, n_eval), rng.integers(0, C, n_cal)
    x_dev = np.stack([3 * (np.eye(C)[y_dev] + rng.normal(0, 0.9, (n_eval, C))) for _ in range(m)])
    x_cal = np.stack([3 * (np.eye(C)[y_cal] + rng.normal(0, 0.9, (n_cal, C))) for _ in range(m)])
    x_dev, x_cal = x_dev.astype(np.float32).astype(np.float64), x_cal.astype(np.float32).astype(np.float64)
    dev = [_art(tmp_path / f"dev{i}.safetensors", x_dev[i], "dev", i, y_dev) for i in range(m)]
    cal = [_art(tmp_path / f"cal{i}.safetensors", x_cal[i], "cal", i, y_cal if cal_labels else None, data="d2")
           for i in range(m)]
    return dev, cal, x_dev, y_dev, x_cal, y_cal


def _combined_log_probs(x, combine):
    """The ensemble's log-probabilities from its members' logits (k, n, C), in float64."""
    if combine == "logits":
        return log_softmax(x.mean(axis=0), axis=-1)
    return np.log(softmax(x, axis=-1).mean(axis=0))


def _direct(x_dev, y_dev, x_cal, y_cal, combine="probs", bins=15):
    """(T, ts_nll, ts_ece) of one ensemble by hand: T minimises the calibration split's NLL of softmax(log p / T)
    (scipy), then the evaluation split is scored at that T (NLL by scikit-learn, ECE in equal-width bins)."""
    z_cal, z_dev = _combined_log_probs(x_cal, combine), _combined_log_probs(x_dev, combine)

    def cal_nll(t):
        return log_loss(y_cal, softmax(z_cal / t, axis=-1), labels=list(range(C)))

    # a minimiser of function values finds T to about sqrt(machine epsilon): values agree to 1e-7, not 1e-12
    t = minimize_scalar(cal_nll, bounds=(0.05, 50), method="bounded", options={"xatol": 1e-10}).x
    q = softmax(z_dev / t, axis=-1)
    conf, correct = q.max(axis=1), q.argmax(axis=1) == y_dev
    edges = np.linspace(0, 1, bins + 1)
    ece = sum(abs(conf[(conf > lo) & (conf <= hi)].sum() - correct[(conf > lo) & (conf <= hi)].sum())
              for lo, hi in zip(edges[:-1], edges[1:])) / len(conf)
    return t, log_loss(y_dev, q, labels=list(range(C))), ece


def _rows(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("combine", ["probs", "logits"])
def test_whole_ensemble_matches_a_direct_computation(cli, tmp_path, combine):
    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path)
    code, out, err = cli("ensemble", *dev, *reversed(cal), "--calibration-split", "cal", "--combine", combine,
                         "--scores", "ts_nll,ts_ece,temperature,nll", "--format", "json")
    assert code == 0, err
    (row,) = _rows(out)
    t, ts_nll, ts_ece = _direct(x_dev, y_dev, x_cal, y_cal, combine)
    assert row["temperature"] == pytest.approx(t, rel=1e-6)
    assert row["ts_nll"] == pytest.approx(ts_nll, abs=1e-7)
    assert row["ts_ece"] == pytest.approx(ts_ece, abs=1e-7)
    assert abs(np.log(row["temperature"])) > 0.1 and row["ts_nll"] < row["nll"]  # miscalibrated, by construction
    assert row["temperature_fit"] == "calibration split cal (120 examples)"


def test_each_size_averages_its_combinations_each_with_its_own_temperature(cli, tmp_path):
    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path)
    code, out, err = cli("ensemble", *cal, *dev, "--calibration-split", "cal", "--size", "1-2",
                         "--scores", "ts_nll,temperature", "--format", "json")
    assert code == 0, err
    rows = {r["k"]: r for r in _rows(out)}
    for k in (1, 2):
        direct = [_direct(x_dev[list(s)], y_dev, x_cal[list(s)], y_cal) for s in itertools.combinations(range(3), k)]
        assert rows[k]["mean_ts_nll"] == pytest.approx(np.mean([d[1] for d in direct]), abs=1e-7)
        assert rows[k]["mean_temperature"] == pytest.approx(np.mean([d[0] for d in direct]), rel=1e-6)
        assert rows[k]["temperature_fit"].startswith("calibration split cal")


def test_the_scored_labels_do_not_touch_the_temperature(cli, tmp_path):
    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path)
    flipped = [_art(tmp_path / f"flip{i}.safetensors", x_dev[i], "dev", i, (y_dev + 1) % C) for i in range(3)]
    got = []
    for scored in (dev, flipped):
        code, out, err = cli("ensemble", *scored, *cal, "--calibration-split", "cal", "--scores", "temperature",
                             "--format", "json")
        assert code == 0, err
        got.append(_rows(out)[0]["temperature"])
    assert got[0] == got[1]
    # cross-fitted over the evaluation split, the labels do move it; the table says which fit it was
    code, out, err = cli("ensemble", *flipped, "--scores", "temperature", "--format", "json")
    assert code == 0 and _rows(out)[0]["temperature"] != pytest.approx(got[0], rel=1e-3)
    assert _rows(out)[0]["temperature_fit"] == "cross-fitted over 5 folds"


def test_a_calibration_split_drawn_at_a_known_temperature_recovers_it(cli, tmp_path):
    rng = np.random.default_rng(11)
    z = rng.normal(0, 2.0, (20000, C))
    y = (rng.random(20000)[:, None] > np.cumsum(softmax(z / 2.5, axis=-1), axis=-1)).sum(axis=-1)  # drawn at T = 2.5
    dev_x = rng.normal(0, 2.0, (50, C))
    dev = _art(tmp_path / "dev.safetensors", dev_x, "dev", 0, rng.integers(0, C, 50))
    cal = _art(tmp_path / "cal.safetensors", z, "cal", 0, y, data="d2")
    code, out, err = cli("ensemble", dev, cal, "--calibration-split", "cal", "--scores", "temperature",
                         "--format", "json")
    assert code == 0, err
    assert _rows(out)[0]["temperature"] == pytest.approx(2.5, rel=0.05)


def test_stats_table1_scores_by_the_calibration_splits_temperature(cli, tmp_path):
    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path, m=4)
    code, out, err = cli("stats", *dev, *cal, "--calibration-split", "cal", "--score", "ts_nll", "--size", "2",
                         "--resamples", "99", "--format", "json")
    assert code == 0, err
    (row,) = _rows(out)
    singles = [_direct(x_dev[[i]], y_dev, x_cal[[i]], y_cal)[1] for i in range(4)]
    assert row["single_mean"] == pytest.approx(np.mean(singles), abs=1e-7)
    assert row["temperature_fit"] == "calibration split cal (120 examples)"


@pytest.mark.parametrize("args, code, words", [
    (["--combine", "vote"], 2, "--combine vote"),
    (["--scores", "nll"], 2, "fit a temperature"),
    (["--scores", "ts_nll", "--calibration-split", "test"], 2, "no logits artifacts of split 'test'"),
])
def test_refusals_of_the_command_line(cli, tmp_path, args, code, words):
    dev, cal, *_ = _members(tmp_path)
    full = ["--calibration-split", "cal", "--scores", "ts_nll", *args]
    got, out, err = cli("ensemble", *dev, *cal, *full)
    assert got == code and words in err and out == "" and "Traceback" not in err


def test_refusals_of_the_data(cli, tmp_path):
    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path, cal_labels=False)
    code, out, err = cli("ensemble", *dev, *cal, "--calibration-split", "cal", "--scores", "ts_nll")
    assert code == 2 and "unlabelled" in err and out == ""
    labelled = [_art(tmp_path / f"c{i}.safetensors", x_cal[i], "cal", i, y_cal, data="d2") for i in range(3)]
    code, out, err = cli("ensemble", *dev, *labelled[:2], "--calibration-split", "cal", "--scores", "ts_nll")
    assert code == 3 and "each member needs its outputs on both" in err
    stranger = _art(tmp_path / "s.safetensors", x_cal[2], "cal", 9, y_cal, data="d2")
    code, out, err = cli("ensemble", *dev, *labelled[:2], stranger, "--calibration-split", "cal", "--scores", "ts_nll")
    assert code == 3 and "of the same member" in err
    other_model = [_art(tmp_path / f"o{i}.safetensors", x_cal[i], "cal", i, y_cal, data="d2", model_fingerprint="m2")
                   for i in range(3)]
    code, out, err = cli("ensemble", *dev, *other_model, "--calibration-split", "cal", "--scores", "ts_nll")
    assert code == 3 and "cannot mix models" in err
    same = [_art(tmp_path / f"same{i}.safetensors", x_dev[i], "cal", i, y_dev) for i in range(3)]
    code, out, err = cli("ensemble", *dev, *same, "--calibration-split", "cal", "--scores", "ts_nll")
    assert code == 3 and "must not fit on the scored examples" in err
    code, out, err = cli("stats", *dev, *labelled, "--calibration-split", "cal")
    assert code == 2 and "--score ts_nll or ts_ece" in err
    code, out, err = cli("stats", *dev, *labelled, "--calibration-split", "cal", "--score", "ts_nll", "--cost")
    assert code == 2 and "only with Table 1" in err


def test_regression_is_refused(cli, tmp_path):
    rng = np.random.default_rng(0)
    y_dev, y_cal = rng.uniform(0, 5, 20), rng.uniform(0, 5, 30)
    dev = [_art(tmp_path / f"d{i}.safetensors", rng.normal(size=(20, 1)), "dev", i, y_dev, task="stsb")
           for i in range(2)]
    cal = [_art(tmp_path / f"c{i}.safetensors", rng.normal(size=(30, 1)), "cal", i, y_cal, task="stsb", data="d2")
           for i in range(2)]
    code, out, err = cli("ensemble", *dev, *cal, "--calibration-split", "cal", "--scores", "gaussian_nll")
    assert code == 2 and "regression" in err and out == ""


def test_a_scorer_over_some_members_keeps_their_calibration_outputs(tmp_path):
    from ticketctl.analysis import ensemble, metrics
    from ticketctl.analysis.members import load_ensemble_members

    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path, m=4)
    inside = load_ensemble_members(dev)
    options = ensemble.calibration_options(metrics.Options(), ["ts_nll"], inside, list(reversed(cal)), "cal", "probs")
    scorer = metrics.MetricScorer(inside.task, inside.outputs, inside.labels, "ts_nll", "probs", options)
    sub = scorer.subset([3, 1])
    assert sub.scores(np.eye(2)).tolist() == pytest.approx(scorer.scores(np.eye(4))[[3, 1]].tolist(), abs=1e-12)
    assert sub.scores(np.eye(2))[0] == pytest.approx(_direct(x_dev[[3]], y_dev, x_cal[[3]], y_cal)[1], abs=1e-7)
    # a resample of the scored examples keeps the temperature the calibration split gave
    examples = np.arange(0, 80, 2)
    q = softmax(np.log(softmax(x_dev[1], axis=-1)) / _direct(x_dev[[1]], y_dev, x_cal[[1]], y_cal)[0], axis=-1)
    got = scorer.scores(np.eye(4)[[1]], examples)[0]
    assert got == pytest.approx(log_loss(y_dev[examples], q[examples], labels=list(range(C))), abs=1e-7)


def test_it_goes_with_ood(cli, tmp_path):
    dev, cal, x_dev, y_dev, x_cal, y_cal = _members(tmp_path)
    rng = np.random.default_rng(1)
    oods = [_art(tmp_path / f"ood{i}.safetensors", rng.normal(0, 1, (30, C)), "ood", i, data="d3") for i in range(3)]
    code, out, err = cli("ensemble", *oods, *dev, *cal, "--calibration-split", "cal", "--ood", "ood", "--scores",
                         "ts_nll", "--format", "json")
    assert code == 0, err
    (row,) = _rows(out)
    assert "auroc_msp" in row
    assert row["ts_nll"] == pytest.approx(_direct(x_dev, y_dev, x_cal, y_cal)[1], abs=1e-7)
