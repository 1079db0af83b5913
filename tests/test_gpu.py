"""GPUs and data parallelism (#24), on CPU: GPU choice under torchrun with CUDA faked, precision by compute
capability, per-process dropout streams, runtime provenance, --deterministic, the identity's dropout stream, the L1
term and masks as multi-tensor ops, the note on members from different devices, and gpu_smoke's refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketctl.errors import UsageError
from ticketctl.store.artifacts import read_artifact, write_artifact
from ticketctl.train import device as device_mod
from ticketctl.train import distributed

ROOT = Path(__file__).resolve().parent.parent


class FakeCuda:
    """torch.cuda as a machine with ``count`` visible GPUs of ``capability`` would answer; records set_device."""

    def __init__(self, monkeypatch, count: int, capability=(8, 0), name="Fake GPU"):
        self.count, self.current, self.set = count, 0, []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_device", self._set_device)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulated bf16 counts here

    def _set_device(self, index):
        self.set.append(int(index))
        self.current = int(index)


def torchrun_env(monkeypatch, world: int, local: int, visible: str | None = None):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", str(local))
    monkeypatch.setenv("LOCAL_RANK", str(local))
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)


# ---------------------------------------------------------------------------------------------- which GPU


@pytest.mark.parametrize("visible, local, requested, want", [
    ("0,1,2,3", 2, "cuda", "cuda:2"),  # a node's GPUs shared by its processes: GPU LOCAL_RANK
    ("0,1,2,3", 3, "auto", "cuda:3"),
    ("5", 3, "cuda", "cuda:0"),  # Slurm --gpus-per-task=1: the one visible GPU, whatever LOCAL_RANK is
    ("5", 1, "cuda:0", "cuda:0"),
    ("", 1, "auto", "cpu"),  # no GPU: gloo on CPU
    ("0,1", 1, "cpu", "cpu"),
])
def test_each_process_gets_its_own_gpu(monkeypatch, visible, local, requested, want):
    FakeCuda(monkeypatch, len([v for v in visible.split(",") if v]))
    torchrun_env(monkeypatch, 4, local, visible)
    assert distributed.choose_device(requested) == want


@pytest.mark.parametrize("visible, local, requested, message", [
    ("0,1", 3, "cuda", "LOCAL_RANK 3 has no GPU: 2 are visible on this node"),
    ("0,1", 1, "cuda:1", "--device cuda:1 under torchrun would put all 2 processes on one GPU"),
    ("", 0, "cuda", "--device cuda: no CUDA device is available"),
])
def test_gpu_choices_that_cannot_work_are_one_line(monkeypatch, visible, local, requested, message):
    FakeCuda(monkeypatch, len([v for v in visible.split(",") if v]))
    torchrun_env(monkeypatch, 2, local, visible)
    with pytest.raises(UsageError) as e:
        distributed.choose_device(requested)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("requested, visible, backend, index, device", [
    ("cuda", 2, "nccl", 1, "cuda:1"),
    ("cuda", 1, "nccl", 0, "cuda:0"),
    ("cpu", 2, "gloo", None, "cpu"),
])
def test_process_group_backend_and_device(monkeypatch, requested, visible, backend, index, device):
    fake = FakeCuda(monkeypatch, visible)
    torchrun_env(monkeypatch, 2, 1)
    joined = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: joined.append(backend))
    picked = device_mod.pick_device(distributed.setup(requested))
    assert joined == [backend]
    assert str(picked) == device
    assert fake.set[:1] == ([] if index is None else [index])


def test_one_process_cuda_index(monkeypatch):
    fake = FakeCuda(monkeypatch, 2)
    assert device_mod.pick_device("cuda:1") == torch.device("cuda", 1) and fake.set == [1]
    assert device_mod.pick_device("cuda") == torch.device("cuda", 1)  # the current GPU, named
    with pytest.raises(UsageError, match=r"^--device cuda:2: only 2 GPU\(s\) \(cuda:0..cuda:1\)$"):
        device_mod.pick_device("cuda:2")


# ---------------------------------------------------------------------------------------------- precision


@pytest.mark.parametrize("capability, want", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"),
                                              ((8, 6), "bf16"), ((9, 0), "bf16")])
def test_precision_auto_is_bf16_only_where_native(monkeypatch, capability, want):
    FakeCuda(monkeypatch, 1, capability)  # is_bf16_supported says True for every one of them
    cuda = torch.device("cuda", 0)
    assert device_mod.resolve_precision("auto", cuda) == want
    assert device_mod.resolve_precision("fp16", cuda) == "fp16"  # asked for: kept
    assert device_mod.resolve_precision("bf16", cuda) == "bf16"


# ---------------------------------------------------------------------------------------------- dropout streams


def _train_tiny(tiny_model, glue_dir, monkeypatch, rank: int, dropout: float) -> torch.Tensor:
    from ticketctl.data import files
    from ticketctl.data.batching import encode
    from ticketctl.data.tasks import get_task
    from ticketctl.hparams import TrainConfig
    from ticketctl.model import loading
    from ticketctl.train.loop import train

    monkeypatch.setenv("RANK", str(rank))  # the process's rank; one process, no process group
    split = files.load_split(get_task("mrpc"), "train", str(glue_dir))
    torch.manual_seed(0)
    model = loading.load_model(tiny_model, 2, dropout)
    tok = loading.load_tokenizer(tiny_model)
    cfg = TrainConfig(epochs=1, batch_size=8, precision="fp32", dropout=dropout, max_grad_norm=0.0)
    train(model, encode(tok, split, 64), split.labels, cfg, 3, torch.device("cpu"), tok.pad_token_id)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_processes_draw_different_dropout_masks(tiny_model, glue_dir, monkeypatch):
    from ticketctl.train.seeds import derive_seed

    assert distributed.dropout_seed(3, 0) == derive_seed(3, "dropout")  # process 0: the one-process stream
    assert len({distributed.dropout_seed(3, r) for r in range(4)}) == 4
    first = _train_tiny(tiny_model, glue_dir, monkeypatch, 0, 0.1)
    assert torch.equal(first, _train_tiny(tiny_model, glue_dir, monkeypatch, 0, 0.1))  # reproducible
    other = _train_tiny(tiny_model, glue_dir, monkeypatch, 1, 0.1)
    assert not torch.equal(first, other)  # rank 1 dropped other activations
    # Without dropout the rank changes nothing: the difference above is the dropout stream's.
    assert torch.equal(_train_tiny(tiny_model, glue_dir, monkeypatch, 0, 0.0),
                       _train_tiny(tiny_model, glue_dir, monkeypatch, 1, 0.0))


# ---------------------------------------------------------------------------------------------- provenance


def test_every_artifact_records_where_it_was_computed(cli, tiny_args, tmp_path):
    code, out, err = cli("search", "--task", "mrpc", "--sparsity", "0.1", *tiny_args, "--out", tmp_path)
    assert code == 0, err
    mask = read_artifact(out.strip())
    logits = read_artifact(next(tmp_path.glob("mrpc-logits-dev-dense-*.safetensors")))
    weights = read_artifact(next((tmp_path / "cache").glob("*weights*.safetensors")))
    for art in (mask, logits, weights):
        runtime = art.meta["runtime"]
        assert {k: runtime[k] for k in ("device", "world_size", "torch", "cuda", "cudnn", "deterministic")} == {
            "device": "cpu", "world_size": 1, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": None if not torch.backends.cudnn.is_available() else str(torch.backends.cudnn.version()),
            "deterministic": False}
        assert isinstance(runtime["device_name"], str) and runtime["device_name"]
        assert "dropout_stream" not in art.meta["config"]  # a CPU run's identity is as before


def test_deterministic_is_recorded_and_changes_nothing_on_cpu(cli, tiny_args, tmp_path, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "unset")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")  # restored (removed) after the test
    cudnn_benchmark, cudnn_deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    code, out, err = cli("finetune", "--task", "mrpc", "--dropout", "0.1", *tiny_args, "--out", tmp_path / "a")
    assert code == 0, err
    try:
        code, out_det, err = cli("finetune", "--task", "mrpc", "--dropout", "0.1", "--deterministic", *tiny_args,
                                 "--out", tmp_path / "b")
        assert code == 0, err
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and torch.backends.cudnn.benchmark is False
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn_benchmark, cudnn_deterministic
    a, b = read_artifact(out.split()[0]), read_artifact(out_det.split()[0])
    assert a.path.name == b.path.name  # not part of the identity ...
    assert np.array_equal(a.tensors["outputs"], b.tensors["outputs"])  # ... since on CPU it changes no bit
    assert a.meta["runtime"]["deterministic"] is False and b.meta["runtime"]["deterministic"] is True


def test_an_operation_without_a_deterministic_kernel_is_one_line(cli, tiny_args, tmp_path, monkeypatch):
    def refusing(*a, **k):
        raise RuntimeError("nll_loss2d_forward_out_cuda_template does not have a deterministic implementation, but you "
                           "set 'torch.use_deterministic_algorithms(True)'.\nYou can turn off determinism ...")

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", refusing)
    try:
        code, out, err = cli("finetune", "--task", "mrpc", "--deterministic", *tiny_args, "--out", tmp_path)
    finally:
        torch.use_deterministic_algorithms(False)
    assert code == 2 and out == ""
    assert err.splitlines() == ["ticketctl: error: --deterministic: nll_loss2d_forward_out_cuda_template does not have "
                                "a deterministic implementation, but you set 'torch.use_deterministic_algorithms(True)'."
                                " (run without --deterministic)"]
    with pytest.raises(RuntimeError, match="does not have a deterministic"):  # not under --deterministic: a bug
        cli("finetune", "--task", "mrpc", *tiny_args, "--out", tmp_path)


def _identity_rows(ctx, cfg, out):
    return ctx.logits_rows(ctx.identity(cfg, 0), out)


def _start(tiny_model, glue_dir, out, device, dropout):
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.stages import context

    return context.start("mrpc", TrainConfig(epochs=1, batch_size=8, dropout=dropout, precision="bf16"),
                       DataOptions(data_dir=str(glue_dir)), RunOptions(model=str(tiny_model), out=out, device=device,
                                                                       quiet=True))


def test_a_cpu_artifact_is_not_reused_for_a_gpu_run(cli, tiny_args, tmp_path, tiny_model, glue_dir, monkeypatch):
    from ticketctl.stages import context

    code, out, err = cli("finetune", "--task", "mrpc", "--precision", "bf16", *tiny_args, "--out", tmp_path)
    assert code == 0, err
    cpu_paths = [Path(p) for p in out.split()]
    ctx, cfg, device = _start(tiny_model, glue_dir, tmp_path, "cpu", 0.1)
    assert [p for _, p, _ in _identity_rows(ctx, cfg, tmp_path)] == cpu_paths  # the names finetune gave
    ctx, cfg, _ = _start(tiny_model, glue_dir, tmp_path, "cpu", 0.0)
    cpu_without_dropout = _identity_rows(ctx, cfg, tmp_path)

    FakeCuda(monkeypatch, 1, (8, 0), "Fake H100")
    ctx, cfg, device = _start(tiny_model, glue_dir, tmp_path, "cuda", 0.1)
    assert device == torch.device("cuda", 0) and ctx.dropout_stream == "torch-cuda"
    assert ctx.runtime["device"] == "cuda" and ctx.runtime["device_name"] == "Fake H100"
    gpu_rows = _identity_rows(ctx, cfg, tmp_path)
    assert [p for _, p, _ in gpu_rows] != cpu_paths  # torch's dropout stream: another computation, another name
    assert not context.finished(ctx.log, [p for _, p, _ in gpu_rows], "logits", False)
    assert context.finished(ctx.log, cpu_paths, "logits", False)
    # Without dropout no stream is drawn: a GPU run is the same computation (to rounding) and keeps the name.
    ctx, cfg, _ = _start(tiny_model, glue_dir, tmp_path, "cuda", 0.0)
    assert _identity_rows(ctx, cfg, tmp_path)[0][1] == cpu_without_dropout[0][1]


def test_dropout_stream_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert device_mod.dropout_stream(cpu, 1, 0.1) == "ticketctl-cpu"
    assert device_mod.dropout_stream(cpu, 2, 0.1) == "ticketctl-cpux2"
    assert device_mod.dropout_stream(cuda, 1, 0.1) == "torch-cuda"
    assert device_mod.dropout_stream(cuda, 4, 0.1) == "torch-cudax4"
    assert device_mod.dropout_stream(cuda, 4, 0.0) == "ticketctl-cpu"


# ---------------------------------------------------------------------------------------------- L1 and masks


def test_l1_and_masks_as_multi_tensor_ops_match_the_per_tensor_loop():
    from ticketctl.train.loop import add_l1, mask_grads

    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    params[0][0, 0] = 0.0  # sign(0) = 0: no pull on a weight that is already zero
    grads = [torch.randn(s, generator=g) * 1e-3 for s in shapes]
    coefs = [(torch.rand(s, generator=g) > 0.3).float() for s in shapes]
    keep = [(torch.rand(s, generator=g) > 0.5).float() for s in shapes]
    tau = 3.7e-4

    old = [x.clone() for x in grads]  # the per-tensor computation this replaced
    for gr, p, c in zip(old, params, coefs):
        gr.addcmul_(torch.sign(p), c, value=tau)
    for gr, m in zip(old, keep):
        gr.mul_(m)
    new = [x.clone() for x in grads]
    add_l1(new, params, coefs, tau)
    mask_grads(new, keep)
    for a, b in zip(old, new):
        assert torch.equal(a, b)
    for gr, p, c, m, b in zip(grads, params, coefs, keep, new):  # in float64 by numpy, independently
        want = (gr.double().numpy() + tau * c.double().numpy() * np.sign(p.double().numpy())) * m.double().numpy()
        np.testing.assert_allclose(b.numpy(), want, rtol=1e-6, atol=1e-12)
    assert new[0][0, 0] == grads[0][0, 0] * keep[0][0, 0]
    unchanged = [x.clone() for x in grads]
    add_l1(unchanged, params, coefs, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(unchanged, grads))


# ---------------------------------------------------------------------------------------------- members


def _member(path, device, name=None):
    meta = {"task": "mrpc", "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": "0",
            "policy": "dense"}
    if device is not None:
        meta["runtime"] = {"device": device, "device_name": name, "world_size": 1}
    rng = np.random.default_rng(len(str(path)))
    tensors = {"outputs": rng.normal(size=(6, 2)).astype(np.float32), "ids": np.arange(6),
               "labels": np.array([0, 1, 0, 1, 1, 0])}
    return str(write_artifact(path, "logits", tensors, meta))


def test_members_from_different_devices_are_pointed_out(cli, tmp_path):
    cpu = _member(tmp_path / "a.safetensors", "cpu", "Some CPU")
    cpu2 = _member(tmp_path / "bb.safetensors", "cpu", "Another CPU")
    gpu = _member(tmp_path / "ccc.safetensors", "cuda", "NVIDIA H100")
    old = _member(tmp_path / "dddd.safetensors", None)
    note = "note: members were trained on different devices (cpu: 2, cuda (NVIDIA H100): 1)"
    for command in ("ensemble", "stats"):
        code, out, err = cli(command, cpu, cpu2, gpu)
        assert code == 0, err
        assert [line for line in err.splitlines() if line.startswith("note: members")] == [
            note + "; their dropout streams and arithmetic differ"]
        assert "note: members" not in out
        code, out, err = cli(command, cpu, cpu2, old)  # same device, or not recorded: nothing to say
        assert code == 0 and "note: members" not in err, err


# ---------------------------------------------------------------------------------------------- gpu_smoke


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_smoke_refuses_without_cuda(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), str(tmp_path / "out.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["gpu_smoke: no CUDA device is available here; run it on a machine "
                                               "with a GPU"]
    assert not (tmp_path / "out.json").exists()
