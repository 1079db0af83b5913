"""Data-parallel finetune and search under torchrun: 2 CPU processes on loopback (gloo) give the results of one."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ticketctl.store.artifacts import read_artifact


def _run(args, env_extra=None, parallel=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", **(env_extra or {})}
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if parallel \
        else [sys.executable]
    return subprocess.run(prefix + ["-m", "ticketctl", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("command, batch", [("finetune", "8"), ("search", "8"), ("finetune", "23")])
def test_two_processes_match_one(tiny_model, glue_dir, tmp_path, command, batch):
    # Dropout off: each process draws its own dropout masks, so only then is the computation the same.
    # Batch 23 of 24 examples: the last batch has one example, so one process holds none of it.
    args = [command, "--task", "mrpc", "--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "2",
            "--batch-size", batch, "--device", "cpu", "--precision", "fp32", "--dropout", "0", "-q", "--seed", "3"]
    if command == "search":
        args += ["--sparsity", "0.2"]
    one = _run(args + ["--out", str(tmp_path / "one")])
    two = _run(args + ["--out", str(tmp_path / "two")], parallel=True)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-2000:]
    assert len(two.stdout.split()) == len(one.stdout.split()) == 1  # only process 0 prints
    a = read_artifact(one.stdout.strip())
    b = read_artifact(two.stdout.strip())
    assert a.path.name == b.path.name  # same configuration, same name
    if command == "finetune":
        np.testing.assert_allclose(a.tensors["outputs"], b.tensors["outputs"], atol=1e-5)
        assert a.meta["train_loss"].split()[0][:5] == b.meta["train_loss"].split()[0][:5]
    else:
        agree = (a.mask().flat() == b.mask().flat()).mean()
        assert agree > 0.999  # ties within rounding may flip a handful of the smallest weights


@pytest.mark.slow
def test_two_processes_with_dropout_are_another_computation(tiny_model, glue_dir, tmp_path):
    # With dropout each process draws its own masks (#24): the run records it and does not take one process's name.
    args = ["finetune", "--task", "mrpc", "--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--dropout", "0.1", "-q", "--seed", "3"]
    one = _run(args + ["--out", str(tmp_path / "one")])
    two = _run(args + ["--out", str(tmp_path / "two")], parallel=True)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = read_artifact(one.stdout.strip()), read_artifact(two.stdout.strip())
    assert a.path.name != b.path.name
    assert "dropout_stream" not in a.meta["config"] and b.meta["config"]["dropout_stream"] == "ticketctl-cpux2"
    assert (a.meta["runtime"]["world_size"], b.meta["runtime"]["world_size"]) == (1, 2)
    assert not np.allclose(a.tensors["outputs"], b.tensors["outputs"], atol=1e-5)
