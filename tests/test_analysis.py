"""ensemble, diversity, iou, stats: hand-computed cases, degenerate cases, refusals, and a real pipeline."""

import itertools
import json

import numpy as np
import pytest

from ticketctl.analysis import diversity as div
from ticketctl.analysis import combine
from ticketctl.analysis import ensemble as ens
from ticketctl.analysis.significance import split_groups
from ticketctl.masks.weights import Mask
from ticketctl.store.artifacts import read_artifact, write_artifact
from ticketctl.analysis.members import load_ensemble_members as load_members
from ticketctl.data.tasks import get_task


def logits_file(path, outputs, labels=None, ids=None, **meta):
    outputs = np.asarray(outputs, dtype=np.float32)
    n = len(outputs)
    tensors = {"outputs": outputs, "ids": np.arange(n) if ids is None else np.asarray(ids)}
    if labels is not None:
        tensors["labels"] = np.asarray(labels)
    base = {"task": "mrpc", "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": "0",
            "policy": "dense"}
    return str(write_artifact(path, "logits", tensors, {**base, **meta}))


def stub_artifacts(n: int) -> list:
    """Stand-ins for n logits artifacts with seeds 0..n-1 (the members' outputs are given directly)."""
    from pathlib import Path

    from ticketctl.store.artifacts import Artifact

    return [Artifact(Path(f"m{i}.safetensors"), {"kind": "logits", "seed": str(i)}, {}, "") for i in range(n)]


def onehot_logits(pred, scale=3.0):
    pred = np.asarray(pred)
    out = np.zeros((len(pred), 2), dtype=np.float32)
    out[np.arange(len(pred)), pred] = scale
    return out


LABELS = [1, 0, 1, 1, 0, 1]


@pytest.fixture()
def three(tmp_path):
    preds = [[1, 0, 1, 0, 0, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]
    return [logits_file(tmp_path / f"m{i}.safetensors", onehot_logits(p), LABELS, seed=str(i))
            for i, p in enumerate(preds)], preds


def test_ensemble_majority_and_combinations(three):
    paths, preds = three
    m = load_members(paths)
    # Equal-confidence members: mean probabilities = majority vote: [1,0,1,1,0,1] -> all correct.
    assert ens.all_member_scores(m, "probs")["accuracy"] == 1.0
    assert ens.all_member_scores(m, "vote")["accuracy"] == 1.0
    rows = ens.size_table(m, [1, 2, 3], "probs").rows
    assert [r.combinations for r in rows] == [3, 3, 1]
    singles = [np.mean(np.array(p) == LABELS) for p in preds]
    assert rows[0].mean == pytest.approx(np.mean(singles))
    assert rows[0].min == pytest.approx(min(singles)) and rows[0].max == pytest.approx(max(singles))
    assert rows[2].mean == 1.0 and rows[2].std == 0.0


def test_combinations_match_brute_force():
    rng = np.random.default_rng(0)
    task = get_task("mrpc")
    outputs = rng.normal(size=(7, 50, 2))
    labels = rng.integers(0, 2, 50)
    terms = combine.member_terms(task, outputs, "probs")
    got = combine.combination_scores(task, terms, labels, 3)
    want = []
    for c in itertools.combinations(range(7), 3):
        p = np.exp(outputs[list(c)]) / np.exp(outputs[list(c)]).sum(-1, keepdims=True)
        want.append(np.mean(p.mean(0).argmax(-1) == labels))
    assert np.allclose(got["accuracy"], want)
    assert len(got["f1"]) == 35


def test_groups_protocol():
    assert split_groups(10, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    rng = np.random.default_rng(1)
    task = get_task("mrpc")
    outputs = rng.normal(size=(4, 30, 2))
    labels = rng.integers(0, 2, 30)
    terms = combine.member_terms(task, outputs, "probs")
    a = combine.combination_scores(task, terms, labels, 2, [0, 1])["accuracy"]
    b = combine.combination_scores(task, terms, labels, 2, [2, 3])["accuracy"]
    from ticketctl.analysis.members import Members

    m = Members(task, "dev", stub_artifacts(4), outputs, labels, np.arange(30))
    row = ens.size_table(m, [2], "probs", groups=2).rows[0]
    assert row.combinations == 2 and row.mean == pytest.approx(np.mean([a[0], b[0]]))


def test_ensemble_speed_20_members_2000_examples(tmp_path):
    """All 21,679 ensembles of 2..5 of 20 members on 2,000 examples: the values are those of a brute-force loop, and
    the whole table takes under 3 s on 2 cores (0.6 s measured; a per-combination Python loop took minutes)."""
    import time
    from itertools import combinations

    rng = np.random.default_rng(0)
    task = get_task("mrpc")
    outputs = rng.normal(size=(20, 2000, 2))
    labels = rng.integers(0, 2, 2000)
    from ticketctl.analysis.members import Members

    m = Members(task, "dev", stub_artifacts(20), outputs, labels, np.arange(2000))
    start = time.perf_counter()
    rows = ens.size_table(m, [2, 3, 4, 5], "probs").rows
    seconds = time.perf_counter() - start
    assert [r.combinations for r in rows] == [190, 1140, 4845, 15504]
    probs = np.exp(outputs) / np.exp(outputs).sum(-1, keepdims=True)
    brute = [np.mean(probs[list(c)].mean(0).argmax(-1) == labels) for c in combinations(range(20), 2)]
    assert rows[0].mean == pytest.approx(np.mean(brute), abs=1e-12)
    assert rows[0].min == min(brute) and rows[0].max == max(brute)
    assert seconds < 3.0, f"size table took {seconds:.2f} s"


def test_regression_ensemble_mean(tmp_path):
    y = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    p1 = logits_file(tmp_path / "a.safetensors", [[1.0], [2.0], [3.0], [5.0]], y, task="stsb")
    p2 = logits_file(tmp_path / "b.safetensors", [[1.0], [2.0], [3.0], [3.0]], y, task="stsb")
    m = load_members([p1, p2])
    assert ens.all_member_scores(m)["pearson"] == pytest.approx(1.0)
    rows = div.regression_summary(m)
    vals = {r.metric: r.value for r in rows}
    # ambiguity decomposition: ensemble error = mean member error - mean ambiguity
    assert vals["ensemble_squared_error"] == pytest.approx(vals["mean_member_squared_error"] - vals["mean_ambiguity"])
    assert vals["ensemble_squared_error"] == 0.0 and vals["mean_member_squared_error"] == pytest.approx(0.25)


def test_diversity_hand_computed():
    # a: right on 0,1,2 ; b: right on 0,3   (4 examples)
    correct = np.array([[1, 1, 1, 0], [1, 0, 0, 1]], dtype=bool)
    p = div.pairwise(correct)
    n11, n10, n01, n00 = 1, 2, 1, 0
    assert p["q_statistic"][0, 1] == pytest.approx((n11 * n00 - n01 * n10) / (n11 * n00 + n01 * n10))  # -1
    assert p["correlation"][0, 1] == pytest.approx(-2 / np.sqrt(3 * 1 * 2 * 2))
    assert p["disagreement"][0, 1] == pytest.approx(3 / 4)
    assert p["negative_double_fault"][0, 1] == 0.0
    assert p["ratio_errors"][0, 1] == np.inf  # single faults, no double fault
    rows = {r.metric: r.value for r in div.summary(correct)}
    assert rows["ratio_errors"] == np.inf


def test_diversity_degenerate_cases():
    same = np.array([[1, 0, 1, 0], [1, 0, 1, 0]], dtype=bool)
    rows = {r.metric: r.value for r in div.summary(same)}
    assert rows["q_statistic"] == 1.0 and rows["correlation"] == 1.0 and rows["disagreement"] == 0.0
    assert rows["ratio_errors"] == 0.0 and rows["negative_double_fault"] == -0.5
    all_wrong = np.zeros((3, 5), dtype=bool)
    rows = {r.metric: r.value for r in div.summary(all_wrong)}
    assert rows["negative_double_fault"] == -1.0 and rows["q_statistic"] == 1.0 and rows["ratio_errors"] == 0.0
    all_right = np.ones((2, 5), dtype=bool)
    rows = {r.metric: r.value for r in div.summary(all_right)}
    assert rows["q_statistic"] == 1.0 and rows["ratio_errors"] == 0.0 and rows["disagreement"] == 0.0
    pooled = np.array([[1, 0, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=bool)
    rows = {r.metric: r.value for r in div.summary(pooled)}
    p = div.pairwise(pooled)
    iu = np.triu_indices(3, 1)
    assert rows["ratio_errors"] == pytest.approx(p["_single"][iu].sum() / p["_double"][iu].sum())


def test_iou_hand_computed(tmp_path):
    def mask_file(name, bits):
        t, s = Mask({"w": np.array(bits, dtype=bool)}).pack()
        return str(write_artifact(tmp_path / name, "mask", t, {"shapes": s, "model_fingerprint": "m1",
                                                                "policy": "base", "seed": name[0]}))

    from ticketctl.analysis import iou

    a = mask_file("1.safetensors", [1, 1, 0, 0, 1, 1, 1, 1, 1, 0])
    b = mask_file("2.safetensors", [1, 0, 1, 0, 1, 1, 1, 1, 1, 1])
    arts = iou.load_masks([a, b])
    assert iou.iou_matrix(arts)[0, 1] == pytest.approx(6 / 9)


def test_cli_analysis_commands(cli, three, tmp_path):
    paths, _ = three
    code, out, err = cli("ensemble", *paths, "--format", "json")
    assert code == 0, err
    assert json.loads(out)["accuracy"] == 1.0
    code, out, err = cli("ensemble", "-", "--size", "1-3", "--format", "tsv", stdin="\n".join(paths))
    assert code == 0, err
    lines = out.strip().split("\n")
    assert lines[0].startswith("k\tcombinations\tmean") and len(lines) == 4
    code, out, err = cli("ensemble", *paths, "--out", tmp_path / "ens", "--submission", tmp_path / "sub.tsv")
    assert code == 0, err
    art = read_artifact(out.strip(), "logits")
    assert len(art.meta["parents"]) == 3 and art.meta["metrics"]["accuracy"] == 1.0
    assert (tmp_path / "sub.tsv").read_text().split("\n")[:2] == ["index\tprediction", "0\t1"]
    code, out, err = cli("diversity", *paths, "--format", "json")
    assert code == 0, err
    metrics = [json.loads(x)["metric"] for x in out.strip().split("\n")]
    assert metrics == list(div.DIRECTIONS)
    code, out, err = cli("diversity", *paths, "--matrix", "--format", "tsv")
    assert code == 0 and len(out.strip().split("\n")) == 4


def test_cli_refusals(cli, tmp_path, three):
    paths, _ = three
    other_task = logits_file(tmp_path / "rte.safetensors", onehot_logits([1] * 6), LABELS, task="rte")
    other_ids = logits_file(tmp_path / "ids.safetensors", onehot_logits([1] * 6), LABELS, ids=[5, 4, 3, 2, 1, 0])
    other_split = logits_file(tmp_path / "split.safetensors", onehot_logits([1] * 6), LABELS, split="test")
    cases = [
        (["ensemble", paths[0], other_task], 3, "cannot mix tasks"),
        (["ensemble", paths[0], other_ids], 3, "cannot mix example ids"),
        (["ensemble", paths[0], other_split], 3, "cannot mix splits"),
        (["diversity", paths[0]], 2, "at least 2"),
        (["ensemble", "-"], 2, "no artifacts"),
        (["ensemble", paths[0], paths[0]], 2, "same file"),
        (["ensemble", paths[0], "--size", "5"], 2, "--size 5"),
        (["iou", paths[0], paths[1]], 3, "no mask artifacts among the 2 given (they are: logits)"),
        (["stats", paths[0], "--by", "nosuchkey"], 2, "no metadata key"),
        (["ensemble", paths[0], "--combine", "median"], 2, "--combine"),
    ]
    for args, code, msg in cases:
        got, out, err = cli(*args, stdin="" if "-" in args else None)
        assert got == code, (args, err)
        assert msg in err and err.count("\n") == 1 and out == "", (args, err)


def test_the_same_member_twice_however_spelled_and_labels_that_disagree_are_refused(cli, tmp_path, three, monkeypatch):
    import os
    import shutil

    paths, _ = three
    monkeypatch.chdir(tmp_path)
    os.symlink(paths[0], tmp_path / "link.safetensors")
    shutil.copy(paths[0], tmp_path / "copy.safetensors")
    dotted = "./" + os.path.relpath(paths[0], tmp_path)
    other_labels = logits_file(tmp_path / "lab.safetensors", onehot_logits([1] * 6), [0, 0, 1, 1, 0, 1], seed="7")
    unlabelled = logits_file(tmp_path / "unl.safetensors", onehot_logits([1] * 6), None, seed="8")
    bad_class = logits_file(tmp_path / "bad.safetensors", onehot_logits([1] * 6), [1, 0, 2, 1, 0, 1], seed="9")
    for command in ("ensemble", "diversity", "stats"):
        for twin, message in ((dotted, "same file"), ("link.safetensors", "same file"),
                              ("copy.safetensors", "same content")):
            code, out, err = cli(command, paths[0], paths[1], twin)
            assert code == 2 and message in err and out == "", (command, twin, err)
        code, out, err = cli(command, paths[0], paths[1], other_labels)
        assert code == 3 and "different labels" in err, (command, err)
        code, out, err = cli(command, paths[0], paths[1], unlabelled)
        assert code == 3 and "labelled and unlabelled" in err, (command, err)
    code, out, err = cli("ensemble", bad_class)
    assert code == 3 and "not class indices" in err
    masks = []
    for i in range(2):
        keep = {"w": np.random.default_rng(i).random((4, 4)) > 0.3}
        tensors, shapes = Mask(keep).pack()
        masks.append(str(write_artifact(tmp_path / f"mask{i}.safetensors", "mask", tensors,
                                        {"shapes": shapes, "model_fingerprint": "m1", "method": "imp"})))
    shutil.copy(masks[0], tmp_path / "maskcopy.safetensors")
    code, out, err = cli("iou", masks[0], masks[1], "maskcopy.safetensors")
    assert code == 2 and "same content" in err


def test_stats_table_and_ttest(cli, tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    paths = []
    for policy, acc in (("dense", 0.7), ("random", 0.75)):
        for s in range(5):
            pred = np.where(rng.random(200) < acc, labels, 1 - labels)
            paths.append(logits_file(tmp_path / f"{policy}{s}.safetensors", onehot_logits(pred) +
                                     rng.normal(0, 0.1, (200, 2)), labels, policy=policy, seed=str(s)))
    code, out, err = cli("stats", *paths, "--format", "json", "--size", "3", "--plot", tmp_path / "fig3.png",
                         "--bootstrap", "200", "--resamples", "20000")
    assert code == 0, err
    rows = [json.loads(x) for x in out.strip().split("\n")]
    assert [r["group"] for r in rows] == ["dense", "random"]
    assert rows[0]["test"] == "ref"
    assert rows[1]["combinations"] == 10
    # recomputed here by brute force: the 3-member ensembles of each scheme, the paper's t-test over them, and the
    # exact paired permutation p-value (all 2^5 exchanges of a seed's dense and random member)
    from itertools import combinations, product

    from scipy import stats as sps

    from ticketctl.store.artifacts import read_artifact

    outputs = np.array([read_artifact(p).tensors["outputs"].astype(np.float64) for p in paths])
    probs = np.exp(outputs) / np.exp(outputs).sum(-1, keepdims=True)

    def ensemble_accuracies(group, examples=slice(None)):
        return np.array([np.mean(probs[[group[i] for i in c]][:, examples].mean(0).argmax(1) == labels[examples])
                         for c in combinations(range(5), 3)])

    dense, random_ = ensemble_accuracies(list(range(5))), ensemble_accuracies(list(range(5, 10)))
    assert rows[1]["ensemble_mean"] == pytest.approx(random_.mean())
    assert rows[1]["p_paper"] == pytest.approx(sps.ttest_ind(random_, dense).pvalue, rel=1e-9)
    observed = random_.mean() - dense.mean()
    null = []
    for swap in product([0, 1], repeat=5):
        a = [s + 5 * (1 - w) for s, w in enumerate(swap)]  # the random member of seed s unless swapped
        b = [s + 5 * w for s, w in enumerate(swap)]
        null.append(ensemble_accuracies(a).mean() - ensemble_accuracies(b).mean())
    exact = np.mean(np.abs(null) >= abs(observed) - 1e-12)
    assert rows[1]["test"] == "paired permutation (seeds)"
    assert abs(rows[1]["p_value"] - exact) < 0.005, (rows[1]["p_value"], exact)  # 20,000 permutations: sigma < 0.0035
    # the interval by hand: leave-one-seed-out jackknife of the paired difference (a seed's combinations leave
    # both schemes), standard error sqrt((n-1)/n * sum (d_(s) - mean)^2), Student's t on n - 1 = 4 dof
    d = random_ - dense  # per combination of seed positions, in combinations(range(5), 3) order
    combos = list(combinations(range(5), 3))
    leave = np.array([np.mean([x for x, c in zip(d, combos) if s not in c]) for s in range(5)])
    half = sps.t.ppf(0.975, 4) * np.sqrt(4 / 5 * np.sum((leave - leave.mean()) ** 2))
    assert rows[1]["diff_low"] == pytest.approx(d.mean() - half)
    assert rows[1]["diff_high"] == pytest.approx(d.mean() + half)
    assert rows[1]["vs_ref"] == pytest.approx(rows[1]["ensemble_mean"] - rows[0]["ensemble_mean"])
    assert (tmp_path / "fig3.png").stat().st_size > 1000
    # --bootstrap 200 by hand: per scheme, 200 resamples of the 200 examples (numpy's default_rng(0), drawn afresh
    # for each scheme), the mean 3-member ensemble accuracy on each, and its 2.5% and 97.5% quantiles
    for r, group in zip(rows, (list(range(5)), list(range(5, 10)))):
        rng_ = np.random.default_rng(0)
        boot = [ensemble_accuracies(group, rng_.integers(0, 200, 200)).mean() for _ in range(200)]
        assert [r["ci_low"], r["ci_high"]] == pytest.approx(np.quantile(boot, [0.025, 0.975]))


def test_paper_test_is_students_over_combinations():
    from scipy import stats

    from ticketctl.analysis.significance import paper_ttest

    a = np.array([0.80, 0.81, 0.79, 0.80, 0.82, 0.78])
    b = np.array([0.70, 0.90, 0.60, 1.00, 0.65, 0.95])
    assert paper_ttest(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=True).pvalue)
    assert np.isnan(paper_ttest(a[:1], b))


def test_stats_refuses_a_group_mixing_configurations(cli, tmp_path):
    a = logits_file(tmp_path / "a.safetensors", onehot_logits([1] * 6), LABELS, seed="1",
                    config={"lr": 1e-4, "epochs": 3.0, "seed": 1})
    b = logits_file(tmp_path / "b.safetensors", onehot_logits([0] * 6), LABELS, seed="2",
                    config={"lr": 1e-4, "epochs": 1.0, "seed": 2})
    code, out, err = cli("stats", a, b)
    assert code == 3 and "mixes configurations" in err and "epochs" in err


@pytest.mark.slow
def test_pipeline_search_finetune_into_ensemble_and_stats(tiny_model, glue_dir, tmp_path):
    """The Unix composition the README shows: paths from search/finetune piped into ensemble - and stats -."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = ["--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8",
              "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    tc = [sys.executable, "-m", "ticketctl"]
    script = []
    for s in (1, 2, 3):
        script.append(f"{' '.join(tc)} finetune --task mrpc --seed {s} {' '.join(common)}")
        script.append(f"{' '.join(tc)} search --task mrpc --policy random --seed {s} {' '.join(common)} | "
                      f"xargs -I{{}} {' '.join(tc)} finetune --task mrpc --seed {s} --mask {{}} {' '.join(common)}")
    paths = subprocess.run(" ; ".join(f"({c})" for c in script), shell=True, capture_output=True, text=True,
                           env=env, check=True).stdout
    assert len(paths.split()) == 6
    ens = subprocess.run(tc + ["ensemble", "-", "--format", "json"], input=paths, capture_output=True, text=True,
                         env=env)
    assert ens.returncode == 0, ens.stderr
    assert json.loads(ens.stdout)["members"] == 6
    st = subprocess.run(tc + ["stats", "-", "--size", "2", "--format", "tsv"], input=paths, capture_output=True,
                        text=True, env=env)
    assert st.returncode == 0, st.stderr
    rows = [line.split("\t") for line in st.stdout.strip().split("\n")]
    assert rows[0][:2] == ["group", "members"] and [r[0] for r in rows[1:]] == ["dense", "random"]


def test_recipe_check_fills_fields_added_later():
    from pathlib import Path

    from ticketctl.store.artifacts import Artifact
    from ticketctl.analysis.grouping import check_same_recipe

    def art(name, config):
        return Artifact(Path(name), {"config": config}, {}, "0" * 64)

    old = art("old", {"lr": 1e-4, "computation": 2, "seed": 1})
    new = art("new", {"lr": 1e-4, "computation": 2, "train_fraction": 1.0, "init": None, "seed": 2})
    check_same_recipe("g", [old, new])  # the same recipe, written before and after the fields existed
    small = art("small", {"lr": 1e-4, "computation": 2, "train_fraction": 0.1, "seed": 3})
    v1 = art("v1", {"lr": 1e-4, "seed": 4})
    import pytest

    from ticketctl.errors import InputError

    with pytest.raises(InputError, match="train_fraction"):
        check_same_recipe("g", [old, small])
    with pytest.raises(InputError, match="computation"):
        check_same_recipe("g", [old, v1])
