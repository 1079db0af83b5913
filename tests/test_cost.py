"""Ensembles at equal inference cost (#18): cost records, diverse structured tickets, the frontier."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from ticketctl.analysis import frontier
from ticketctl.analysis.significance import Scorer, budget_interval, jackknife_interval, protocol_combinations
from ticketctl.data.tasks import get_task
from ticketctl.masks.structured import StructuredMask, ticket
from ticketctl.model.cost import Dims, flops_per_example, member_cost, parameters
from ticketctl.masks import policies
from ticketctl.store.artifacts import read_artifact


def test_parameter_count_matches_the_models(tiny_model):
    from ticketctl.model import loading
    from ticketctl.model.units import prune_physically

    model = loading.load_model(tiny_model, 3, None, "eager")
    d = Dims.of(model.config)
    full = (np.full(d.layers, d.heads), np.ones(d.layers, bool))
    assert parameters(d, *full) == sum(p.numel() for p in model.parameters())
    mask = StructuredMask(np.array([[True, False], [True, True]]), np.array([False, True]))
    prune_physically(model, mask)
    assert parameters(d, mask.heads.sum(1), mask.ffn) == sum(p.numel() for p in model.parameters())


def test_flops_by_hand():
    d = Dims(hidden=4, layers=1, heads=2, intermediate=8, vocab=10, positions=16, types=2, labels=2)
    # L = 3, both heads (a = 4), FFN kept: qkv 3*2*3*4*4 = 288, scores+context 2*2*9*4 = 144, out 2*3*4*4 = 96,
    # FFN 2*2*3*4*8 = 384, pooler 2*16 = 32, classifier 2*4*2 = 16
    assert flops_per_example(d, [2], [True], np.array([3])) == 288 + 144 + 96 + 384 + 32 + 16
    one_head = 3 * 2 * 3 * 4 * 2 + 2 * 2 * 9 * 2 + 2 * 3 * 2 * 4 + 32 + 16  # a = 2, no FFN
    assert flops_per_example(d, [1], [False], np.array([3])) == one_head
    # the mean over examples of their own lengths, not the FLOPs at the mean length (attention is quadratic)
    assert flops_per_example(d, [2], [True], np.array([1, 5])) == pytest.approx(
        (flops_per_example(d, [2], [True], np.array([1])) + flops_per_example(d, [2], [True], np.array([5]))) / 2)
    c = member_cost({"hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8},
                    StructuredMask(np.array([[True, False]]), np.array([False])), np.array([3]), 10)
    assert c["relative_flops"] == pytest.approx(one_head / 960, abs=1e-6) and c["sparse_kernel"] is False


def test_cost_in_artifacts_show_ensemble_stats(cli, tiny_args, tmp_path):
    out = ["--out", str(tmp_path)]
    paths = {}
    for s in (1, 2):
        code, o, err = cli("finetune", "--task", "mrpc", "--seed", s, *tiny_args, *out)
        paths.setdefault("dense", []).append(o.split()[0])
        code, o, err = cli("search", "--task", "mrpc", "--seed", s, *tiny_args, *out)
        code, o, err = cli("finetune", "--task", "mrpc", "--seed", s, "--mask", o.strip(), *tiny_args, *out)
        paths.setdefault("base", []).append(o.split()[0])
        code, o, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", s, "--sparsity", "0.5",
                           *tiny_args, *out)
        code, o, err = cli("finetune", "--task", "mrpc", "--seed", s, "--mask", o.strip(), *tiny_args, *out)
        assert code == 0, err
        paths.setdefault("winning", []).append(o.split()[0])
    cost = {k: read_artifact(v[0]).meta["cost"] for k, v in paths.items()}
    # (a dense model has a few exact zeros too: the [PAD] embedding row)
    assert cost["dense"]["relative_flops"] == 1.0 and cost["dense"]["params"] - cost["dense"]["nonzero_params"] < 50
    # an unstructured ticket costs a dense member; its zeros are counted apart
    pruned = read_artifact(read_artifact(paths["base"][0]).meta["parents"][0]["path"]).mask().pruned
    assert cost["base"]["relative_flops"] == 1.0 and cost["base"]["params"] == cost["dense"]["params"]
    assert cost["base"]["params"] - cost["base"]["nonzero_params"] >= pruned
    assert 0.3 < cost["winning"]["relative_flops"] < 0.7 and cost["winning"]["params"] < cost["dense"]["params"]
    code, o, err = cli("show", paths["winning"][0])
    assert f"{cost['winning']['relative_flops']:.3f} x a dense member" in o
    code, o, err = cli("ensemble", *paths["winning"], paths["dense"][0], "--format", "json")
    row = json.loads(o)
    assert row["cost"] == pytest.approx(2 * cost["winning"]["relative_flops"] + 1, abs=1e-3)
    everything = [p for v in paths.values() for p in v]
    code, o, err = cli("stats", *everything, "--by", "scheme", "--size", "2", "--format", "json")
    assert code == 0, err
    rows = {r["group"]: r for r in map(json.loads, o.splitlines())}
    assert set(rows) == {"dense", "base", "winning-50%"}
    assert rows["winning-50%"]["cost"] == pytest.approx(2 * cost["winning"]["relative_flops"], abs=1e-3)
    assert rows["dense"]["gflops"] == pytest.approx(2 * cost["dense"]["flops_per_example"] / 1e9, abs=1e-4)
    plot = tmp_path / "frontier.png"
    code, o, err = cli("stats", *everything, "--by", "scheme", "--cost", "--plot", plot, "--format", "json")
    assert code == 0 and plot.stat().st_size > 0, err
    rows = [json.loads(line) for line in o.splitlines()]
    at2 = {r["group"]: r for r in rows if r["budget"] == 2}
    assert at2["dense"]["k"] == 2 and at2["winning-50%"]["k"] == 2  # two seeds each: all of them
    assert max(r["budget"] for r in rows) == 2


def test_frontier_logic_on_synthetic_members():
    """Cheap members afford more of themselves under a budget; the best reachable mean and its difference."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    n = 6
    # members right on 70% (dense) and 66% (cheap) of examples, independently: ensembles improve with k
    def member(acc):
        right = rng.random(400) < acc
        margin = np.where(right, 1.0, -1.0) * np.where(labels == 1, 1.0, -1.0)
        return np.stack([-margin, margin], axis=-1) * rng.uniform(0.5, 1.5, (400, 1))

    terms = np.stack([member(0.70) for _ in range(n)] + [member(0.66) for _ in range(n)]).astype(np.float32)
    scorer = Scorer(get_task("rte"), terms, labels)
    groups = {"dense": list(range(n)), "cheap": list(range(n, 2 * n))}
    costs = {"dense": 1.0, "cheap": 0.5}
    rows = frontier.frontier(scorer, groups, costs, "dense", 1, {"cheap": True})
    by = {(r.budget, r.group): r for r in rows}
    assert max(b for b, _ in by) == 6 and by[(3, "cheap")].k == 6 and by[(5, "dense")].k == 5
    mean_at = {g: [scorer.scores(np.eye(2 * n)[[groups[g][i] for i in c]].sum(0, keepdims=True))[0]
                   for c in combinations(range(n), 3)] for g in groups}
    four = np.mean([scorer.scores(np.eye(2 * n)[[groups["cheap"][i] for i in c]].sum(0, keepdims=True))[0]
                    for c in combinations(range(n), 4)])
    assert by[(2, "cheap")].k == 4 and by[(2, "cheap")].mean == pytest.approx(four)  # budget 2: 4 cheap members
    assert by[(3, "dense")].mean == pytest.approx(np.mean(mean_at["dense"]))  # 3 dense members
    r = by[(2, "cheap")]
    assert r.vs_ref == pytest.approx(r.mean - by[(2, "dense")].mean)
    assert r.diff_low < r.vs_ref < r.diff_high
    assert frontier.affordable(1.0, 0.34, 6) == 2 and frontier.affordable(1.0, 1.5, 6) == 0


def test_budget_interval_agrees_with_the_jackknife_at_equal_k():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    terms = rng.normal(size=(10, 300, 2)).astype(np.float32)
    scorer = Scorer(get_task("rte"), terms, labels)
    a, b = list(range(5)), list(range(5, 10))
    sub = scorer.subset(a + b)
    ka = protocol_combinations(5, 2, 1)
    want = jackknife_interval(sub, ka, ka, 5, 5, 1, True)
    got = budget_interval(scorer, a, b, 2, 2, 1, True)
    assert got == pytest.approx(want, abs=1e-9)
    assert all(np.isnan(budget_interval(scorer, a, b, 5, 2, 1, True)))  # every ensemble holds every seed


def diverse_scores(head, ffn, policy, strength, seed, priors):
    return policies.get(policies.STRUCTURED, policy).apply(head, ffn, strength, seed, priors)


def test_diverse_scores():
    head = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    ffn = np.array([2.0, 1.0])
    assert all(np.array_equal(x, y) for x, y in zip(diverse_scores(head, ffn, "perturbed", 0.0, 1, []), (head, ffn)))
    one, same = diverse_scores(head, ffn, "perturbed", 0.5, 1, []), diverse_scores(head, ffn, "perturbed", 0.5, 1, [])
    other = diverse_scores(head, ffn, "perturbed", 0.5, 2, [])
    assert np.array_equal(one[0], same[0]) and not np.allclose(one[0], other[0])
    # active: with equal scores the units every earlier member dropped are kept now
    prior = StructuredMask(np.array([[True, True, False, False], [True, True, False, False]]), np.array([True, False]))
    h, f = diverse_scores(np.ones((2, 4)), np.ones(2), "active", 1.0, 1, [prior])
    mask = ticket(h, f, 0.5, "winning")
    assert mask.heads.tolist() == [[False, False, True, True]] * 2 and mask.ffn.tolist() == [False, True]


def test_perturbed_tickets_keep_the_size_and_differ(cli, tiny_args, tmp_path):
    out = ["--out", str(tmp_path)]
    code, plain, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity",
                           "0.25,0.5", *tiny_args, *out)
    code, pert, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity",
                          "0.25,0.5", "--policy", "perturbed", "--diversity", "3", *tiny_args, *out)
    assert code == 0, err
    assert "reusing" not in err  # --quiet; the scores come from the cache either way
    for p, q in zip(plain.split(), pert.split()):
        a, b = read_artifact(p), read_artifact(q)
        assert "-mask-winning-perturbed-" in q and b.meta["policy"] == "winning-perturbed"
        assert (a.structured().heads.sum(), a.structured().ffn.sum()) == (b.structured().heads.sum(),
                                                                           b.structured().ffn.sum())
        assert a.meta["parents"][0]["sha256"] == b.meta["parents"][0]["sha256"]  # the same importance scores
    code, act, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", "2", "--sparsity", "0.5",
                         "--policy", "active", "--prior", pert.split()[1], *tiny_args, *out)
    assert code == 0 and "-mask-winning-active-50pct-s2-" in act, err


def test_share_members_cost_their_tickets(cli, tiny_args, tiny_model, tmp_path):
    out = ["--out", str(tmp_path)]
    masks = []
    for task in ("mrpc", "rte"):
        code, o, err = cli("search", "--method", "structured", "--task", task, "--seed", "1", "--sparsity", "0.5",
                           *tiny_args, *out)
        assert code == 0, err
        masks += ["--task", task, "--mask", o.strip()]
    code, o, err = cli("share", *masks, "--seed", "1", *tiny_args, *out)
    assert code == 0, err
    d = Dims.of({**json.loads((tiny_model / "config.json").read_text()), "num_labels": 2})
    for path in o.split():
        art = read_artifact(path)
        ticket_ = read_artifact(art.meta["parents"][0]["path"]).structured()
        assert art.meta["cost"]["relative_flops"] < 1
        assert art.meta["cost"]["params"] == parameters(d, ticket_.heads.sum(axis=1), ticket_.ffn)
