"""Cluster and GPU habits (#17): plain progress lines without a terminal, TensorBoard scalars, fp16 with loss
scaling (run on CPU here), cuda:N, completion of option values."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ticketctl.store.artifacts import read_artifact


@pytest.fixture()
def loud(tiny_args, tmp_path):
    """tiny_args without --quiet: progress goes to stderr, which is not a terminal under pytest."""
    return [a for a in tiny_args if a != "--quiet"] + ["--out", str(tmp_path / "runs")]


def test_plain_progress_lines_every_n_steps(cli, loud):
    code, out, err = cli("finetune", "--task", "mrpc", "--log-every", "2", *loud)
    assert code == 0, err
    lines = [x for x in err.splitlines() if x.startswith("finetune s0: step")]
    # 24 examples / batch 8 = 3 steps: lines at steps 2 and 3 (the last one always)
    assert [x.split()[3] for x in lines] == ["2/3", "3/3"], err
    assert "examples/s" in lines[-1] and " eta 0:00:00" in lines[-1] and "loss 0." in lines[-1]
    assert all(line.endswith(".safetensors") for line in out.splitlines())  # stdout: results only


def test_plain_progress_every_30_seconds_by_default(cli, loud, monkeypatch):
    from ticketctl import log as log_module

    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", *loud)
    assert [x.split()[3] for x in err.splitlines() if x.startswith("finetune s1: step")] == ["3/3"]  # < 30 s: last
    monkeypatch.setattr(log_module, "PLAIN_SECONDS", 0.0)
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "2", *loud)
    assert [x.split()[3] for x in err.splitlines() if x.startswith("finetune s2: step")] == ["1/3", "2/3", "3/3"]


def test_report_to_tensorboard(cli, tiny_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, err = cli("finetune", "--task", "mrpc", "--epochs", "4", "--report-to", "tensorboard", *tiny_args,
                         "--out", tmp_path)
    assert code == 0, err
    art = read_artifact(out.split()[0])
    runs = list((tmp_path / "tensorboard").iterdir())
    assert [r.name + ".safetensors" for r in runs] == [art.path.name]
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    assert [[e.step, round(e.value, 5)] for e in events.Scalars("train/loss")] == art.meta["loss_curve"]
    assert events.Scalars("dev/accuracy")[0].value == pytest.approx(art.meta["metrics"]["accuracy"])
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "5", "--report-to", "wandb", *tiny_args,
                         "--out", tmp_path / "x")
    assert code == 2 and "--report-to wandb" in err and not (tmp_path / "x").exists()


def test_tracker_is_not_imported_unless_asked(tmp_path, tiny_model, glue_dir):
    code = ("import sys; from ticketctl.cli import main\n"
            "try: main(sys.argv[1:])\nexcept SystemExit: pass\n"
            "print('tensorboard' in sys.modules, 'torch.utils.tensorboard' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, "finetune", "--task", "mrpc", "--model", str(tiny_model),
                          "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8", "--quiet",
                          "--device", "cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split()[-2:] == ["False", "False"], out.stderr


def test_fp16_trains_with_loss_scaling(cli, tiny_args, tmp_path, monkeypatch):
    updates = []
    original = torch.amp.GradScaler.update

    def counting(self, *a, **k):
        updates.append(self.get_scale())
        return original(self, *a, **k)

    monkeypatch.setattr(torch.amp.GradScaler, "update", counting)
    code, out16, err = cli("finetune", "--task", "mrpc", "--precision", "fp16", *tiny_args, "--out", tmp_path)
    assert code == 0, err
    assert len(updates) == 3  # one scaled step per batch
    code, out32, err = cli("finetune", "--task", "mrpc", "--precision", "fp32", *tiny_args, "--out", tmp_path)
    assert len(updates) == 3  # fp32: no scaler
    a16, a32 = read_artifact(out16.split()[0]), read_artifact(out32.split()[0])
    assert a16.meta["config"]["precision"] == "fp16" and a16.path != a32.path
    diff = np.abs(a16.tensors["outputs"] - a32.tensors["outputs"]).max()
    assert 0 < diff < 0.05  # the same training at half precision: close, not identical


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("device, message", [("cuda:0", "--device cuda:0: no CUDA device is available"),
                                             ("cuda:x", "give cuda:N with N a GPU index")])
def test_cuda_index_without_a_gpu(cli, tiny_args, tmp_path, device, message):
    code, out, err = cli("finetune", "--task", "mrpc", *tiny_args, "--device", device, "--out", tmp_path)
    assert code == 2 and message in err and not list(tmp_path.glob("*.safetensors"))


@pytest.mark.parametrize("words, want", [
    ("ticketctl finetune --task m", ["mrpc", "mnli"]),
    ("ticketctl search --policy ", ["base", "active", "random", "perturbed"]),
    ("ticketctl finetune --precision f", ["fp32", "fp16"]),
    ("ticketctl stats --format ", ["table", "tsv", "json", "markdown"]),
    ("ticketctl share --sampling e", ["equal"]),
    ("ticketctl search --ticket l", ["losing"]),
    ("ticketctl ensemble --combine v", ["vote"]),
    ("ticketctl finetune --metric s", ["spearman"]),
])
def test_completion_of_option_values(words, want):
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {**os.environ, "_TICKETCTL_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
    out = subprocess.run([sys.executable, "-m", "ticketctl"], env=env, capture_output=True, text=True)
    assert out.stdout.split() == want, out.stderr
