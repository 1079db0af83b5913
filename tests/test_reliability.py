"""Interruptions, reruns, concurrency and bad input through the real command line (subprocesses)."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ticketctl.artifacts import read_artifact


def _cmd(tiny_model, glue_dir, out, *extra):
    return [sys.executable, "-m", "ticketctl", "search", "--task", "mrpc", "--policy", "random", "--seed", "11",
            "--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "15", "--batch-size", "4",
            "--device", "cpu", "--out", str(out), *extra]


def _all_artifacts_valid(out):
    files = [p for p in out.rglob("*.safetensors")]
    for p in files:
        read_artifact(p)  # raises on a half-written file under a final name
    return files


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
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
        proc = subprocess.Popen(_cmd(tiny_model, glue_dir, out, "--quiet"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(rng.uniform(0.4, 0.95) * duration)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0:
            continue  # finished before the signal
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}[sig]
        assert proc.returncode == expected, stderr
        if sig != signal.SIGKILL:
            assert "Traceback" not in stderr
            assert stderr.strip().splitlines()[-1] in ("ticketctl: error: interrupted", "ticketctl: error: terminated")
        assert stdout == ""
        _all_artifacts_valid(out)
    final = subprocess.run(_cmd(tiny_model, glue_dir, out, "--quiet"), capture_output=True, text=True, env=env)
    assert final.returncode == 0, final.stderr
    resumed = read_artifact(final.stdout.strip(), "mask")
    for k in reference.tensors:
        assert np.array_equal(reference.tensors[k], resumed.tensors[k]), k


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
