"""``ensemble --size --fit-sample N`` (issue #33): the temperature-fitted metrics (ts_nll, ts_ece, temperature) of a
size k with more than N combinations per group are averaged over a seeded sample of N per group, with the mean's
Monte Carlo standard error; every other column stays exact over all combinations."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from ticketctl.analysis.ensemble import FIT_SAMPLE_SEED, fitted_combinations, sample_se, size_table
from ticketctl.analysis.members import Members
from ticketctl.analysis.metrics import combination_values
from ticketctl.data.tasks import get_task
from ticketctl.errors import UsageError
from ticketctl.store.artifacts import Artifact, write_artifact

FITTED = ["ts_nll", "ts_ece", "temperature"]


def _outputs(m, n, seed=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scale = rng.uniform(1.0, 2.5, m)[:, None, None]  # members differently over-confident: temperatures differ
    outputs = scale * (np.eye(2)[labels] * 0.8 + rng.normal(0, 1.0, (m, n, 2)))
    return outputs.astype(np.float32).astype(np.float64), labels


def _members(m=10, n=100, seed=3):
    outputs, labels = _outputs(m, n, seed)
    # seeds listed out of order, so that seed order differs from the members' order
    seeds = [(7 * i) % m for i in range(m)]
    arts = [Artifact(Path(f"m{i}.safetensors"), {"kind": "logits", "seed": str(s)}, {}, "")
            for i, s in enumerate(seeds)]
    return Members(get_task("mrpc"), "dev", arts, outputs, labels, np.arange(n))


def _draw(order, groups, k, limit):
    """The sample drawn again here: per group, sorted k-subsets of its positions from rng.choice, repeats skipped."""
    rng = np.random.default_rng([FIT_SAMPLE_SEED, k])
    size = len(order) // groups
    rows = []
    for g in range(groups):
        part = order[g * size:(g + 1) * size]
        seen = []
        while len(seen) < limit:
            c = tuple(sorted(rng.choice(size, size=k, replace=False).tolist()))
            if c not in seen:
                seen.append(c)
        rows += [[part[i] for i in c] for c in seen]
    return np.asarray(rows)


def _exact(members, k, groups=1):
    """{sorted member tuple: {metric: value}} for every k-member combination within groups."""
    order = members.in_seed_order()
    size = len(order) // groups
    combos = np.asarray([c for g in range(groups) for c in itertools.combinations(order[g * size:(g + 1) * size], k)])
    values = combination_values(members.outputs, members.labels, combos, FITTED, "probs", False)
    return {tuple(sorted(c)): {n: values[n][i] for n in FITTED} for i, c in enumerate(combos.tolist())}


def test_a_limit_at_or_above_the_combinations_is_exact():
    members = _members(m=8)  # 56 combinations of 3, 70 of 4
    exact = size_table(members, [2, 3, 4], scores=[*FITTED, "nll"], fit_sample=0)
    for limit in (70, 1000):
        got = size_table(members, [2, 3, 4], scores=[*FITTED, "nll"], fit_sample=limit)
        assert got == exact
    assert all(r.sampled == {} for r in exact.rows)


@pytest.mark.parametrize("m, groups, k, limit", [(10, 1, 4, 40), (12, 2, 3, 8)])
def test_a_sampled_mean_is_the_mean_over_the_sampled_combinations(m, groups, k, limit):
    members = _members(m=m)
    order = members.in_seed_order()
    drawn = fitted_combinations(order, groups, k, limit)
    assert np.array_equal(drawn, _draw(order, groups, k, limit))
    assert len({tuple(r) for r in drawn.tolist()}) == len(drawn) == groups * limit
    exact = _exact(members, k, groups)
    table = size_table(members, [k], groups=groups, scores=[*FITTED, "nll"], fit_sample=limit)
    (row,) = table.rows
    every = len(exact)
    for name in FITTED:
        sampled = np.asarray([exact[tuple(sorted(r))][name] for r in drawn.tolist()])
        assert row.other_means[name] == pytest.approx(sampled.mean(), abs=1e-12)
        info = row.sampled[name]
        assert (info["combinations"], info["of"]) == (groups * limit, every)
        assert info["mc_se"] > 0
        assert info["mc_se"] == pytest.approx(sample_se(sampled, groups, every), rel=1e-12)
        full = np.mean([v[name] for v in exact.values()])
        assert abs(row.other_means[name] - full) < 4 * info["mc_se"]
    # the other columns stay exact: the same as scoring every combination
    whole = size_table(members, [k], groups=groups, scores=[*FITTED, "nll"], fit_sample=0).rows[0]
    assert row.other_means["nll"] == whole.other_means["nll"]
    assert (row.combinations, row.mean, row.std, row.min, row.max) == (whole.combinations, whole.mean, whole.std,
                                                                       whole.min, whole.max)
    assert set(row.sampled) == set(FITTED)


def test_the_standard_error_against_a_direct_computation():
    rng = np.random.default_rng(8)
    groups, b, population = 3, 7, 40
    values = rng.normal(0, 1, groups * b) ** 2
    total = 0.0
    for g in range(groups):
        x = [float(v) for v in values[g * b:(g + 1) * b]]
        mean = sum(x) / b
        s2 = sum((v - mean) ** 2 for v in x) / (b - 1)
        total += (1 - b / population) * s2 / b
    assert sample_se(values, groups, groups * population) == pytest.approx(total**0.5 / groups, rel=1e-12)
    assert sample_se(values, groups, groups * b) == 0.0  # the whole population: no sampling error


def test_the_standard_error_matches_the_spread_of_repeated_samples():
    rng = np.random.default_rng(4)
    population, b = 200, 50
    x = rng.gamma(2.0, 1.0, population)
    means = [x[rng.choice(population, b, replace=False)].mean() for _ in range(4000)]
    expected = np.sqrt((1 - b / population) * x.var(ddof=1) / b)  # the formula at the population's own variance
    assert np.std(means) == pytest.approx(expected, rel=0.05)
    estimates = [sample_se(x[rng.choice(population, b, replace=False)], 1, population) for _ in range(400)]
    assert np.mean(estimates) == pytest.approx(expected, rel=0.05)


def test_deterministic_and_independent_of_the_other_sizes():
    members = _members(m=10)
    alone = size_table(members, [4], scores=["ts_nll"], fit_sample=30).rows[0]
    among = [r for r in size_table(members, [2, 3, 4, 5], scores=["ts_nll"], fit_sample=30).rows if r.k == 4][0]
    again = size_table(members, [4], scores=["ts_nll"], fit_sample=30).rows[0]
    assert alone == among == again and alone.sampled


def _write(tmp_path, m=8, n=50):
    outputs, labels = _outputs(m, n)
    paths = []
    for i in range(m):
        meta = {"task": "mrpc", "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": str(i),
                "policy": "dense", "config": {"task": "mrpc", "seed": i}}
        paths.append(str(write_artifact(tmp_path / f"m{i}.safetensors", "logits",
                                        {"outputs": outputs[i].astype(np.float32), "ids": np.arange(n),
                                         "labels": labels}, meta)))
    return paths


def test_the_json_carries_what_was_sampled_and_the_note_says_it(cli, tmp_path):
    paths = _write(tmp_path)  # 8 members: 28 combinations of 2, 56 of 3
    code, out, err = cli("ensemble", *paths, "--size", "2-3", "--scores", "nll,ts_nll", "--fit-sample", "30",
                         "--format", "json")
    assert code == 0, err
    rows = {r["k"]: r for r in map(json.loads, out.splitlines())}
    assert rows[2]["sampled"] == {}
    info = rows[3]["sampled"]
    assert set(info) == {"ts_nll"} and (info["ts_nll"]["combinations"], info["ts_nll"]["of"]) == (30, 56)
    assert 0 < info["ts_nll"]["mc_se"] < 0.1
    assert "ts_nll: mean over a seeded random sample" in err and "k = 3 (30 of 56; Monte Carlo SE" in err
    assert "k = 2" not in err
    code, exact, err = cli("ensemble", *paths, "--size", "2-3", "--scores", "nll,ts_nll", "--fit-sample", "0",
                           "--format", "json")
    assert code == 0 and "sampled" not in exact and "Monte Carlo" not in err
    exact_rows = {r["k"]: r for r in map(json.loads, exact.splitlines())}
    assert exact_rows[3]["mean_nll"] == rows[3]["mean_nll"]
    assert {c: v for c, v in rows[2].items() if c != "sampled"} == exact_rows[2]
    assert abs(exact_rows[3]["mean_ts_nll"] - rows[3]["mean_ts_nll"]) < 4 * info["ts_nll"]["mc_se"]


@pytest.mark.parametrize("value", ["-1", "1"])
def test_a_bad_fit_sample_is_refused(cli, tmp_path, value):
    paths = _write(tmp_path, m=3)
    code, out, err = cli("ensemble", *paths, "--size", "2", "--scores", "ts_nll", "--fit-sample", value)
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.strip().count("\n") == 0 and f"--fit-sample {value}" in err
    with pytest.raises(UsageError):
        size_table(_members(m=4), [2], scores=["ts_nll"], fit_sample=int(value))


def test_the_error_is_honest_over_many_seeded_samples():
    """Over 300 samples drawn with other seeds, (sampled mean - exact mean) / its Monte Carlo SE has mean about 0
    and standard deviation about 1: the sampler is uniform and the error neither too small nor too large."""
    from ticketctl.analysis.significance import sampled_group_combinations

    members = _members(m=10)
    order = members.in_seed_order()
    exact = _exact(members, 4)
    values = np.asarray([v["ts_nll"] for v in exact.values()])
    z = []
    for seed in range(300):
        rows = sampled_group_combinations(order, 1, 4, 40, np.random.default_rng(seed))
        sample = np.asarray([exact[tuple(sorted(r))]["ts_nll"] for r in rows.tolist()])
        z.append((sample.mean() - values.mean()) / sample_se(sample, 1, len(values)))
    assert abs(np.mean(z)) < 0.2 and 0.85 < np.std(z) < 1.15
