"""Ensembles at equal inference cost (#18): cost records, diverse structured tickets, the frontier."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from ticketctl.analysis import frontier
from ticketctl.analysis.significance import Scorer, budget_interval
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


def dev_lengths(tiny_model) -> np.ndarray:
    """Token counts of the tiny MRPC dev set's 8 pairs ([CLS] a [SEP] b [SEP]), tokenised here."""
    from conftest import MRPC_ROWS
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(tiny_model))
    return np.array([len(tok(a, b)["input_ids"]) for _, a, b in MRPC_ROWS[:8]])


def flops_by_hand(heads_kept, ffn_kept, lengths, hidden=16, head_size=8, intermediate=32, labels=2) -> float:
    """Mean FLOPs per example (a multiply-add = 2) of a BERT keeping heads_kept[i] heads and FFN ffn_kept[i] in
    layer i: per layer, with a = kept heads x head size, Q/K/V 3 x 2LHa, scores and weighted sum 2 x 2L^2a, output
    projection 2LaH, FFN 2 x 2LHI if kept; pooler 2H^2 and classifier 2HC once per example."""
    total = []
    for L in lengths:
        flops = 2 * hidden * hidden + 2 * hidden * labels
        for h, f in zip(heads_kept, ffn_kept):
            a = h * head_size
            flops += 3 * 2 * L * hidden * a + 2 * 2 * L * L * a + 2 * L * a * hidden + (4 * L * hidden * intermediate
                                                                                       if f else 0)
        total.append(flops)
    return float(np.mean(total))


def test_cost_in_artifacts_show_ensemble_stats(cli, tiny_args, tiny_model, tmp_path):
    from safetensors.numpy import load_file

    out = ["--out", str(tmp_path)]
    paths = {}
    for s in (1, 2):
        save = ["--save-model", str(tmp_path / f"dense-s{s}")] if s == 1 else []
        code, o, err = cli("finetune", "--task", "mrpc", "--seed", s, *save, *tiny_args, *out)
        paths.setdefault("dense", []).append(o.split()[0])
        code, o, err = cli("search", "--task", "mrpc", "--seed", s, *tiny_args, *out)
        save = ["--save-model", str(tmp_path / f"base-s{s}")] if s == 1 else []
        code, o, err = cli("finetune", "--task", "mrpc", "--seed", s, "--mask", o.strip(), *save, *tiny_args, *out)
        paths.setdefault("base", []).append(o.split()[0])
        code, o, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", s, "--sparsity", "0.5",
                           *tiny_args, *out)
        code, o, err = cli("finetune", "--task", "mrpc", "--seed", s, "--mask", o.strip(), *tiny_args, *out)
        assert code == 0, err
        paths.setdefault("winning", []).append(o.split()[0])
    cost = {k: read_artifact(v[0]).meta["cost"] for k, v in paths.items()}
    # parameters and nonzero parameters: a direct count of the saved members' weights
    for scheme in ("dense", "base"):
        weights = load_file(str(tmp_path / f"{scheme}-s1" / "model.safetensors")).values()
        assert cost[scheme]["params"] == sum(w.size for w in weights) == 8098
        assert cost[scheme]["nonzero_params"] == sum(int(np.count_nonzero(w)) for w in weights)
    # an unstructured ticket costs a dense member; its zeros are counted apart
    pruned = read_artifact(read_artifact(paths["base"][0]).meta["parents"][0]["path"]).mask().pruned
    assert pruned == round(0.3 * (2 * (4 * 16 * 16 + 2 * 16 * 32) + 16 * 16))  # 30% of the 4,352 prunable weights
    assert cost["base"]["relative_flops"] == 1.0 and cost["base"]["params"] == cost["dense"]["params"]
    assert cost["base"]["params"] - cost["base"]["nonzero_params"] >= pruned
    # FLOPs by hand on the dev set's own lengths: dense, and the winning ticket's kept heads and FFNs
    lengths = dev_lengths(tiny_model)
    assert cost["dense"]["mean_tokens"] == pytest.approx(lengths.mean())
    dense_flops = flops_by_hand([2, 2], [True, True], lengths)
    assert cost["dense"]["flops_per_example"] == round(dense_flops) and cost["dense"]["relative_flops"] == 1.0
    structure = read_artifact(read_artifact(paths["winning"][0]).meta["parents"][0]["path"]).structured()
    assert structure.heads.sum() == 2 and structure.ffn.sum() == 1  # 50% of 4 heads and of 2 FFNs
    winning_flops = flops_by_hand(structure.heads.sum(1).tolist(), structure.ffn.tolist(), lengths)
    assert cost["winning"]["flops_per_example"] == round(winning_flops)
    assert cost["winning"]["relative_flops"] == pytest.approx(winning_flops / dense_flops, abs=1e-6)
    assert cost["winning"]["params"] < cost["dense"]["params"]
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
    # 4 cheap members against 2 dense ones, paired by seed position: the jackknife by hand
    low, high = jackknife_by_hand(terms, labels, groups["cheap"], groups["dense"], 4, 2, paired=True)
    assert (r.diff_low, r.diff_high) == pytest.approx((low, high))
    assert frontier.affordable(1.0, 0.34, 6) == 2 and frontier.affordable(1.0, 1.5, 6) == 0


def jackknife_by_hand(terms, labels, a, b, k_a, k_b, paired, level=0.95):
    """95% interval of (mean accuracy of A's k_a-member ensembles) - (B's at k_b), every combination of one group,
    from the leave-one-seed-out jackknife: an ensemble's class is the sign of its members' summed margins; leaving
    seed s out drops every ensemble holding it (paired: from both schemes at once); standard error
    sqrt((n-1)/n * sum (theta_(s) - mean)^2) (unpaired: the two schemes' variances added), Student's t on
    (seeds - 1) degrees of freedom (unpaired: the smaller scheme's)."""
    from scipy import stats as sps

    margin = terms[..., 1].astype(np.float64) - terms[..., 0].astype(np.float64)

    def mean_acc(members, k, without=None):
        accs = [np.mean((margin[list(c)].sum(0) > 0) == (labels == 1)) for c in combinations(members, k)
                if without is None or without not in c]
        return np.mean(accs)

    def pseudo_var(values):
        values = np.asarray(values)
        return (len(values) - 1) / len(values) * np.sum((values - values.mean()) ** 2)

    full = mean_acc(a, k_a) - mean_acc(b, k_b)
    if paired:
        var = pseudo_var([mean_acc(a, k_a, a[s]) - mean_acc(b, k_b, b[s]) for s in range(len(a))])
        dof = len(a) - 1
    else:
        var = pseudo_var([mean_acc(a, k_a, m) for m in a]) + pseudo_var([mean_acc(b, k_b, m) for m in b])
        dof = min(len(a), len(b)) - 1
    half = sps.t.ppf((1 + level) / 2, dof) * np.sqrt(var)
    return full - half, full + half


def test_budget_interval_is_the_leave_one_seed_out_jackknife():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    terms = rng.normal(size=(10, 300, 2)).astype(np.float32)
    scorer = Scorer(get_task("rte"), terms, labels)
    a, b = list(range(5)), list(range(5, 10))
    for k_a, k_b, paired in ((2, 2, True), (3, 2, True), (3, 2, False), (1, 4, False)):
        got = budget_interval(scorer, a, b, k_a, k_b, 1, paired)
        assert got == pytest.approx(jackknife_by_hand(terms, labels, a, b, k_a, k_b, paired), abs=1e-9), \
            (k_a, k_b, paired)
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
    lengths = dev_lengths(tiny_model)
    dense_flops = flops_by_hand([2, 2], [True, True], lengths)
    for path in o.split():
        art = read_artifact(path)
        ticket_ = read_artifact(art.meta["parents"][0]["path"]).structured()
        # the tiny MRPC and RTE dev sets hold the same 8 sentence pairs: the same lengths
        want = flops_by_hand(ticket_.heads.sum(1).tolist(), ticket_.ffn.tolist(), lengths)
        assert art.meta["cost"]["flops_per_example"] == round(want)
        assert art.meta["cost"]["relative_flops"] == pytest.approx(want / dense_flops, abs=1e-6)
        assert want < dense_flops
        assert art.meta["cost"]["params"] == parameters(d, ticket_.heads.sum(axis=1), ticket_.ffn)
