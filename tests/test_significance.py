"""Calibration of ``stats``' tests, by simulation (docs/statistics.md "Statistics").

Simulated members: a binary task; every member's margin is the class signal plus an example effect shared by all
members (some examples are hard for everyone) plus a seed effect shared by a seed's two members (the dense and the
ticket member of one seed share head, data order and dropout) plus the member's own noise. Under the null both
schemes' members come from one distribution; under the alternative one scheme's signal is larger.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ticketctl.analysis.significance import Scorer, compare, paper_ttest, parse_k, protocol_scores, split_groups
from ticketctl.data.tasks import get_task
from ticketctl.errors import InputError, UsageError
from ticketctl.store.artifacts import read_artifact

TASK = get_task("mrpc")


def simulate(rng, n=8, examples=300, margin=0.0, corr=0.5):
    """(scorer, members) with scheme B = members 0..n-1 and scheme A = n..2n-1, seed s at position s of each."""
    labels = rng.integers(0, 2, examples)
    sign = 2 * labels - 1
    difficulty = rng.normal(0, 1.0, examples)
    seed_effect = [rng.normal(0, 1.0, examples) for _ in range(n)]
    outputs = []
    for scheme_margin in (0.0, margin):
        for s in range(n):
            z = np.sqrt(corr) * seed_effect[s] + np.sqrt(1 - corr) * rng.normal(0, 1.0, examples)
            outputs.append(np.stack([np.zeros(examples), sign * (0.6 + scheme_margin) + difficulty + 1.2 * z], -1))
    outputs = np.array(outputs)
    probs = np.exp(outputs) / np.exp(outputs).sum(-1, keepdims=True)
    return Scorer(TASK, probs.astype(np.float32), labels), outputs, labels


def rejection_rates(sims, margin, k, groups, n=8, seed=0):
    rng = np.random.default_rng(seed)
    rejected = paper_rejected = covered = 0
    for i in range(sims):
        scorer, _, _ = simulate(rng, n=n, margin=margin)
        a, b = list(range(n, 2 * n)), list(range(n))
        c = compare(scorer, a, b, k, groups, paired=True, resamples=199, seed=i)
        rejected += c.p < 0.05
        covered += c.low <= 0 <= c.high
        paper = paper_ttest(protocol_scores(scorer, a, k, groups), protocol_scores(scorer, b, k, groups))
        paper_rejected += paper < 0.05
    return rejected / sims, paper_rejected / sims, covered / sims


@pytest.mark.parametrize("k, groups", [(3, 1), (1, 1), (2, 2)])
def test_permutation_test_is_calibrated_under_the_null(k, groups):
    """200 comparisons of two schemes drawn from one distribution: p < 0.05 in at most 7% of them (measured: 5.0%,
    4.0%, 5.0%), and the 95% interval holds 0 in at least 92% (measured 95.5%, 96%, 97.5%)."""
    rate, paper_rate, coverage = rejection_rates(200, 0.0, k, groups)
    assert rate <= 0.07, f"false-positive rate {rate:.3f}"
    assert coverage >= 0.92, f"interval coverage {coverage:.3f}"
    if k > 1:
        # the same check fails a p-value computed over overlapping combinations (the paper's t-test: 56.5% at k=3,
        # 14.5% at k=2 in two groups): this simulation tells a calibrated test from an optimistic one
        assert paper_rate > 0.07, f"the paper's t-test rejected only {paper_rate:.3f}"


def test_permutation_test_detects_a_real_difference():
    """Power at 8 paired seeds, 300 examples, 3-member ensembles: a scheme better by 5.6 points of ensemble
    accuracy is detected in 100 of 100 simulations, one better by 2.9 points in 58 (docs/statistics.md "Statistics")."""
    rate_large, _, _ = rejection_rates(60, 0.2, 3, 1, seed=1)
    rate_small, _, _ = rejection_rates(60, 0.1, 3, 1, seed=2)
    assert rate_large >= 0.9 and 0.3 <= rate_small < rate_large


def test_unpaired_permutation_is_calibrated():
    """Schemes with different seeds: members are reassigned at random, no pairing assumed."""
    rng = np.random.default_rng(3)
    rejected = 0
    for i in range(150):
        scorer, _, _ = simulate(rng, n=6)
        c = compare(scorer, list(range(6, 12)), list(range(6)), 2, 1, paired=False, resamples=199, seed=i)
        rejected += c.p < 0.05
    assert rejected / 150 <= 0.07


def test_protocol_groups_and_sizes_are_checked():
    assert split_groups(20, 2) == [list(range(10)), list(range(10, 20))]
    with pytest.raises(InputError, match="do not split into 2 equal groups"):
        split_groups(5, 2)
    assert parse_k("2-4") == [2, 3, 4] and parse_k("2,5") == [2, 5]
    for bad, message in (("5-2", "goes up"), ("0", "at least one member"), ("x", "give k")):
        with pytest.raises(UsageError, match=message):
            parse_k(bad)


def test_stats_cli_protocol_and_tests(cli, tmp_path):
    """Through the CLI: --groups 2 averages within and over groups, refuses uneven groups, and --test paper gives
    the paper's t-test with its warning."""
    from test_analysis import logits_file

    rng = np.random.default_rng(5)
    scorer, outputs, labels = simulate(rng, n=4, examples=120, margin=0.3)
    paths = []
    for i, o in enumerate(outputs):
        policy, seed = ("dense", i) if i < 4 else ("random", i - 4)
        paths.append(logits_file(tmp_path / f"{policy}{seed}.safetensors", o, labels, policy=policy, seed=str(seed)))
    code, out, err = cli("stats", *paths, "--groups", "2", "--size", "2", "--format", "json")
    assert code == 0, err
    rows = [json.loads(x) for x in out.strip().split("\n")]
    # two groups of 2 seeds: one 2-member ensemble per group, averaged
    want = np.mean([protocol_scores(scorer, [4, 5], 2, 1)[0], protocol_scores(scorer, [6, 7], 2, 1)[0]])
    assert rows[1]["combinations"] == 2 and rows[1]["ensemble_mean"] == pytest.approx(want)
    assert rows[1]["test"] == "paired permutation (seeds)"
    # the exact paired test by hand: the 2^4 exchanges of a seed's two members, statistic = difference of the
    # two groups' mean 2-member ensemble accuracy (groups: seeds 0-1 and 2-3)
    from itertools import product

    probs = np.exp(outputs) / np.exp(outputs).sum(-1, keepdims=True)

    def statistic(a, b):
        acc = [np.mean(((probs[m[i]] + probs[m[i + 1]]) / 2).argmax(1) == labels) for m in (a, b) for i in (0, 2)]
        return (acc[0] + acc[1]) / 2 - (acc[2] + acc[3]) / 2

    a, b = [4, 5, 6, 7], [0, 1, 2, 3]
    null = [statistic([b[s] if w else a[s] for s, w in enumerate(sw)], [a[s] if w else b[s] for s, w in enumerate(sw)])
            for sw in product([0, 1], repeat=4)]
    exact = np.mean(np.abs(null) >= abs(statistic(a, b)) - 1e-12)
    assert exact == 2 / 16  # only the observed labelling and its mirror image are as extreme
    assert rows[1]["p_value"] == pytest.approx(131 / 1001)  # seeded: 130 of 1,000 permutations, plus one
    code, out, err = cli("stats", *paths, "--groups", "2", "--size", "2", "--format", "json", "--resamples", "20000")
    many = [json.loads(x) for x in out.strip().split("\n")][1]["p_value"]
    assert abs(many - exact) < 0.005  # Monte Carlo sigma 0.0023 at 20,000 permutations
    code, out, err = cli("stats", *paths, "--groups", "2", "--size", "2", "--test", "paper", "--format", "json")
    assert code == 0 and "optimistic" in err
    paper = [json.loads(x) for x in out.strip().split("\n")][1]
    from scipy import stats

    a = protocol_scores(scorer, [4, 5, 6, 7], 2, 2)  # one combination in each group
    b = protocol_scores(scorer, [0, 1, 2, 3], 2, 2)
    assert paper["test"] == "paper t-test (optimistic)"
    assert paper["p_value"] == pytest.approx(stats.ttest_ind(a, b).pvalue)
    code, out, err = cli("stats", *paths[:3], *paths[4:7], "--groups", "2")
    assert code == 3 and "do not split into 2 equal groups" in err
    code, out, err = cli("stats", *paths, "--size", "0")
    assert code == 2 and "at least one member" in err
    code, out, err = cli("ensemble", *paths[:4], "--size", "3-2")
    assert code == 2 and "goes up" in err
    code, out, err = cli("ensemble", *paths[:3], "--size", "1", "--groups", "2")
    assert code == 3 and "equal groups" in err


def test_phase_table_realised_fractions_winning_vs_full_and_held_out_selection(cli, tmp_path):
    from test_analysis import logits_file

    rng = np.random.default_rng(7)
    n_ex = 200
    labels = rng.integers(0, 2, n_ex)
    sign = 2 * labels - 1
    paths = []

    def member(policy, seed, strength, level=None, heads=None, ffn=None):
        m = sign * strength + rng.normal(0, 1.0, n_ex)
        meta = {"policy": policy, "seed": str(seed)}
        if level is not None:
            meta.update({"target_sparsity": f"{level:.6f}", "sparsity": f"{heads:.6f}", "ffn_sparsity": f"{ffn:.6f}",
                         "parents": [{"path": f"mask-{policy}-{level}-s{seed}", "sha256": "0", "kind": "mask"}]})
        else:
            meta["sparsity"] = "0"
        paths.append(logits_file(tmp_path / f"{policy}-{level}-{seed}.safetensors", np.stack([np.zeros(n_ex), m], -1),
                                 labels, **meta))

    for s in range(4):
        member("dense", s, 1.5)
        member("winning", s, 1.4, 0.3, 0.2917, 0.3333)  # 21 of 72 heads, 2 of 6 FFNs
        member("winning", s, 0.2, 0.5, 0.5, 0.5)
    code, out, err = cli("stats", "--by", "sparsity", "--format", "json", *paths)
    assert code == 0, err
    rows = {r["sparsity"]: r for r in map(json.loads, out.splitlines())}
    assert rows[0.3]["heads_pruned"] == pytest.approx(0.2917) and rows[0.3]["ffn_pruned"] == pytest.approx(1 / 3,
                                                                                                           abs=1e-3)
    assert rows[0.5]["vs_full"] < -0.2 and rows[0.5]["p_vs_full"] < 0.2  # 4 paired seeds: smallest p is 2/16
    assert rows[0.3]["p_vs_full"] > rows[0.5]["p_vs_full"]
    # --select best: chosen on a seeded half of the examples, reported on the other half
    code, out, err = cli("stats", "--by", "sparsity", "--select", "best", *paths)
    assert code == 0 and out.split() == [f"mask-winning-0.3-s{s}" for s in range(4)]
    order = np.random.default_rng(0).permutation(n_ex)
    report = np.sort(order[100:])
    outputs = [read_artifact(p).tensors["outputs"] for p in paths]
    held = np.mean([np.mean(outputs[3 * s + 1][report].argmax(1) == labels[report]) for s in range(4)])
    assert "chosen on 100 of 200 dev examples" in err and f"on the other 100: dev accuracy {held:.4f}" in err


def test_structured_search_refuses_levels_that_make_the_same_ticket(cli, tiny_model, glue_dir, tmp_path):
    """The tiny model has 2 layers x 2 heads: 40% and 45% both prune round(1.6) = round(1.8) = 2 heads and
    round(0.8) = round(0.9) = 1 FFN sublayer."""
    code, out, err = cli("search", "--method", "structured", "--task", "mrpc", "--sparsity", "0.4,0.45",
                         "--model", tiny_model, "--data-dir", glue_dir, "--device", "cpu", "--quiet",
                         "--out", tmp_path)
    assert code == 2 and "the same ticket" in err and out == ""
    assert not list(tmp_path.glob("*.safetensors")) and not (tmp_path / "cache").exists()


def test_stats_says_when_too_few_seeds_can_reach_significance(cli, tmp_path):
    """With n paired seeds the exact test's smallest p is 2/2^n: 4 seeds cannot reach 0.05 (stderr says so), 6 can."""
    from test_analysis import logits_file

    from ticketctl.analysis.significance import smallest_p

    assert smallest_p(4, 4, True) == 0.125 and smallest_p(6, 6, True) == 2 / 64
    assert smallest_p(3, 3, False) == 0.1  # 2 of the C(6, 3) = 20 reassignments
    rng = np.random.default_rng(9)
    for n in (4, 6):
        scorer, outputs, labels = simulate(rng, n=n, examples=100, margin=0.5)
        paths = [logits_file(tmp_path / f"{n}-{i}.safetensors", o, labels, policy="dense" if i < n else "random",
                             seed=str(i % n)) for i, o in enumerate(outputs)]
        code, out, err = cli("stats", *paths, "--size", "2")
        assert code == 0, err
        assert ("cannot give p below 0.125" in err) == (n == 4), err


def test_compare_gain_is_the_ensembling_part_with_the_exact_permutation_p():
    """The protocol report's ensembling part: (A's k-ensemble mean - A's single mean) - (B's), its p-value for that
    same difference (checked against the exact test over all 2^n seed swaps) and a jackknife interval around it."""
    from itertools import combinations, product

    from ticketctl.analysis.significance import compare_gain

    scorer, _, _ = simulate(np.random.default_rng(3), n=6, examples=200, margin=0.4)
    b, a = list(range(6)), list(range(6, 12))

    def gain(members):
        ens = np.mean([scorer.scores(np.isin(np.arange(12), c)[None].astype(float))[0]
                       for c in combinations(members, 3)])
        return ens - np.mean(scorer.scores(np.eye(12)[members]))

    observed = gain(a) - gain(b)
    exact = []
    for swap in product([False, True], repeat=6):
        pa = [b[s] if w else a[s] for s, w in enumerate(swap)]
        pb = [a[s] if w else b[s] for s, w in enumerate(swap)]
        exact.append(gain(pa) - gain(pb))
    p_exact = np.mean(np.abs(exact) >= abs(observed) - 1e-12)
    c = compare_gain(scorer, a, b, 3, 1, paired=True, resamples=20000)
    assert c.diff == pytest.approx(observed)
    assert c.p == pytest.approx(p_exact, abs=0.005)  # Monte Carlo sigma <= 0.0035 at 20,000 permutations
    # the interval by hand: leave one seed out of both schemes, jackknife standard error, t on 5 dof
    from scipy import stats as sps

    leave = np.array([gain([m for m in a if m != a[s]]) - gain([m for m in b if m != b[s]]) for s in range(6)])
    half = sps.t.ppf(0.975, 5) * np.sqrt(5 / 6 * np.sum((leave - leave.mean()) ** 2))
    assert (c.low, c.high) == pytest.approx((observed - half, observed + half))
    # the single part and the ensembling part add up to the ensembles' difference
    single = compare(scorer, a, b, 1, 1, paired=True, resamples=99)
    ens = compare(scorer, a, b, 3, 1, paired=True, resamples=99)
    assert single.diff + c.diff == pytest.approx(ens.diff)


def test_compare_gain_interval_is_nan_where_compare_is():
    """One jackknife: at k = a group's size (every ensemble of a group holds each of its seeds) the ensembling
    part's interval is undefined, as the ensembles' difference is, not narrowed to the other groups."""
    from ticketctl.analysis.significance import compare_gain

    scorer, _, _ = simulate(np.random.default_rng(3), n=6, examples=200, margin=0.4)
    b, a = list(range(6)), list(range(6, 12))
    for paired in (True, False):
        c, g = (f(scorer, a, b, 3, 2, paired, resamples=99, limit=None) for f in (compare, compare_gain))
        assert np.isnan(c.low) and np.isnan(c.high)
        assert np.isnan(g.low) and np.isnan(g.high) and np.isfinite(g.diff)
        g2 = compare_gain(scorer, a, b, 2, 2, paired, resamples=99, limit=None)  # k below the group's size
        assert g2.low < g2.diff < g2.high


def test_a_zero_difference_is_zero():
    """Two schemes whose members are the same outputs under other seeds: every difference is exactly 0.0 (not the
    2.2e-16 of summing the same scores in another order), and the paper's t-test warns of nothing."""
    import warnings

    from ticketctl.analysis.significance import compare_gain, difference

    assert difference(0.1 + 0.2, 0.3) == 0.0 and difference(0.3, 0.2) == pytest.approx(0.1)
    scorer, _, _ = simulate(np.random.default_rng(5), n=6, examples=97, margin=0.0)
    x = np.concatenate([scorer.x[:6], scorer.x[:6][::-1]])  # B's members are A's in reverse seed order
    twin = scorer.subset(list(range(6)))._with(x, scorer.labels)
    a, b = list(range(6)), list(range(6, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in (compare, compare_gain):
            c = f(twin, a, b, 3, 1, False, resamples=99, limit=None)
            assert c.diff == 0.0 and str(c.diff) == "0.0"
        assert np.isnan(paper_ttest(np.full(10, 0.8), np.full(10, 0.8)))
        assert 0 < paper_ttest(np.full(10, 0.8123456789), np.linspace(0.7, 0.9, 10)) < 1  # scipy would warn here
