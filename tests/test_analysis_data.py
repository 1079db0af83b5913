"""The analysis functions return records (ticketctl.analysis.records), checked against values computed here from the
members' logits; ticketctl.analysis.render turns them into each format; ensemble --groups groups by seed order."""

import itertools
import json
import math

import numpy as np
import pytest

from ticketctl.analysis import diversity, ensemble, iou, phase, render, show, stats, tables
from ticketctl.analysis.records import Diversity, EnsembleScore, IouMatrix, SizeTable, Table1
from ticketctl.masks.weights import Mask
from ticketctl.store.artifacts import write_artifact

LABELS = np.array([1, 0, 1, 1, 0, 1, 0, 0])


def logits(path, outputs, labels=LABELS, **meta):
    tensors = {"outputs": np.asarray(outputs, dtype=np.float32), "ids": np.arange(len(outputs))}
    if labels is not None:
        tensors["labels"] = np.asarray(labels)
    base = {"task": "mrpc", "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": "0",
            "policy": "dense"}
    return str(write_artifact(path, "logits", tensors, {**base, **meta}))


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture()
def members(tmp_path):
    """Four members (seeds 1, 2, 3, 10) with seeded random logits, and their outputs."""
    rng = np.random.default_rng(3)
    outs = {seed: rng.normal(size=(len(LABELS), 2)) for seed in (1, 2, 3, 10)}
    cost = {"relative_flops": 0.5, "flops_per_example": 2.0e9, "params": 100, "nonzero_params": 100,
            "mean_tokens": 9.0}
    paths = {s: logits(tmp_path / f"m-s{s}.safetensors", o, seed=str(s), cost=cost) for s, o in outs.items()}
    return paths, outs


def accuracy_of(outs, seeds):
    """The probs ensemble's accuracy, by hand: argmax of the mean softmax of the chosen members."""
    mean = np.mean([softmax(outs[s].astype(np.float32).astype(np.float64)) for s in seeds], axis=0)
    return float(np.mean(mean.argmax(-1) == LABELS))


def test_ensemble_record_is_the_hand_computed_ensemble(members):
    paths, outs = members
    result = ensemble.ensemble(list(paths.values()), "probs")
    score = result.score
    assert isinstance(score, EnsembleScore) and score.members == 4 and score.combine == "probs"
    assert (score.on.task, score.on.split, score.on.metric) == ("mrpc", "dev", "accuracy")
    assert score.metrics["accuracy"] == pytest.approx(accuracy_of(outs, [1, 2, 3, 10]))
    assert score.cost == 2.0 and score.gflops == 8.0  # 4 members x 0.5 dense, 4 x 2 GFLOPs
    assert result.outputs.shape == (len(LABELS), 2)


def test_size_table_records_every_combination(members):
    paths, outs = members
    result = ensemble.ensemble(list(paths.values()), "probs", "2")
    table = ensemble.size_table(result.members, result.sizes)
    assert isinstance(table, SizeTable) and [r.k for r in table.rows] == [2]
    want = [accuracy_of(outs, c) for c in itertools.combinations([1, 2, 3, 10], 2)]
    row = table.rows[0]
    assert row.combinations == 6 and row.mean == pytest.approx(np.mean(want))
    assert row.std == pytest.approx(np.std(want, ddof=1)) and (row.min, row.max) == (min(want), max(want))
    assert row.cost == 1.0 and set(row.other_means) == {"f1"}


def test_ensemble_groups_follow_seed_order_not_argument_order(members, cli):
    """A shell glob gives s10 before s2: the groups must still be seeds {1, 2} and {3, 10}, as stats makes them."""
    paths, outs = members
    shuffled = [paths[10], paths[2], paths[1], paths[3]]
    by_seed = np.mean([accuracy_of(outs, [1, 2]), accuracy_of(outs, [3, 10])])
    by_argument = np.mean([accuracy_of(outs, [10, 2]), accuracy_of(outs, [1, 3])])
    assert by_seed != by_argument  # the fixture tells the two orders apart
    result = ensemble.ensemble(shuffled, "probs", "2")
    assert ensemble.size_table(result.members, [2], groups=2).rows[0].mean == pytest.approx(by_seed)
    code, out, err = cli("ensemble", "--size", "2", "--groups", "2", "--format", "json", *shuffled)
    assert code == 0, err
    assert json.loads(out)["mean"] == pytest.approx(by_seed)
    code, out, err = cli("stats", "--size", "2", "--groups", "2", "--format", "json", *shuffled)
    assert code == 0, err
    assert json.loads(out)["ensemble_mean"] == pytest.approx(by_seed)


def test_diversity_record_pairs_by_hand(tmp_path):
    preds = {"a": [1, 0, 1, 1, 0, 1, 0, 0], "b": [1, 1, 1, 0, 0, 1, 0, 1], "c": [0, 0, 1, 1, 1, 1, 0, 0]}
    paths = [logits(tmp_path / f"{n}.safetensors", np.eye(2)[p] * 3, seed=str(i))
             for i, (n, p) in enumerate(preds.items())]
    result = diversity.diversity(paths, matrix=True)
    assert isinstance(result, Diversity) and result.members == 3 and not result.regression
    right = {n: np.array(p) == LABELS for n, p in preds.items()}
    for row, (x, y) in zip(result.rows, itertools.combinations(preds, 2)):
        assert (row.a, row.b) == (f"{x}.safetensors", f"{y}.safetensors")
        assert row.values["disagreement"] == pytest.approx(np.mean(right[x] != right[y]))
        assert row.values["negative_double_fault"] == pytest.approx(-np.mean(~right[x] & ~right[y]))
    mean = diversity.diversity(paths)
    disagreement = next(r for r in mean.rows if r.metric == "disagreement")
    assert disagreement.value == pytest.approx(np.mean([r.values["disagreement"] for r in result.rows]))


def mask_file(path, bits, seed, policy="base"):
    t, s = Mask({"w": np.array(bits, dtype=bool)}).pack()
    return str(write_artifact(path, "mask", t, {"shapes": s, "model_fingerprint": "m1", "policy": policy,
                                                "seed": seed, "task": "mrpc"}))


def test_iou_records_by_hand(tmp_path):
    a = mask_file(tmp_path / "a.safetensors", [1, 1, 0, 0, 1, 1, 1, 1, 1, 0], "1")
    b = mask_file(tmp_path / "b.safetensors", [1, 0, 1, 0, 1, 1, 1, 1, 1, 1], "2")
    c = mask_file(tmp_path / "c.safetensors", [0, 0, 0, 0, 1, 1, 1, 1, 1, 1], "3", "random")
    matrix = iou.mask_iou([a, b, c])
    assert isinstance(matrix, IouMatrix) and matrix.labels == ["base-s1", "base-s2", "random-s3"]
    assert matrix.values[0, 1] == pytest.approx(6 / 9) and matrix.values[1, 2] == pytest.approx(6 / 8)
    assert matrix.values[0, 2] == pytest.approx(5 / 8) and not matrix.structured
    (layer,) = iou.layer_iou([a, b, c])
    assert layer.parameter == "w" and layer.mean_iou == pytest.approx((6 / 9 + 6 / 8 + 5 / 8) / 3)
    assert layer.sparsity == pytest.approx((3 + 2 + 4) / 30)


def test_table1_record_by_hand(tmp_path):
    rng = np.random.default_rng(5)
    outs = {(p, s): rng.normal(size=(len(LABELS), 2)) for p in ("dense", "base") for s in (1, 2, 3)}
    paths = [logits(tmp_path / f"{p}-{s}.safetensors", o, policy=p, seed=str(s)) for (p, s), o in outs.items()]
    result = stats.table1(paths, size=2, resamples=99)
    assert isinstance(result, Table1) and result.ref == "dense" and result.k == 2
    by = {r.group: r for r in result.rows}
    assert [r.group for r in result.rows] == ["dense", "base"]
    for p in ("dense", "base"):
        single = [accuracy_of({s: outs[(p, s)] for s in (1, 2, 3)}, [s]) for s in (1, 2, 3)]
        pairs = [accuracy_of({s: outs[(p, s)] for s in (1, 2, 3)}, c) for c in itertools.combinations((1, 2, 3), 2)]
        assert by[p].single_mean == pytest.approx(np.mean(single))
        assert by[p].ensemble_mean == pytest.approx(np.mean(pairs))
        assert by[p].ensemble_gain == pytest.approx(np.mean(pairs) - np.mean(single))
    assert by["base"].vs_ref == pytest.approx(by["base"].ensemble_mean - by["dense"].ensemble_mean)
    assert by["dense"].p_paper is None and by["base"].p_paper is not None and by["base"].cost is None
    assert len(result.notes) == 1 and "cannot give p below 0.25" in result.notes[0]  # 3 paired seeds


def test_phase_transition_and_super_ticket_records(tmp_path):
    rng = np.random.default_rng(6)
    paths, outs = [], {}
    for s in (1, 2):
        for kind, level in (("dense", 0.0), ("winning", 0.25), ("winning", 0.5), ("random", 0.5)):
            outs[(kind, level, s)] = o = rng.normal(size=(len(LABELS), 2))
            paths.append(logits(tmp_path / f"{kind}-{level}-{s}.safetensors", o, policy=kind, seed=str(s),
                                target_sparsity=str(level), sparsity=str(level), ffn_sparsity=str(level / 2)))
    table = phase.phase_transition(paths, resamples=0)
    assert table.columns == ["winning", "random"] and [r.value for r in table.rows] == [0.25, 0.5]
    acc = {key: float(np.mean(o.argmax(-1) == LABELS)) for key, o in outs.items()}
    half = table.rows[1]
    assert half.cells["winning"].mean == pytest.approx(np.mean([acc[("winning", 0.5, s)] for s in (1, 2)]))
    assert half.cells["winning"].n == 2 and table.rows[0].cells["random"].n == 0
    assert half.full.mean == pytest.approx(np.mean([acc[("dense", 0.0, s)] for s in (1, 2)]))
    assert half.vs_full == pytest.approx(half.cells["winning"].mean - half.full.mean)
    assert (half.heads_pruned, half.ffn_pruned) == (0.5, 0.25) and math.isnan(half.p_vs_full)
    ticket = phase.super_ticket(paths, 0.5)
    assert ticket.level in (0.25, 0.5) and ticket.chosen_on + ticket.reported_on == ticket.examples == 8
    assert ticket.masks == []  # these members record no parent mask


def test_cost_frontier_record(members):
    paths, outs = members
    result = stats.cost_frontier(list(paths.values()))
    assert result.member_costs == {"dense": 0.5}
    assert [(r.budget, r.k) for r in result.rows] == [(1, 2), (2, 4)]
    assert result.rows[1].mean == pytest.approx(accuracy_of(outs, [1, 2, 3, 10]))
    assert [c for c, _ in result.curves["dense"]] == [0.5, 1.0, 1.5, 2.0]


def test_show_describe_records(tmp_path):
    parent = mask_file(tmp_path / "p.safetensors", [1, 0, 1, 1], "1")
    from ticketctl.store.artifacts import read_artifact

    ref = read_artifact(parent).parent_ref()
    path = logits(tmp_path / "l.safetensors", np.zeros((8, 2)), parents=[ref])
    (shown,) = show.describe([path], check=True)
    assert shown.kind == "logits" and shown.summary == {"examples": 8, "labelled": True, "outputs": [8, 2]}
    assert [(v.path, v.status) for v in shown.verify] == [(ref["path"], "ok")]
    (tmp_path / "p.safetensors").write_bytes(b"changed")
    (changed,) = show.describe([path], check=True)
    assert changed.verify[0].status == "changed"
    with pytest.raises(Exception, match="changed or is missing"):
        show.unverified([changed])
    show.unverified([shown])  # all parents ok: no error


# ---------------------------------------------------------------------------------------------- rendering

TABLE = tables.Table(["group", "value", "p"], [{"group": "a", "value": 0.5, "p": float("nan")},
                                               {"group": "b", "value": 0.00012, "p": float("inf")}], "title")


def test_tsv_json_markdown_and_table_formats():
    assert tables.text(TABLE, "tsv") == "group\tvalue\tp\na\t0.5000\tnan\nb\t1.20e-04\tinf\n"
    assert tables.text(TABLE, "json") == ('{"group": "a", "value": 0.5, "p": null}\n'
                                          '{"group": "b", "value": 0.00012, "p": "inf"}\n')
    assert tables.text(TABLE, "markdown") == ("**title**\n\n| group | value | p |\n| --- | --- | --- |\n"
                                              "| a | 0.5000 |  |\n| b | 1.20e-04 | inf |\n")
    shown = tables.text(TABLE, "table").splitlines()
    assert shown[0] == "title" and any(line.startswith("│ a ") and line.endswith(" 0.5000 │     │") for line in shown)
    with pytest.raises(Exception, match="--format must be one of"):
        tables.text(TABLE, "xml")


def test_render_tables_of_records(members):
    paths, _ = members
    result = ensemble.ensemble(list(paths.values()), "probs", "1-2")
    score = render.ensemble_table(result.score)
    assert score.columns == ["members", "combine", "accuracy", "f1", "cost", "gflops"]
    assert score.title == "mrpc dev ensemble (cost: dense-member equivalents; gflops: per example)"
    sizes = render.ensemble_table(ensemble.size_table(result.members, result.sizes))
    assert sizes.columns == ["k", "combinations", "cost", "mean", "std", "min", "max", "mean_f1"]
    assert [r["k"] for r in sizes.rows] == [1, 2] and sizes.rows[1]["cost"] == 1.0
    t1 = render.table1_table(stats.table1(list(paths.values()), by="seed", size=1, resamples=99))
    assert t1.columns[:7] == ["group", "members", "single_mean", "single_std", "k", "cost", "gflops"]
    assert t1.rows[1]["test"] == "n/a (one seed)" and "p_paper" in t1.columns and "p_paper" not in t1.rows[1]
    assert tables.text(t1, "tsv").splitlines()[2].endswith("\tn/a (one seed)\tnan\t")  # p_paper left blank
