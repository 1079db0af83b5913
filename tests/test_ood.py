"""Out-of-distribution detection (issue #33): ``finetune --ood-file`` scores unlabelled texts as the split ``ood``
at the end of training (a finished member is reused, not retrained), and ``ensemble --ood ood`` reports AUROC and
FPR at 95% TPR of 1 - max probability, entropy and mutual information, checked against scikit-learn and direct
computations, never against the code under test."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from conftest import logits_artifact
from sklearn.metrics import roc_auc_score, roc_curve

from ticketctl.analysis import metrics, ood
from ticketctl.store.artifacts import read_artifact

# ---------------------------------------------------------------------------------------------- by hand


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _entropy(p):
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=-1)


def _hand_scores(logits, combine="probs"):
    """(msp, entropy, mi) of one ensemble's members' logits (m, n, C), written out directly."""
    member = _softmax(np.asarray(logits, dtype=np.float64))
    mean = member.mean(axis=0)
    p = _softmax(np.asarray(logits, dtype=np.float64).mean(axis=0)) if combine == "logits" else mean
    return {"msp": 1 - p.max(axis=1), "entropy": _entropy(p), "mi": _entropy(mean) - _entropy(member).mean(axis=0)}


def _sk_auroc(s_in, s_out):
    return roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out])


def _direct_fpr95(s_in, s_out):
    """The in-distribution false-positive rate at the first point of scikit-learn's ROC curve (thresholds from high
    to low, every distinct score) whose true-positive rate reaches 95%."""
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out],
                            drop_intermediate=False)
    return float(fpr[np.argmax(tpr >= 0.95 - 1e-12)])


def test_batched_auroc_and_fpr_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    s_in = np.round(rng.normal(0, 1, (6, 50)), 1)  # rounded: many ties, within and across the two sides
    s_out = np.round(rng.normal(0.7, 1, (6, 37)), 1)
    got_auroc, got_fpr = ood.auroc_rows(s_in, s_out), ood.fpr_rows(s_in, s_out)
    for i in range(6):
        assert got_auroc[i] == pytest.approx(_sk_auroc(s_in[i], s_out[i]), abs=1e-12)
        assert got_auroc[i] == pytest.approx(metrics.ood_auroc(s_in[i], s_out[i]), abs=1e-12)
        assert got_fpr[i] == pytest.approx(_direct_fpr95(s_in[i], s_out[i]), abs=1e-12)
    # perfectly separated: AUROC 1, no false positives; reversed: AUROC 0, every in-distribution example flagged
    assert ood.auroc_rows(np.zeros((1, 5)), np.ones((1, 4))).tolist() == [1.0]
    assert ood.fpr_rows(np.zeros((1, 5)), np.ones((1, 4))).tolist() == [0.0]
    assert ood.auroc_rows(np.ones((1, 5)), np.zeros((1, 4))).tolist() == [0.0]
    assert ood.fpr_rows(np.ones((1, 5)), np.zeros((1, 4))).tolist() == [1.0]


# ---------------------------------------------------------------------------------------------- ensemble --ood


_art = logits_artifact


def _members(tmp_path, m=4, n_in=60, n_out=40, seed=3):
    """m members' logits on a labelled evaluation split (confident) and on OOD texts (flatter, more disagreement)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_in)
    ins, outs, logits_in, logits_out = [], [], [], []
    for i in range(m):
        a = np.eye(3)[labels] * 3 + rng.normal(0, 1.5, (n_in, 3))
        b = rng.normal(0, 1.2, (n_out, 3))
        logits_in.append(a.astype(np.float32))
        logits_out.append(b.astype(np.float32))
        ins.append(_art(tmp_path / f"in{i}.safetensors", a, "dev", i, labels, task="mnli"))
        outs.append(_art(tmp_path / f"ood{i}.safetensors", b, "ood", i, task="mnli", data="d2"))
    return ins, outs, np.stack(logits_in).astype(np.float64), np.stack(logits_out).astype(np.float64)


def _json_rows(out):
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("combine", ["probs", "logits"])
def test_ensemble_ood_matches_sklearn(cli, tmp_path, combine):
    ins, outs, x_in, x_out = _members(tmp_path)
    code, out, err = cli("ensemble", *ins, *reversed(outs), "--ood", "ood", "--combine", combine, "--format", "json")
    assert code == 0, err
    (row,) = _json_rows(out)
    s_in, s_out = _hand_scores(x_in, combine), _hand_scores(x_out, combine)
    for s in ("msp", "entropy", "mi"):
        assert row[f"auroc_{s}"] == pytest.approx(_sk_auroc(s_in[s], s_out[s]), abs=1e-6), s
        assert row[f"fpr95_{s}"] == pytest.approx(_direct_fpr95(s_in[s], s_out[s]), abs=1e-9), s
    assert 0.5 < row["auroc_msp"] <= 1  # the OOD texts are the less confident ones, by construction
    assert row["accuracy"] > 0.5  # the task's own metric is still there
    # the table shows the columns too; without --ood it is what it was
    code, table, err = cli("ensemble", *ins, *outs, "--ood", "ood", "--format", "tsv")
    assert code == 0 and table.splitlines()[0].split("\t")[-6:] == ood.columns(4)
    code, plain, err = cli("ensemble", *ins, "--format", "tsv")
    assert code == 0 and "auroc" not in plain


def test_ensemble_ood_per_size_averages_combinations(cli, tmp_path):
    ins, outs, x_in, x_out = _members(tmp_path)
    code, out, err = cli("ensemble", *ins, *outs, "--ood", "ood", "--size", "1-3", "--format", "json")
    assert code == 0, err
    rows = {r["k"]: r for r in _json_rows(out)}
    for k in (1, 2, 3):
        combos = list(itertools.combinations(range(4), k))
        for s in ("msp", "entropy", "mi"):
            if s == "mi" and k == 1:
                assert rows[1]["mean_auroc_mi"] is None and rows[1]["mean_fpr95_mi"] is None  # undefined: one member
                continue
            auroc = [_sk_auroc(_hand_scores(x_in[list(c)])[s], _hand_scores(x_out[list(c)])[s]) for c in combos]
            fpr = [_direct_fpr95(_hand_scores(x_in[list(c)])[s], _hand_scores(x_out[list(c)])[s]) for c in combos]
            assert rows[k][f"mean_auroc_{s}"] == pytest.approx(np.mean(auroc), abs=1e-6), (k, s)
            assert rows[k][f"mean_fpr95_{s}"] == pytest.approx(np.mean(fpr), abs=1e-9), (k, s)


def test_one_member_has_no_mutual_information(cli, tmp_path):
    ins, outs, x_in, x_out = _members(tmp_path, m=1)
    code, out, err = cli("ensemble", ins[0], outs[0], "--ood", "ood", "--format", "json")
    assert code == 0, err
    (row,) = _json_rows(out)
    assert "auroc_mi" not in row and "auroc_entropy" in row


def test_vote_leaves_the_scores_out(cli, tmp_path):
    ins, outs, _, _ = _members(tmp_path)
    code, out, err = cli("ensemble", *ins, *outs, "--ood", "ood", "--combine", "vote", "--format", "json")
    assert code == 0, err
    assert "auroc" not in out and "auroc_msp" in err and "not probabilities" in err


def _refused(cli, tmp_path, *args):
    dest = tmp_path / "written"
    code, out, err = cli("ensemble", *args, "--ood", "ood", "--out", dest)
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not dest.exists()  # nothing written
    return err


def test_members_that_do_not_pair_up_are_refused(cli, tmp_path):
    ins, outs, x_in, x_out = _members(tmp_path)
    assert "needs its outputs on both" in _refused(cli, tmp_path, *ins, *outs[:3])
    other = _art(tmp_path / "other.safetensors", x_out[3], "ood", 9, task="mnli", data="d2")  # another member
    assert "of the same member" in _refused(cli, tmp_path, *ins, *outs[:3], other)
    task = _art(tmp_path / "rte.safetensors", x_out[3][:, :2], "ood", 3, task="rte", data="d2")
    assert "cannot mix tasks" in _refused(cli, tmp_path, *ins, *outs[:3], task)
    same = [_art(tmp_path / f"same{i}.safetensors", x_in[i], "ood", i, task="mnli") for i in range(4)]
    assert "same examples" in _refused(cli, tmp_path, *ins, *same)
    assert "no logits artifacts of split 'ood'" in _refused(cli, tmp_path, *ins)


def test_one_regression_member_is_refused(cli, tmp_path):
    """A regression ensemble's uncertainty is its members' spread (tests/test_ood_significance.py): one member has
    none, so no OOD score."""
    rng = np.random.default_rng(1)
    a = _art(tmp_path / "a.safetensors", rng.normal(size=(20, 1)), "dev", 0, rng.uniform(0, 5, 20).astype(np.float32),
             task="stsb")
    b = _art(tmp_path / "b.safetensors", rng.normal(size=(10, 1)), "ood", 0, task="stsb", data="d2")
    code, out, err = cli("ensemble", a, b, "--ood", "ood")
    assert code != 0 and "regression" in err and "two members" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- finetune --ood-file


def _ood_file(tmp_path, labels=None):
    rows = [{"sentence1": "Quarterly revenue beat forecasts.", "sentence2": "The stadium was full."},
            {"sentence1": "Bake the bread for an hour.", "sentence2": "Rivers flood in spring."},
            {"sentence1": "The verdict was appealed.", "sentence2": "Tea is served at four."}]
    if labels:
        rows = [{**r, "label": lab} for r, lab in zip(rows, labels)]
    path = tmp_path / ("ood-labelled.jsonl" if labels else "ood.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_finetune_scores_an_unlabelled_ood_file(cli, tiny_args, tmp_path):
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "2", "--out", tmp_path / "a", *tiny_args,
                         "--ood-file", _ood_file(tmp_path))
    assert code == 0, err
    dev, oodp = out.split()
    art = read_artifact(oodp, "logits")
    assert art.meta["split"] == "ood" and "labels" not in art.tensors and not art.meta.get("metrics")
    assert art.tensors["outputs"].shape == (3, 2)
    assert art.meta["config"] == read_artifact(dev, "logits").meta["config"]  # the same member
    # the member's identity does not include the OOD split: its dev artifact has the name it has without one
    code, plain, err = cli("finetune", "--task", "mrpc", "--seed", "2", "--out", tmp_path / "b", *tiny_args)
    assert code == 0 and plain.split()[0].rsplit("/", 1)[1] == dev.rsplit("/", 1)[1]
    # labels that are not the task's are ignored, not refused
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "2", "--out", tmp_path / "c", *tiny_args,
                         "--ood-file", _ood_file(tmp_path, ["sports", "food", "law"]))
    assert code == 0, err
    assert "labels" not in read_artifact(out.split()[1], "logits").tensors
    # and ensemble pairs the two splits of the same member
    code, out, err = cli("ensemble", dev, oodp, "--ood", "ood", "--format", "json")
    assert code == 0, err
    assert set(ood.columns(1)) <= set(_json_rows(out)[0])


def test_a_finished_member_is_not_retrained_for_an_ood_file(cli, tiny_args, tmp_path):
    runs, saved = tmp_path / "runs", tmp_path / "member"
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "4", "--out", runs, "--save-model", saved, *tiny_args)
    assert code == 0, err
    (dev,) = out.split()
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")}
    ood_file = _ood_file(tmp_path)
    tiny = [a for a in tiny_args if a != "--quiet"]
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "4", "--out", runs, "--save-model", saved, *tiny,
                         "--ood-file", ood_file)
    assert code == 0, err
    assert out.split() == [dev]  # reused: the dev artifact only
    assert "finished already" in err and "not retrained" in err and "predict --model-dir" in err
    assert "finetune mrpc seed=4" not in err  # no training started
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")} == before
    # later: the saved member scores the OOD texts without training, and pairs with its dev artifact
    code, out, err = cli("predict", ood_file, "--model-dir", saved, "--split", "ood", "--out", runs, "--quiet",
                         "--device", "cpu")
    assert code == 0, err
    (oodp,) = out.split()
    assert read_artifact(oodp, "logits").meta["split"] == "ood" and "labels" not in read_artifact(oodp).tensors
    code, out, err = cli("ensemble", dev, oodp, "--ood", "ood", "--format", "json")
    assert code == 0, err
    assert 0 <= _json_rows(out)[0]["auroc_msp"] <= 1


def test_protocol_counts_a_member_without_ood_outputs_done(cli, tiny_args, tiny_model, glue_dir, tmp_path):
    """The targets the protocol checks (``finetune.targets``) leave the OOD split out: a member finished before
    --ood-file was given counts as done, and the dev artifact is the same; an --eval-file named ood is refused."""
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.stages import context, finetune

    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "5", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    data = DataOptions(data_dir=str(glue_dir), ood_file=str(_ood_file(tmp_path)))
    run = RunOptions(model=str(tiny_model), out=tmp_path, device="cpu", quiet=True)
    ctx, cfg, _ = context.start("mrpc", TrainConfig(epochs=1, batch_size=8), data, run)
    assert [s.name for s in ctx.evals] == ["dev", "ood"]
    spec = finetune.FinetuneSpec("mrpc", 5, train=TrainConfig(epochs=1, batch_size=8), data=data, run=run)
    assert [str(p) for p in finetune.targets(spec, ctx, cfg)] == out.split()
    (tmp_path / "ood.jsonl").rename(tmp_path / "texts.jsonl")
    clash = tmp_path / "ood.tsv"
    clash.write_text((glue_dir / "MRPC" / "dev.tsv").read_text())
    code, out, err = cli("finetune", "--task", "mrpc", "--out", tmp_path, *tiny_args, "--eval-file", clash,
                         "--ood-file", tmp_path / "texts.jsonl")
    assert code != 0 and "both named 'ood'" in err and len(err.strip().splitlines()) == 1


def test_protocol_members_get_ood_outputs_up_front_and_are_not_rerun_for_them(cli, tiny_args, tmp_path):
    runs, ood_file = tmp_path / "runs", _ood_file(tmp_path)
    plan = ["protocol", *tiny_args, "--task", "mrpc", "--seeds", "1-2", "--schemes", "dense", "--size", "2",
            "--resamples", "99", "--out", runs, "--report", tmp_path / "report"]
    code, out, err = cli(*plan[:-4], "--out", tmp_path / "first", "--report", tmp_path / "r1", "--ood-file", ood_file)
    assert code == 0, err
    oods = sorted((tmp_path / "first").glob("mrpc-logits-ood-dense-s*.safetensors"))
    devs = sorted((tmp_path / "first").glob("mrpc-logits-dev-dense-s*.safetensors"))
    assert len(oods) == 2 and len(devs) == 2
    code, out, err = cli("ensemble", *devs, *oods, "--ood", "ood", "--format", "json")
    assert code == 0 and "auroc_mi" in out, err
    whole = _json_rows(out)[0]
    # the report's section: the 2-member ensemble (the one combination) and the mean single member, as ensemble says
    report = json.loads((tmp_path / "r1" / "report.json").read_text())["ood"]
    (row,) = report["rows"]
    assert row["scheme"] == "dense" and report["missing"] == {}
    for c in ood.columns(2):
        assert row[f"ensemble_{c}"] == pytest.approx(whole[c], abs=1e-9), c
    singles = []
    for d, o in zip(devs, oods):
        code, out, err = cli("ensemble", d, o, "--ood", "ood", "--format", "json")
        singles.append(_json_rows(out)[0])
    for c in ood.columns(1):
        assert row[f"single_{c}"] == pytest.approx(np.mean([r[c] for r in singles]), abs=1e-9), c
    assert "## Out-of-distribution detection" in (tmp_path / "r1" / "report.md").read_text()
    # members finished without the OOD file: the protocol with it has nothing to run, and says they are left out
    code, out, err = cli(*plan)
    assert code == 0, err
    code, out, err = cli(*plan, "--ood-file", ood_file, "--dry-run")
    assert code == 0 and out.strip().splitlines()[-1] == "0 to run, 2 done", out
    before = {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")}
    code, out, err = cli(*plan, "--ood-file", ood_file)
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in runs.glob("*.safetensors")} == before  # nothing trained
    assert json.loads((tmp_path / "report" / "report.json").read_text())["ood"]["missing"] == {"dense": 2}
    assert "without OOD outputs" in (tmp_path / "report" / "report.md").read_text()
