"""``stats --cost --score NAME`` and ``stats --by sparsity|train_fraction --score NAME``: the cost frontier, the
phase-transition tables and the super ticket on a registered metric, its direction deciding which ensembles are on
the frontier and which level is best
(docs/cost.md, docs/calibration.md "The cost frontier and the phase tables on any metric").

Every expected number here is computed in the test with numpy in float64 (softmax, mean of member probabilities,
every combination of k members), not by the code under test.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from test_analysis import logits_file

SEEDS = 4
EXAMPLES = 120
COSTS = {"dense": 1.0, "random": 0.5}


def _cost(relative):
    return {"relative_flops": relative, "flops_per_example": 2e9 * relative, "params": 1000,
            "nonzero_params": 1000, "mean_tokens": 10.0}


def _members(tmp_path):
    """Two schemes of SEEDS paired seeds on a binary task whose labels are drawn from known log-odds. ``random``
    (cost 0.5) is near those log-odds: close to calibrated, so its NLL is low. ``dense`` (cost 1.0) sees them with
    less noise, so it is right more often, but its logits are 4 times too sharp: over-confident, so its NLL is far
    higher. By NLL the cheap scheme should own the frontier; by accuracy the costlier one earns points on it."""
    rng = np.random.default_rng(5)
    truth = rng.normal(0, 1.5, EXAMPLES)
    labels = (rng.random(EXAMPLES) < 1 / (1 + np.exp(-truth))).astype(np.int64)
    paths, outputs = [], {"dense": [], "random": []}
    for s in range(SEEDS):
        for policy, noise, sharp in (("dense", 0.2, 4.0), ("random", 1.2, 1.0)):
            margin = sharp * (truth + rng.normal(0, noise, EXAMPLES))
            o = np.stack([np.zeros(EXAMPLES), margin], -1).astype(np.float32)
            outputs[policy].append(o)
            paths.append(logits_file(tmp_path / f"{policy}{s}.safetensors", o, labels, policy=policy, seed=str(s),
                                     cost=_cost(COSTS[policy])))
    return paths, {g: np.array(v, dtype=np.float64) for g, v in outputs.items()}, labels


def _protocol_means(outputs, labels, metric):
    """Per scheme, the mean over every k-member combination of ``metric`` of the mean member probabilities,
    k = 1..SEEDS (float64, by hand)."""
    def value(probs):
        if metric == "nll":
            return -np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))
        return np.mean(probs.argmax(-1) == labels)

    out = {}
    for g, logits in outputs.items():
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs = e / e.sum(-1, keepdims=True)
        out[g] = [np.mean([value(probs[list(c)].mean(0)) for c in itertools.combinations(range(SEEDS), k)])
                  for k in range(1, SEEDS + 1)]
    return out


def _pareto(means, higher_is_better):
    """{(group, k)} on the frontier: no point that costs at most as much is strictly better (by hand)."""
    points = [(g, k + 1, COSTS[g] * (k + 1), v) for g, vs in means.items() for k, v in enumerate(vs)]
    sign = 1 if higher_is_better else -1
    return {(g, k) for g, k, c, v in points
            if not any(c2 <= c + 1e-9 and sign * (v2 - v) > 1e-12 for _, _, c2, v2 in points)}


def _rows(out):
    return [json.loads(line) for line in out.strip().split("\n")]


def test_cost_frontier_by_nll_follows_lower_is_better(cli, tmp_path):
    paths, outputs, labels = _members(tmp_path)
    code, out, err = cli("stats", *paths, "--cost", "--score", "nll", "--format", "json")
    assert code == 0, err
    rows = _rows(out)
    means = _protocol_means(outputs, labels, "nll")
    for r in rows:
        assert r["mean"] == pytest.approx(means[r["group"]][r["k"] - 1], rel=1e-9)
        assert (r["metric"], r["direction"]) == ("nll", "lower is better")
    by = {(r["budget"], r["group"]): r for r in rows}
    # budget 1 buys one dense member or two random ones: random's pair has the lower NLL by construction
    assert by[1, "random"]["k"] == 2 and by[1, "dense"]["k"] == 1
    assert means["random"][1] < means["dense"][0]
    assert by[1, "random"]["on_frontier"] is True and by[1, "dense"]["on_frontier"] is False
    assert by[1, "random"]["vs_ref"] == pytest.approx(means["random"][1] - means["dense"][0], rel=1e-9)
    assert by[1, "random"]["vs_ref"] < 0  # lower is better: negative favours random
    want = _pareto(means, higher_is_better=False)
    assert {(r["group"], r["k"]) for r in rows if r["on_frontier"]} == {p for p in want if p in
                                                                         {(r["group"], r["k"]) for r in rows}}
    assert not any(r["on_frontier"] for r in rows if r["group"] == "dense")  # costlier and worse: never on it
    assert all(r["on_frontier"] for r in rows if r["group"] == "random")  # cheaper and better: the whole frontier
    # the people's table names the metric, its direction and the sign convention
    code, out, _ = cli("stats", *paths, "--cost", "--score", "nll", "--format", "markdown")
    assert "nll of the largest ensemble" in out and "lower is better; vs_ref = group minus dense: negative" in out
    assert "| on_frontier |" in out


def test_cost_frontier_by_accuracy_follows_higher_is_better(cli, tmp_path):
    paths, outputs, labels = _members(tmp_path)
    means = _protocol_means(outputs, labels, "accuracy")
    code, out, err = cli("stats", *paths, "--cost", "--score", "accuracy", "--format", "json")
    assert code == 0, err
    rows = _rows(out)
    for r in rows:
        assert r["mean"] == pytest.approx(means[r["group"]][r["k"] - 1], abs=1e-12)
        assert (r["metric"], r["direction"]) == ("accuracy", "higher is better")
    shown = {(r["group"], r["k"]) for r in rows}
    assert {(r["group"], r["k"]) for r in rows if r["on_frontier"]} == _pareto(means, True) & shown
    # the same data read the other way round: by accuracy a dense ensemble earns a place, by NLL none does
    assert any(r["on_frontier"] for r in rows if r["group"] == "dense")
    assert means["dense"][0] > means["random"][1]  # one sharp dense member beats two noisy random ones
    # the task's headline metric of mrpc is accuracy: the same means as --score accuracy, no frontier column
    code, out, err = cli("stats", *paths, "--cost", "--format", "json")
    plain = _rows(out)
    assert [r["mean"] for r in plain] == pytest.approx([r["mean"] for r in rows], abs=1e-12)
    assert "on_frontier" not in plain[0] and "metric" not in plain[0]


def test_table1_json_names_the_metric_and_direction(cli, tmp_path):
    paths, outputs, labels = _members(tmp_path)
    code, out, err = cli("stats", *paths, "--size", "2", "--score", "accuracy", "--resamples", "99", "--format",
                         "json")
    assert code == 0, err
    rows = _rows(out)
    assert [(r["metric"], r["direction"]) for r in rows] == [("accuracy", "higher is better")] * 2
    means = _protocol_means(outputs, labels, "accuracy")
    assert [r["ensemble_mean"] for r in rows] == pytest.approx([means["dense"][1], means["random"][1]], abs=1e-12)
    code, out, _ = cli("stats", *paths, "--size", "2", "--resamples", "99", "--format", "json")
    assert "metric" not in _rows(out)[0]  # the task's own metric: the table as it was


def test_frontier_plot_on_a_registered_metric(cli, tmp_path):
    paths, _, _ = _members(tmp_path)
    figure = tmp_path / "frontier.png"
    code, out, err = cli("stats", *paths, "--cost", "--score", "brier", "--plot", figure)
    assert code == 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", err
    assert "brier of the largest ensemble" in out


def test_figures_name_the_metric_and_its_direction(cli, tmp_path, monkeypatch):
    """Each figure of stats --score is drawn in the metric's units with its direction on the axis (the axes are
    read before the figure is saved); without --score the axes are as they were."""
    from ticketctl.analysis import plots

    paths, outputs, labels = _members(tmp_path)
    drawn = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: drawn.append(fig.axes[0]))
    for args in (["--cost", "--score", "nll"], ["--size", "2", "--score", "nll", "--resamples", "99"], ["--cost"],
                 ["--size", "2", "--resamples", "99"]):
        code, _, err = cli("stats", *paths, *args, "--plot", tmp_path / "f.png")
        assert code == 0, err
    cost_nll, gain_nll, cost_plain, gain_plain = drawn
    assert cost_nll.get_ylabel() == "nll of k-member ensembles (lower is better)"
    assert gain_nll.get_ylabel() == "nll minus dense's\n(lower is better: below 0 favours the group)"
    assert cost_plain.get_ylabel() == "accuracy of k-member ensembles (%)"
    assert gain_plain.get_ylabel() == "accuracy gain over dense (points)"
    means = _protocol_means(outputs, labels, "nll")
    random_line = next(line for line in cost_nll.get_lines() if line.get_label() == "random")
    assert random_line.get_ydata() == pytest.approx(means["random"], rel=1e-9)  # own units, not x 100
    ringed = next(c for c in cost_nll.collections if c.get_label() == "on the frontier").get_offsets()
    want = sorted((0.5 * (k + 1), v) for k, v in enumerate(means["random"]))  # random's, and no dense point
    np.testing.assert_allclose(sorted(map(tuple, np.asarray(ringed))), want, rtol=1e-9)


def test_on_frontier_ties_and_nan():
    from ticketctl.analysis.frontier import on_frontier

    points = {"a": [(1.0, 0.5), (2.0, 0.4)], "b": [(1.0, 0.5), (0.5, float("nan")), (2.0, 0.45)]}
    assert on_frontier(points, higher_is_better=True) == {"a": [True, False], "b": [True, False, False]}
    assert on_frontier(points, higher_is_better=False) == {"a": [True, True], "b": [True, False, False]}


def _structured(tmp_path):
    """rte-shaped members: a full dense model and winning / random structured tickets at 25% and 50%, 3 seeds;
    winning tickets are near the truth (low NLL), random ones over-confident."""
    rng = np.random.default_rng(9)
    truth = rng.normal(0, 1.5, EXAMPLES)
    labels = (rng.random(EXAMPLES) < 1 / (1 + np.exp(-truth))).astype(np.int64)
    paths, outputs = [], {}
    for s in range(3):
        specs = [("dense", 0.0, 2.0, {})] + [
            (kind, level, sharp, {"method": "structured", "target_sparsity": level, "sparsity": level,
                                  "ffn_sparsity": level}) for kind, sharp in (("winning", 1.0), ("random", 3.0))
            for level in (0.25, 0.5)]
        for kind, level, sharp, meta in specs:
            o = np.stack([np.zeros(EXAMPLES), sharp * (truth + rng.normal(0, 0.5 + level, EXAMPLES))], -1)
            outputs.setdefault((kind, level), []).append(o)
            paths.append(logits_file(tmp_path / f"{kind}-{level}-{s}.safetensors", o.astype(np.float32), labels,
                                     task="rte", policy=kind, seed=str(s), **meta))
    return paths, outputs, labels


def _nll(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(labels)), labels].mean()


def test_phase_table_by_nll(cli, tmp_path):
    paths, outputs, labels = _structured(tmp_path)
    code, out, err = cli("stats", "--by", "sparsity", "--score", "nll", "--resamples", "99", "--format", "json",
                         *paths)
    assert code == 0, err
    rows = _rows(out)
    assert [r["sparsity"] for r in rows] == [0.25, 0.5]
    full = np.mean([_nll(np.asarray(o, np.float64), labels) for o in outputs["dense", 0.0]])
    for r in rows:
        assert (r["metric"], r["direction"]) == ("nll", "lower is better")
        for kind in ("winning", "random"):
            single = [_nll(np.asarray(o, np.float64), labels) for o in outputs[kind, r["sparsity"]]]
            assert r[kind] == pytest.approx(np.mean(single), rel=1e-6)  # members stored as float32
            assert r[f"{kind}_std"] == pytest.approx(np.std(single, ddof=1), rel=1e-5)
        assert r["full"] == pytest.approx(full, rel=1e-6)
        assert r["vs_full"] == pytest.approx(r["winning"] - full, rel=1e-6, abs=1e-9)
    assert all(r["winning"] < r["random"] for r in rows)  # lower is better: winning's calibrated tickets
    code, out, err = cli("stats", "--by", "sparsity", "--score", "nll", "--resamples", "99", *paths)
    assert code == 0 and "lower is better, winning vs full = winning minus full: negative favours" in out, err
    figure = tmp_path / "phase.png"
    code, _, err = cli("stats", "--by", "sparsity", "--score", "nll", "--plot", figure, *paths)
    assert code == 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", err


def test_super_ticket_by_nll_picks_the_lowest(cli, tmp_path):
    """Winning tickets at 25% are right more often but 4x over-sharp; at 50% less accurate but near calibrated.
    ``--select best`` by the task's accuracy picks 25%, ``--score nll`` the level of lowest NLL on the selection
    half (chosen here by hand on the same seeded half), reported on the other half."""
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 1.5, EXAMPLES)
    labels = (rng.random(EXAMPLES) < 1 / (1 + np.exp(-truth))).astype(np.int64)
    paths, outputs = [], {}
    for s in range(3):
        for kind, level, noise, sharp in (("dense", 0.0, 0.3, 1.0), ("winning", 0.25, 0.1, 4.0),
                                          ("winning", 0.5, 1.0, 1.0)):
            o = np.stack([np.zeros(EXAMPLES), sharp * (truth + rng.normal(0, noise, EXAMPLES))], -1)
            outputs.setdefault(level, []).append(o.astype(np.float32).astype(np.float64))
            meta = {} if kind == "dense" else {
                "method": "structured", "target_sparsity": level, "sparsity": level, "ffn_sparsity": level,
                "parents": [{"kind": "mask", "path": f"mask-{level}-{s}.safetensors", "sha256": "0" * 64}]}
            paths.append(logits_file(tmp_path / f"{kind}-{level}-{s}.safetensors", o.astype(np.float32), labels,
                                     task="rte", policy=kind, seed=str(s), **meta))
    order = np.random.default_rng(0).permutation(EXAMPLES)  # phase.SELECT_SEED's split of the examples
    choose, report = np.sort(order[:EXAMPLES // 2]), np.sort(order[EXAMPLES // 2:])
    nll_on = {lv: np.mean([_nll(o[choose], labels[choose]) for o in outputs[lv]]) for lv in (0.25, 0.5)}
    acc_on = {lv: np.mean([np.mean(o[choose].argmax(-1) == labels[choose]) for o in outputs[lv]])
              for lv in (0.25, 0.5)}
    assert acc_on[0.25] > acc_on[0.5] and nll_on[0.5] < nll_on[0.25]  # the construction holds on this half
    code, out, err = cli("stats", "--by", "sparsity", "--select", "best", *paths)
    assert code == 0 and out.split() == [f"mask-0.25-{s}.safetensors" for s in range(3)], err
    code, out, err = cli("stats", "--by", "sparsity", "--select", "best", "--score", "nll", *paths)
    assert code == 0 and out.split() == [f"mask-0.5-{s}.safetensors" for s in range(3)], err
    held = np.mean([_nll(o[report], labels[report]) for o in outputs[0.5]])
    full = np.mean([_nll(o[report], labels[report]) for o in outputs[0.0]])
    assert "winning at 50%" in err and f"dev nll {held:.4f} (full model {full:.4f}); lower is better" in err


def test_train_fraction_table_by_brier(cli, tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 80)
    paths, want = [], {}
    for fraction, scale in ((0.5, 0.5), (1.0, 2.0)):
        for s in range(2):
            o = np.stack([np.zeros(80), scale * np.where(labels == 1, 1.0, -1.0) + rng.normal(0, 1, 80)], -1)
            p = 1 / (1 + np.exp(-o[:, 1]))
            want.setdefault(fraction, []).append(np.mean((p - labels) ** 2 + ((1 - p) - (1 - labels)) ** 2))
            config = {"train_fraction": fraction}
            paths.append(logits_file(tmp_path / f"f{fraction}-{s}.safetensors", o.astype(np.float32), labels,
                                     seed=str(s), train_fraction=fraction, config=config))
    code, out, err = cli("stats", "--by", "train_fraction", "--score", "brier", "--format", "json", *paths)
    assert code == 0, err
    rows = _rows(out)
    assert [r["train_fraction"] for r in rows] == [0.5, 1.0]
    for r in rows:
        assert r["dense"] == pytest.approx(np.mean(want[r["train_fraction"]]), rel=1e-6)
        assert (r["metric"], r["direction"]) == ("brier", "lower is better")


@pytest.mark.parametrize("view", [["--cost"], ["--by", "sparsity"], ["--by", "train_fraction"]])
def test_undirected_or_unknown_score_refused_in_one_line(cli, tmp_path, view):
    paths, _, _ = _members(tmp_path)
    for score, message in (("temperature", "neither better nor worse"), ("nope", "unknown score"),
                           ("mutual_information", "neither better nor worse")):
        code, out, err = cli("stats", *paths, *view, "--score", score)
        assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, (view, err)
    code, out, err = cli("stats", *paths, "--cost", "--score", "nll", "--combine", "vote")
    assert code == 2 and "undefined under --combine vote" in err and out == ""
    code, out, err = cli("stats", *paths, "--by", "sparsity", "--select", "best", "--score", "temperature")
    assert code == 2 and "neither better nor worse" in err and out == ""
