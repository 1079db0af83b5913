"""Interruptions, reruns, concurrency and bad input through the real command line (subprocesses)."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ticketctl.store.artifacts import read_artifact


def _cmd(tiny_model, glue_dir, out, *extra):
    return [sys.executable, "-m", "ticketctl", "search", "--task", "mrpc", "--policy", "random", "--seed", "11",
            "--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "15", "--batch-size", "4",
            "--device", "cpu", "--out", str(out), *extra]


def _all_artifacts_valid(out):
    files = [p for p in out.rglob("*.safetensors")]
    for p in files:
        read_artifact(p)  # raises on a half-written file under a final name
    return files


@pytest.mark.slow
def test_kill_at_random_points_never_leaves_a_bad_artifact_and_resumes_identically(tiny_model, glue_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref = subprocess.run(_cmd(tiny_model, glue_dir, tmp_path / "ref", "--quiet"), capture_output=True, text=True,
                         env=env)
    assert ref.returncode == 0, ref.stderr
    reference = read_artifact(ref.stdout.strip(), "mask")
    t0 = time.monotonic()
    subprocess.run(_cmd(tiny_model, glue_dir, tmp_path / "timing", "--quiet"), capture_output=True, env=env)
    duration = time.monotonic() - t0
    rng = random.Random(1234)
    out = tmp_path / "killed"
    interrupted = 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        proc = subprocess.Popen(_cmd(tiny_model, glue_dir, out, "--quiet"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(rng.uniform(0.3, 0.8) * duration)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        if stdout.strip():  # finished before the signal (it may still have landed during interpreter shutdown):
            duration /= 2  # the timing run was slower than this one (a busy machine); signal the next one earlier,
            shutil.rmtree(out)  # and let it start from nothing again
            continue
        interrupted += 1
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
        assert proc.returncode == expected, (sig, proc.returncode, stderr[-2000:])
        if sig != signal.SIGKILL:
            assert "Traceback" not in stderr
            assert stderr.strip().splitlines()[-1] in ("ticketctl: error: interrupted", "ticketctl: error: terminated")
        assert stdout == ""
        _all_artifacts_valid(out)
    assert interrupted >= 2, "the signals landed after the runs finished: the test proved nothing"
    final = subprocess.run(_cmd(tiny_model, glue_dir, out, "--quiet"), capture_output=True, text=True, env=env)
    assert final.returncode == 0, final.stderr
    resumed = read_artifact(final.stdout.strip(), "mask")
    for k in reference.tensors:
        assert np.array_equal(reference.tensors[k], resumed.tensors[k]), k


@pytest.mark.slow
def test_two_processes_same_out_do_not_clobber(tiny_model, glue_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ticketctl", "finetune", "--task", "mrpc", "--seed", "1", "--model", str(tiny_model),
           "--data-dir", str(glue_dir), "--epochs", "5", "--batch-size", "4", "--device", "cpu", "--quiet",
           "--out", str(tmp_path)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert results[0][0] == results[1][0]
    art = read_artifact(results[0][0].strip(), "logits")
    assert art.tensors["outputs"].shape == (8, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_fails_before_training(cli, tiny_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = cli("finetune", "--task", "mrpc", "--out", blocker / "sub", *tiny_args)
    assert code == 3 and "cannot write to" in err and out == ""


def test_eval_file_with_wrong_columns(cli, tiny_args, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("index\tquestion\tsentence\tlabel\n0\ta\tb\tentailment\n")
    code, out, err = cli("finetune", "--task", "mrpc", "--eval-file", bad, "--out", tmp_path, *tiny_args)
    assert code == 3 and "no column" in err and "bad.tsv" in err


def test_iou_refuses_masks_of_different_models(cli, tiny_args, tmp_path, tiny_model):
    from conftest import build_tiny_bert

    code, a, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path, *tiny_args)
    other = build_tiny_bert(tmp_path / "other", seed=3, hidden=8)
    args = [x if x != str(tiny_model) else str(other) for x in tiny_args]
    code, b, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path / "o", *args)
    assert code == 0, err
    code, out, err = cli("iou", a.strip(), b.strip())
    assert code == 3 and "cannot mix models" in err


def test_show_verify_detects_changed_parent(cli, tiny_args, tmp_path):
    code, mask, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path, *tiny_args)
    code, logits, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--mask", mask.strip(), "--out", tmp_path,
                            *tiny_args)
    code, out, err = cli("show", "--verify", logits.strip())
    assert code == 0 and "[ok]" in out
    os.rename(mask.strip(), mask.strip() + ".moved")
    code, out, err = cli("show", "--verify", logits.strip())
    assert code == 3 and "[missing]" in out and "changed or is missing" in err


def test_bad_artifact_inputs_through_cli(cli, tiny_args, tmp_path):
    from test_analysis import LABELS, logits_file, onehot_logits

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    good = logits_file(tmp_path / "good.safetensors", onehot_logits([1, 0, 1, 1, 0, 1]), LABELS)
    raw = open(good, "rb").read()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(raw[:-10])
    nan = tmp_path / "nan.safetensors"
    logits_file(nan, np.full((6, 2), np.nan), LABELS)
    code, mask, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path, *tiny_args)
    cases = [
        (["ensemble", str(junk), good], "not a safetensors file"),
        (["ensemble", str(trunc), good], "truncated"),
        (["ensemble", str(nan), good], "NaN or inf"),
        (["ensemble", mask.strip()], "no logits artifacts among the 1 given (they are: mask)"),
        (["finetune", "--task", "mrpc", "--mask", good, "--out", str(tmp_path), *tiny_args], "expected a mask"),
        (["show", str(tmp_path / "missing.safetensors")], "no such file"),
    ]
    for args, msg in cases:
        code, out, err = cli(*args)
        assert code == 3 and msg in err and err.count("\n") == 1 and out == "", (args, err)


@pytest.mark.parametrize("value", ["0", "1", "-0.2", "1.5"])
def test_sparsity_outside_open_interval(cli, tiny_args, tmp_path, value):
    code, out, err = cli("search", "--task", "mrpc", "--sparsity", value, "--out", tmp_path, *tiny_args)
    assert code == 2 and "--sparsity must be in (0, 1)" in err


def test_config_hash_of_a_finetune_is_pinned():
    """The name of a finetune's artifacts must not change between versions unless the computation does: the identity
    an artifact of the first release recorded (no max_grad_norm field) still hashes to its name, and today's
    default identity (clipping at 1.0, computation 4) is pinned too."""
    from ticketctl.hparams import TrainConfig
    from ticketctl.store.identity import COMPUTATION, IDENTITY_DEFAULTS
    from ticketctl.store.provenance import config_hash

    first_release = {"task": "mrpc", "model": "f" * 64, "seed": 3, "train_data": "d" * 64,
                     **TrainConfig(precision="bf16").as_dict(), "mask": None, "bagging": 1.0, "computation": 1}
    del first_release["max_grad_norm"]  # added in computation 4; absent means no clipping
    assert config_hash({**first_release, "eval_data": "e" * 64}, IDENTITY_DEFAULTS) == \
        "f01967a17126fc71d7f5ac923031f20f41f8b3ba3fa003e184606accc3413127"
    today = {**first_release, **TrainConfig(precision="bf16").as_dict(), "computation": COMPUTATION}
    assert COMPUTATION == 4 and config_hash({**today, "eval_data": "e" * 64}, IDENTITY_DEFAULTS) == \
        "ed31a64564cec70086aa1ac47db2af75351134361c593954eabdccb95502987c"
    # no clipping is the value older artifacts were made with: it hashes as if the field were absent
    assert config_hash({**today, "max_grad_norm": 0.0}, IDENTITY_DEFAULTS) == \
        config_hash({k: v for k, v in today.items() if k != "max_grad_norm"}, IDENTITY_DEFAULTS)


def test_computation_version_enters_the_hash():
    """Artifacts of an earlier training computation (same config, other numbers) must not be reused as current."""
    from ticketctl.store.provenance import config_hash
    from ticketctl.store.identity import COMPUTATION, IDENTITY_DEFAULTS

    base = {"task": "mrpc", "seed": 3}
    assert COMPUTATION >= 2
    assert config_hash({**base, "computation": COMPUTATION}, IDENTITY_DEFAULTS) != \
        config_hash({**base, "computation": 1}, IDENTITY_DEFAULTS)


def test_iou_refuses_masks_of_different_tasks_unless_asked(cli, tiny_args, tmp_path):
    """Like ensemble, diversity and stats, iou refuses to mix tasks; --cross-task compares them on purpose."""
    code, a, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    code, b, err = cli("search", "--task", "rte", "--seed", "1", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    code, out, err = cli("iou", a.strip(), b.strip())
    assert code == 3 and "cannot mix tasks" in err and out == ""
    code, out, err = cli("iou", "--cross-task", a.strip(), b.strip())
    assert code == 0 and out.count("s1") >= 2, err


def test_save_model_rerun_reuses_the_finished_member(cli, tiny_args, tmp_path):
    """A rerun of `finetune --save-model DIR` into the folder holding that very member is reused (reruns are free);
    a folder holding another member, or anything else, is still refused."""
    saved = tmp_path / "member"
    run = ["finetune", "--task", "mrpc", "--seed", "1", "--out", tmp_path / "runs", *tiny_args]
    code, first, err = cli(*run, "--save-model", saved)
    assert code == 0, err
    stamp = (saved / "config.json").stat().st_mtime_ns
    code, again, err = cli(*run, "--save-model", saved)
    assert code == 0 and again == first, err
    assert (saved / "config.json").stat().st_mtime_ns == stamp  # not retrained, not rewritten
    code, out, err = cli(*[x if x != "1" else "2" for x in run], "--save-model", saved)
    assert code == 2 and "holds another member" in err and out == ""
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    code, out, err = cli(*run, "--save-model", junk)
    assert code == 2 and "not an empty folder" in err
