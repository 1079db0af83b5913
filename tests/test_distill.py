"""Knowledge distillation (``finetune --teacher``, issue #34): the loss against a float64 hand computation, the
student of alpha 0 is the plain finetune bit for bit, a student learns its teacher's rule rather than the labels,
teachers that do not fit are refused before anything is written, and students are reused and resumed like every
finetune."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from ticketctl.store.artifacts import read_artifact, write_artifact


def _teacher_of(cli, tiny_args, glue_dir, out, task="mrpc", seed="1", *extra):
    """A real teacher: a plain finetune's outputs on the training file (``--eval-file TRAIN``); returns (the
    training logits artifact, the dev logits artifact)."""
    folder = {"mrpc": "MRPC", "rte": "RTE", "sts-b": "STS-B"}[task]
    code, out_text, err = cli("finetune", "--task", task, "--seed", seed, "--eval-file", glue_dir / folder / "train.tsv",
                              "--out", out, *tiny_args, *extra)
    assert code == 0, err
    dev, train = out_text.split()
    return read_artifact(train, "logits"), read_artifact(dev, "logits")


def _rewrite(art, path, keep=None, outputs=None, **meta):
    """A copy of logits artifact ``art`` at ``path``: only the rows ``keep``, other ``outputs``, changed ``meta``."""
    rows = np.arange(len(art.tensors["ids"])) if keep is None else np.asarray(keep)
    tensors = {k: v[rows] for k, v in art.tensors.items()}
    if outputs is not None:
        tensors["outputs"] = np.asarray(outputs, np.float32)[rows]
    full = {k: v for k, v in art.meta.items() if k not in ("kind", "format_version")}
    return read_artifact(write_artifact(path, "logits", tensors, {**full, **meta}), "logits")


# ---------------------------------------------------------------------------------------------- the loss


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("combine", ["member", "probs"])
def test_loss_and_gradient_equal_a_float64_hand_computation(combine):
    """alpha * T^2 * KL(p_t || softmax(z/T)) + (1 - alpha) * CE, summed over the batch and divided by the global
    batch; its gradient alpha * T * (softmax(z/T) - p_t) + (1 - alpha) * (softmax(z) - onehot), over the global
    batch. The teacher's p_t: softmax(logits/T) of a member; of a --combine probs ensemble (which stores log mean
    probabilities) the mean probabilities to the power 1/T, renormalised."""
    import torch

    from ticketctl.train.distill import distill_loss, pack_targets, teacher_targets

    rng = np.random.default_rng(3)
    n, c, global_batch, alpha, t = 5, 3, 8, 0.3, 2.5
    z = rng.normal(size=(n, c)) * 2
    labels = rng.integers(0, c, n)
    if combine == "member":
        teacher_logits = rng.normal(size=(n, c)) * 3
        stored = teacher_logits
        p_t = _softmax(teacher_logits / t)
    else:
        members = _softmax(rng.normal(size=(4, n, c)).reshape(-1, c) * 3).reshape(4, n, c)
        mean = members.mean(axis=0)
        stored = np.log(mean)  # what ensemble --combine probs --out writes
        p_t = mean ** (1 / t) / (mean ** (1 / t)).sum(axis=1, keepdims=True)
    p_s_t, p_s = _softmax(z / t), _softmax(z)
    kl = (p_t * (np.log(p_t) - np.log(p_s_t))).sum()
    ce = -np.log(p_s[np.arange(n), labels]).sum()
    expected = (alpha * t * t * kl + (1 - alpha) * ce) / global_batch
    onehot = np.eye(c)[labels]
    expected_grad = (alpha * t * (p_s_t - p_t) + (1 - alpha) * (p_s - onehot)) / global_batch

    logits = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    target = torch.from_numpy(pack_targets(labels, teacher_targets(stored, t, regression=False)))
    loss = distill_loss(alpha, t, regression=False)(logits, target, global_batch)
    loss.backward()
    assert loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    np.testing.assert_allclose(logits.grad.numpy(), expected_grad, rtol=1e-10, atol=1e-14)


def test_regression_loss_and_gradient_equal_a_float64_hand_computation():
    """Regression: alpha * (s - teacher)^2 + (1 - alpha) * (s - label)^2, summed, over the global batch."""
    import torch

    from ticketctl.train.distill import distill_loss, pack_targets, teacher_targets

    rng = np.random.default_rng(4)
    n, global_batch, alpha = 6, 6, 0.7
    s, teacher, labels = rng.normal(size=n), rng.normal(size=n), rng.uniform(0, 5, n)
    expected = (alpha * ((s - teacher) ** 2).sum() + (1 - alpha) * ((s - labels) ** 2).sum()) / global_batch
    expected_grad = (2 * alpha * (s - teacher) + 2 * (1 - alpha) * (s - labels)) / global_batch
    pred = torch.tensor(s[:, None], dtype=torch.float64, requires_grad=True)
    target = torch.from_numpy(pack_targets(labels, teacher_targets(teacher[:, None], 2.0, regression=True)))
    loss = distill_loss(alpha, 2.0, regression=True)(pred, target, global_batch)
    loss.backward()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    np.testing.assert_allclose(pred.grad.numpy()[:, 0], expected_grad, rtol=1e-12)


# ---------------------------------------------------------------------------------------------- students


def test_alpha_zero_student_is_the_plain_finetune_bit_for_bit(cli, tiny_args, glue_dir, tmp_path):
    """With alpha 0 the teacher term is multiplied by 0.0: the student's dev logits are the plain finetune's, byte
    for byte; its name, identity and parents are a student's (the teacher's hash, alpha, T), never the finetune's."""
    args = [*tiny_args, "--epochs", "3"]
    teacher, plain = _teacher_of(cli, args, glue_dir, tmp_path / "t")
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--teacher", teacher.path, "--distill-alpha",
                         "0", "--out", tmp_path / "s", *args)
    assert code == 0, err
    student = read_artifact(out.strip(), "logits")
    assert student.tensors["outputs"].tobytes() == plain.tensors["outputs"].tobytes()
    assert "-student-s1-" in student.path.name and student.path.name != plain.path.name
    assert student.meta["config"]["teacher"] == teacher.sha256
    assert (student.meta["config"]["distill_alpha"], student.meta["config"]["distill_temperature"]) == (0.0, 2.0)
    assert [p["sha256"] for p in student.meta["parents"]] == [teacher.sha256]
    assert student.meta["policy"] == "student" and student.meta["teacher_combine"] == "member"
    assert "teacher" not in plain.meta["config"]  # without --teacher nothing about the finetune changed
    # A student with the default alpha learns something else from the same start.
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--teacher", teacher.path, "--out",
                         tmp_path / "s", *args)
    assert code == 0, err
    assert read_artifact(out.strip()).tensors["outputs"].tobytes() != plain.tensors["outputs"].tobytes()


WORDS = ["cat", "sat", "mat", "dog", "barked", "night", "rained", "morning", "stocks", "rose", "shares", "monday",
         "car", "book", "red", "coffee", "hot", "river", "long", "piano", "game", "birds", "shop", "winter"]


def _rule_data(folder, rng, n_train=160, n_held=120):
    """Texts of tiny-vocabulary words; the teacher's rule: 'cat' in the text -> 1. Training labels are coin flips
    (the rule explains none of them); the held-out file is labelled by the rule, so its accuracy is agreement with
    the rule."""
    def texts(n):
        rows = []
        for i in range(n):
            words = list(rng.choice(WORDS[1:], 5))
            if i % 2:
                words[rng.integers(0, 5)] = "cat"
            rows.append(" ".join(words))
        return rows

    def write(path, rows, labels):
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(zip(rows, labels))

    train = texts(n_train)
    write(folder / "train.csv", train, rng.integers(0, 2, n_train))
    held = texts(n_held)
    write(folder / "held.csv", held, [int("cat" in t.split()) for t in held])
    return train


def test_student_follows_its_teachers_rule_not_the_labels(cli, tiny_model, tmp_path):
    """A teacher that follows a learnable rule the labels do not ('cat' in the text; labels are coin flips): the
    student distilled with alpha 1 agrees with the rule on held-out texts far more often than a student of the
    labels. Measured (seeds 1 and 2, fp32, 2026-12-06): the distilled students agree with the rule on 1.000 of the 120
    held-out texts, the label students on 0.500 (half the held-out texts hold 'cat'): a margin of 0.50 for both
    seeds; the test asks for 0.25 on each."""
    rng = np.random.default_rng(0)
    train = _rule_data(tmp_path, rng)
    base = ["--model", str(tiny_model), "--train-file", tmp_path / "train.csv", "--validation-file",
            tmp_path / "held.csv", "--epochs", "10", "--batch-size", "16", "--lr", "1e-3", "--quiet", "--device",
            "cpu", "--out", tmp_path / "runs"]
    agreement = []
    for seed in ("1", "2"):
        code, out, err = cli("finetune", "--seed", seed, "--eval-file", tmp_path / "train.csv", *base)
        assert code == 0, err
        plain_dev, plain_train = (read_artifact(p) for p in out.split())
        rule = np.array([[0.0, 4.0] if "cat" in t.split() else [4.0, 0.0] for t in train])
        teacher = _rewrite(plain_train, tmp_path / f"teacher-{seed}.safetensors", outputs=rule)
        code, out, err = cli("finetune", "--seed", seed, "--teacher", teacher.path, "--distill-alpha", "1", *base)
        assert code == 0, err
        student = read_artifact(out.strip())
        agreement.append((student.meta["metrics"]["accuracy"], plain_dev.meta["metrics"]["accuracy"]))
    print("rule agreement (distilled, labels) per seed:", agreement)
    assert min(a - b for a, b in agreement) >= 0.25, agreement


# ---------------------------------------------------------------------------------------------- refusals


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_teachers_that_do_not_fit_are_refused_in_one_line_with_nothing_written(cli, tiny_args, glue_dir, tmp_path):
    teacher, _ = _teacher_of(cli, tiny_args, glue_dir, tmp_path / "t")
    n = len(teacher.tensors["ids"])
    missing = _rewrite(teacher, tmp_path / "missing.safetensors", keep=[i for i in range(n) if i not in (3, 17)])
    vote = _rewrite(teacher, tmp_path / "vote.safetensors", combine="vote", policy="ensemble")
    wide = _rewrite(teacher, tmp_path / "wide.safetensors",
                    outputs=np.concatenate([teacher.tensors["outputs"]] * 2, axis=1)[:, :3])
    other_task, _ = _teacher_of(cli, tiny_args, glue_dir, tmp_path / "t", "rte")
    changed = tmp_path / "glue-changed"
    shutil.copytree(glue_dir, changed)
    text = (changed / "MRPC" / "train.tsv").read_text()
    (changed / "MRPC" / "train.tsv").write_text(text.replace("The meeting was cancelled.", "The meeting was moved.", 1))
    cases = [
        (missing.path, [], "misses 2 of the 24 training examples (ids 3, 17)"),
        (vote.path, [], "an ensemble of votes"),
        (wide.path, [], "outputs of 3 labels, mrpc has 2"),
        (other_task.path, [], "outputs of task 'rte', the student trains on 'mrpc'"),
        (teacher.path, ["--data-dir", changed], "made from other or changed data"),
    ]
    for i, (path, extra, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, stdout, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--teacher", path, "--out", out,
                                *tiny_args, *extra)
        assert code == 3 and stdout == "", (message, err)
        assert len(err.strip().splitlines()) == 1 and message in err, (message, err)
        assert _files(out) == [], _files(out)
    code, stdout, err = cli("finetune", "--task", "mrpc", "--distill-alpha", "0.2", "--out", tmp_path / "o",
                            *tiny_args)
    assert code == 2 and "need --teacher" in err


def test_a_teacher_covering_more_examples_serves(cli, tiny_args, glue_dir, tmp_path):
    """A teacher of all 24 training examples serves a student of the first 10 (--max-train-samples) and a bagging
    student (a random half, in random order): each example gets its own teacher row, found by id."""
    teacher, _ = _teacher_of(cli, tiny_args, glue_dir, tmp_path / "t")
    for extra, scheme in ((["--max-train-samples", "10"], "student"), (["--bagging", "0.5"], "student-bagging")):
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--teacher", teacher.path, "--out",
                             tmp_path / "s", *tiny_args, *extra)
        assert code == 0, err
        assert f"-{scheme}-s1-" in out
    from ticketctl.hparams import DataOptions
    from ticketctl.log import Log
    from ticketctl.stages.context import Context
    from ticketctl.stages.inputs import load_teacher

    ctx = Context.create("mrpc", None, DataOptions(data_dir=str(glue_dir), max_train_samples=10), Log(True, False))
    order = np.random.default_rng(0).permutation(10)[:7]
    _, rows = load_teacher(ctx, str(teacher.path), ctx.train.subset(order))
    assert np.array_equal(rows, teacher.tensors["outputs"][order])


# ---------------------------------------------------------------------------------------------- reuse, resume


def test_student_is_reused_and_resumes_like_a_finetune(cli, tiny_args, glue_dir, tmp_path):
    """A rerun with the same options reuses the student; other distillation options make another student; a run
    killed before it wrote (its artifact gone) trains again to the same bytes."""
    teacher, _ = _teacher_of(cli, tiny_args, glue_dir, tmp_path / "t")
    loud = [*tiny_args[:-3], "--device", "cpu"]  # without --quiet: the reuse is logged
    run = ["finetune", "--task", "mrpc", "--seed", "1", "--teacher", teacher.path, "--out", tmp_path / "s"]
    code, first, err = cli(*run, *loud)
    assert code == 0, err
    before = read_artifact(first.strip())
    code, again, err = cli(*run, *loud)
    assert code == 0 and again == first and "finished already" in err
    code, other, err = cli(*run, "--distill-temperature", "4", *tiny_args)
    assert code == 0 and other != first
    before.path.unlink()  # killed before its artifact was written
    code, resumed, err = cli(*run, *loud)
    assert code == 0 and resumed == first and "finished already" not in err
    assert read_artifact(resumed.strip()).tensors["outputs"].tobytes() == before.tensors["outputs"].tobytes()


def test_an_ensembles_outputs_teach_and_regression_distils_by_mse(cli, tiny_args, glue_dir, tmp_path):
    """``ensemble --out`` of members' outputs on the training file is a teacher (probs and logits; votes are
    refused); an STS-B student distils the teacher's predictions (no temperature in its identity)."""
    members = [_teacher_of(cli, tiny_args, glue_dir, tmp_path / "t", "mrpc", seed)[0].path for seed in ("1", "2")]
    for combine in ("probs", "logits", "vote"):
        code, out, err = cli("ensemble", "--combine", combine, "--out", tmp_path / "ens", *members)
        assert code == 0, err
        ensemble = read_artifact(out.strip().splitlines()[-1])
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", "3", "--teacher", ensemble.path, "--out",
                             tmp_path / f"s-{combine}", *tiny_args)
        if combine == "vote":
            assert code == 3 and "an ensemble of votes" in err and _files(tmp_path / "s-vote") == []
            continue
        assert code == 0, err
        student = read_artifact(out.strip())
        assert student.meta["teacher_combine"] == combine
        assert [p["sha256"] for p in student.meta["parents"]] == [ensemble.sha256]
    teacher, _ = _teacher_of(cli, tiny_args, glue_dir, tmp_path / "t", "sts-b")
    code, out, err = cli("finetune", "--task", "sts-b", "--seed", "1", "--teacher", teacher.path, "--out",
                         tmp_path / "s", *tiny_args)
    assert code == 0, err
    config = read_artifact(out.strip()).meta["config"]
    assert config["distill_temperature"] is None and config["teacher"] == teacher.sha256
