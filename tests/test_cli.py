"""The real command line, in-process, on the tiny model and tiny GLUE files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ticketctl.store.artifacts import read_artifact


def test_help_lists_commands_and_does_not_import_torch():
    code = ("import sys; from ticketctl.cli import app; import ticketctl.cli; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import at start-up'")
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "ticketctl", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("search", "finetune", "show"):
        assert cmd in out.stdout


def test_bare_command_prints_the_help_as_it_is_on_stderr_and_exits_2():
    bare = subprocess.run([sys.executable, "-m", "ticketctl"], capture_output=True, text=True)
    helped = subprocess.run([sys.executable, "-m", "ticketctl", "--help"], capture_output=True, text=True)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.strip() == helped.stdout.strip() and len(bare.stderr.splitlines()) > 10


def test_finetune_writes_logits_and_reuses(cli, tiny_args, tmp_path):
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "3", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 1 and paths[0].endswith(".safetensors") and "-dev-dense-s3-" in paths[0]
    art = read_artifact(paths[0], "logits")
    assert art.tensors["outputs"].shape == (8, 2)
    assert art.tensors["labels"].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert art.meta["task"] == "mrpc" and art.meta["split"] == "dev" and art.meta["seed"] == "3"
    assert set(art.meta["metrics"]) == {"accuracy", "f1"}
    assert art.meta["config_hash"] and art.meta["versions"]["ticketctl"]
    mtime = tmp_path.joinpath(paths[0].split("/")[-1]).stat().st_mtime_ns
    code, out2, err = cli("finetune", "--task", "mrpc", "--seed", "3", "--out", tmp_path, *tiny_args)
    assert code == 0 and out2 == out
    assert tmp_path.joinpath(paths[0].split("/")[-1]).stat().st_mtime_ns == mtime  # reused, not rewritten


def test_same_seed_twice_is_bit_identical(cli, tiny_args, tmp_path):
    outs = []
    for d in ("a", "b"):
        code, out, err = cli("search", "--task", "mrpc", "--seed", "5", "--policy", "random", "--out", tmp_path / d,
                             *tiny_args)
        assert code == 0, err
        outs.append(read_artifact(out.strip(), "mask"))
    assert outs[0].tensors.keys() == outs[1].tensors.keys()
    for k in outs[0].tensors:
        assert np.array_equal(outs[0].tensors[k], outs[1].tensors[k])
    logits = []
    for d in ("a", "b"):
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", "5", "--mask", outs[0].path, "--out",
                             tmp_path / d, *tiny_args)
        assert code == 0, err
        logits.append(read_artifact(out.strip(), "logits").tensors["outputs"])
    assert np.array_equal(logits[0], logits[1])


def test_search_exact_sparsity_and_ticket_finetune(cli, tiny_args, tmp_path):
    code, out, err = cli("search", "--task", "mrpc", "--seed", "1", "--policy", "random", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    mask = read_artifact(out.strip(), "mask")
    m = mask.mask()
    assert m.pruned == round(0.3 * m.total)
    assert mask.meta["policy"] == "random" and mask.meta["method"] == "imp"
    assert [r["round"] for r in mask.meta["metrics"]["rounds"]] == [1, 2, 3]
    for r, sp in ((1, 0.1), (2, 0.2)):
        ckpt = list((tmp_path / "cache").glob(f"mrpc-round{r}-random-s1-*.safetensors"))
        assert len(ckpt) == 1
        assert read_artifact(ckpt[0]).mask().pruned == round(sp * m.total)
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--mask", mask.path, "--out", tmp_path,
                         *tiny_args)
    assert code == 0, err
    art = read_artifact(out.strip(), "logits")
    assert art.meta["policy"] == "random" and float(art.meta["sparsity"]) == pytest.approx(m.sparsity, abs=1e-6)
    assert art.meta["parents"][0]["sha256"] == mask.sha256


def test_base_search_reuses_dense_finetune(cli, tiny_args, tmp_path):
    code, dense_out, err = cli("finetune", "--task", "mrpc", "--seed", "2", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    code, out, err = cli("search", "--task", "mrpc", "--seed", "2", "--out", tmp_path, *tiny_args[:-3], "--device",
                         "cpu")
    assert code == 0, err
    assert "reusing the dense finetune" in err
    mask = read_artifact(out.strip(), "mask")
    assert "reused" in mask.meta["metrics"]["rounds"][0]
    # ... and the other way round: a base search first makes the dense finetune free.
    code, out, err = cli("search", "--task", "mrpc", "--seed", "4", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "4", "--out", tmp_path, *tiny_args[:-3], "--device",
                         "cpu")
    assert code == 0 and "finished already" in err


def test_resume_after_lost_final_round_is_identical(cli, tiny_args, tmp_path):
    code, out, err = cli("search", "--task", "mrpc", "--seed", "7", "--policy", "random", "--out", tmp_path, *tiny_args)
    final = read_artifact(out.strip(), "mask")
    # Simulate a kill during round 3: its checkpoint and the final mask never appeared.
    final.path.unlink()
    next((tmp_path / "cache").glob("mrpc-round3-*")).unlink()
    code, out, err = cli("search", "--task", "mrpc", "--seed", "7", "--policy", "random", "--out", tmp_path,
                         *tiny_args[:-3], "--device", "cpu")
    assert code == 0, err
    assert "round 2/3: finished already" in err
    again = read_artifact(out.strip(), "mask")
    for k in final.tensors:
        assert np.array_equal(final.tensors[k], again.tensors[k])


def test_active_policy_uses_priors_from_stdin(cli, tiny_args, tmp_path):
    paths = []
    for seed in (1, 2):
        code, out, err = cli("search", "--task", "mrpc", "--seed", seed, "--out", tmp_path, *tiny_args)
        assert code == 0, err
        paths.append(out.strip())
    code, out, err = cli("search", "--task", "mrpc", "--seed", "3", "--policy", "active", "--prior", "-", "--out",
                         tmp_path, *tiny_args, stdin="\n".join(paths) + "\n")
    assert code == 0, err
    art = read_artifact(out.strip(), "mask")
    assert art.meta["policy"] == "active"
    assert sorted(p["path"] for p in art.meta["parents"]) == sorted(paths)
    # the priors shaped the ticket (the coefficients themselves: tests/test_pins.py): base's of seed 3 differs
    code, base, err = cli("search", "--task", "mrpc", "--seed", "3", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    assert not np.array_equal(read_artifact(base.strip()).mask().flat(), art.mask().flat())


def test_eval_file_and_bagging(cli, tiny_args, tmp_path, glue_dir):
    test_tsv = tmp_path / "test.tsv"
    test_tsv.write_text("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tThe cat sat.\tA cat sat.\n"
                        "1\t3\t4\tThe dog barked.\tIt rained.\n")
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--bagging", "0.5", "--eval-file", test_tsv,
                         "--out", tmp_path, *tiny_args)
    assert code == 0, err
    dev, test = out.split()
    assert "-dev-bagging-s1-" in dev and "-test-bagging-s1-" in test
    t = read_artifact(test, "logits")
    assert "labels" not in t.tensors and t.tensors["ids"].tolist() == [0, 1]
    assert read_artifact(dev).meta["bagging"] == "0.5"


def test_threads_sets_torchs_thread_count(cli, tiny_args, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--threads", "2", "--out", tmp_path,
                             *tiny_args)
        assert code == 0, err
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_stsb_regression(cli, tiny_args, tmp_path):
    code, out, err = cli("finetune", "--task", "stsb", "--seed", "1", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    art = read_artifact(out.strip(), "logits")
    assert art.tensors["outputs"].shape == (8, 1)
    assert set(art.meta["metrics"]) == {"pearson", "spearman"}


@pytest.mark.parametrize("args, code, message", [
    (["finetune", "--task", "squad"], 2, "unknown task"),
    (["finetune", "--task", "mrpc", "--bagging", "1.5"], 2, "--bagging"),
    (["search", "--task", "mrpc", "--sparsity", "0.35"], 2, "not reachable"),
    (["search", "--task", "mrpc", "--prune-step", "-0.1"], 2, "--prune-step"),
    (["search", "--task", "mrpc", "--policy", "random", "--l1", "-1"], 2, "--l1"),
    (["search", "--task", "mrpc", "--policy", "active"], 2, "--prior"),
    (["finetune", "--task", "mrpc", "--mask", "nope.safetensors"], 3, "no such file"),
    (["finetune", "--task", "mrpc", "--no-such-option"], 2, "No such option"),
    (["finetune", "--task", "mrpc", "--precision", "fp8"], 2, "--precision"),
    (["search", "--task", "mrpc", "--threads", "0"], 2, "--threads must be >= 1"),
    (["finetune", "--task", "mrpc", "--max-length", "200"], 2, "longer than the model takes (128"),
    (["finetune", "--task", "mrpc", "--save-model", "m", "--train-fraction", "0.5,1"], 2,
     "--save-model takes a single --train-fraction"),
    (["finetune", "--task", "mrpc", "--bagging", "0.5", "--train-fraction", "0.5"], 2, "both subsample"),
    (["finetune", "--task", "mrpc", "--distill-alpha", "0.2"], 2, "need --teacher"),
])
def test_bad_input_is_one_line_and_exit_code(cli, tiny_args, tmp_path, args, code, message):
    got, out, err = cli(*args, "--out", tmp_path, *tiny_args)
    assert got == code, err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("ticketctl: error: ")
    assert out == ""
    assert not list(tmp_path.glob("*.safetensors"))


def test_predict_spec_refuses_what_cannot_run_before_reading_a_member(cli, tmp_path):
    """``PredictSpec`` (#32): member folders kept as a tuple of paths, RunOptions' defaults for None, and its
    checks run before any member folder is read (the folders here do not exist)."""
    from ticketctl.errors import UsageError
    from ticketctl.hparams import RunOptions
    from ticketctl.stages.predict import PredictSpec, run_predict

    spec = PredictSpec("x.tsv", ["m1", tmp_path / "m2"], run=None)
    assert spec.model_dirs == (Path("m1"), tmp_path / "m2") and spec.run == RunOptions()
    for bad, message in ((PredictSpec("x.tsv", []), "give at least one --model-dir"),
                         (PredictSpec("x.tsv", ["missing"], batch_size=0), "--batch-size must be > 0")):
        with pytest.raises(UsageError, match=message):
            run_predict(bad)
    code, out, err = cli("predict", tmp_path / "x.tsv", "--model-dir", tmp_path / "missing", "--batch-size", "0",
                         "--out", tmp_path)
    assert (code, out, err) == (2, "", "ticketctl: error: --batch-size must be > 0\n")


def test_mask_of_another_model_is_refused(cli, tiny_args, tmp_path, tiny_model, glue_dir):
    from conftest import build_tiny_bert

    code, out, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path, *tiny_args)
    other = build_tiny_bert(tmp_path / "other", seed=1)
    args = [a if a != str(tiny_model) else str(other) for a in tiny_args]
    code, out2, err = cli("finetune", "--task", "mrpc", "--mask", out.strip(), "--out", tmp_path / "o", *args)
    assert code == 3 and "pass the same --model" in err


def test_model_folder_without_weights(cli, tiny_args, tmp_path, tiny_model):
    bad = tmp_path / "noweights"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model / "config.json").read_text())
    args = [a if a != str(tiny_model) else str(bad) for a in tiny_args]
    code, out, err = cli("finetune", "--task", "mrpc", "--out", tmp_path, *args)
    assert code == 3 and "no weights" in err


def test_show(cli, tiny_args, tmp_path):
    code, out, err = cli("search", "--task", "mrpc", "--seed", "1", "--out", tmp_path, *tiny_args)
    code, shown, err = cli("show", out.strip())
    assert code == 0 and "prunable weights (30.0" in shown and "bert.pooler.dense.weight" in shown
    code, js, err = cli("show", "--json", out.strip())
    import json

    assert json.loads(js)["summary"]["sparsity"] == pytest.approx(0.3, abs=1e-3)


def test_cuda_request_without_a_gpu_is_a_usage_error(cli, tiny_args, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [a for a in tiny_args]
    args[args.index("--device") + 1] = "cuda"
    code, out, err = cli("finetune", "--task", "mrpc", "--out", tmp_path, *args)
    assert code == 2 and "no CUDA device" in err


def test_device_and_precision_resolution(monkeypatch):
    """auto: CUDA, then MPS, then CPU; precision auto: bf16 on CUDA capability >= 8.0 and on a CPU with AMX, else
    fp32 (the hardware faked here, so every branch is checked on any machine)."""
    import io

    import torch

    from ticketctl.train import device as device_mod
    from ticketctl.train.device import pick_device, resolve_precision

    assert pick_device("cpu").type == "cpu"
    cuda, mps = [False], [False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda[0])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps[0])
    for has_cuda, has_mps, want in ((True, True, "cuda:0"), (False, True, "mps"), (False, False, "cpu")):
        cuda[0], mps[0] = has_cuda, has_mps
        assert str(pick_device("auto")) == want
    for capability, want in (((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "fp32")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d, c=capability: c)
        assert resolve_precision("auto", torch.device("cuda", 0)) == want
    monkeypatch.delenv("TICKETCTL_CPU_AMX", raising=False)  # conftest sets it: here the CPU's own flags decide
    for flags, want in (("fpu avx512_bf16 amx_bf16 amx_tile", "bf16"), ("fpu avx512f avx512_bf16", "fp32")):
        monkeypatch.setattr(device_mod, "open", lambda path, f=flags: io.StringIO(f"flags\t\t: {f}\n"),
                            raising=False)
        assert resolve_precision("auto", torch.device("cpu")) == want
        # TICKETCTL_CPU_AMX overrides the flags either way; other values leave them to decide
        for forced, forced_want in (("1", "bf16"), ("0", "fp32"), ("yes", want), ("", want)):
            monkeypatch.setenv("TICKETCTL_CPU_AMX", forced)
            assert resolve_precision("auto", torch.device("cpu")) == forced_want, (flags, forced)
            assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit choice is kept
        monkeypatch.delenv("TICKETCTL_CPU_AMX")

    def unreadable(path):
        raise OSError("no /proc")

    monkeypatch.setattr(device_mod, "open", unreadable, raising=False)
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"  # an explicit choice is kept
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


def test_precision_auto_follows_the_amx_switch_in_a_subprocess(amx, tiny_args, tmp_path):
    """TICKETCTL_CPU_AMX reaches a process started from this one (as pool workers, torchrun ranks and Slurm jobs
    are): the finetune resolves --precision auto by it, records it, and is named by it."""
    out = subprocess.run([sys.executable, "-m", "ticketctl", "finetune", "--task", "mrpc", "--seed", "1", "--out",
                          str(tmp_path), *tiny_args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    art = read_artifact(out.stdout.strip())
    assert art.meta["config"]["precision"] == amx


def test_active_first_member_with_prior_none(cli, tiny_args, tmp_path):
    code, out, err = cli("search", "--task", "mrpc", "--seed", "1", "--policy", "active", "--prior", "none",
                         "--sparsity", "0.2", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    art = read_artifact(out.strip())
    assert art.meta["policy"] == "active" and art.meta["parents"] == []
    code, out2, err = cli("search", "--task", "mrpc", "--seed", "1", "--policy", "base", "--sparsity", "0.2",
                          "--out", tmp_path, *tiny_args)
    assert (read_artifact(out2.strip()).mask().flat() == art.mask().flat()).all()  # plain IMP: base's mask
    code, out, err = cli("search", "--task", "mrpc", "--policy", "active", "--prior", "none", "--prior",
                         out2.strip(), "--out", tmp_path, *tiny_args)
    assert code == 2 and "stands alone" in err


def test_verbose_logs_on_stderr_only(cli, tiny_model, glue_dir, tmp_path):
    args = ["--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "1", "--device", "cpu",
            "--out", tmp_path, "--task", "mrpc"]
    code, out, err = cli("finetune", "-v", *args)
    assert code == 0 and "config: {" in err and "train loss per epoch" in err
    assert out.strip().endswith(".safetensors") and "config" not in out
    code, out, err = cli("finetune", "-v", "-q", "--force", *args)
    assert code == 0 and err == ""


def test_training_curve_plot(cli, tiny_model, glue_dir, tmp_path):
    args = ["--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "3", "--batch-size", "4",
            "--device", "cpu", "--out", tmp_path, "--task", "mrpc", "-q"]
    code, out, err = cli("finetune", *args)
    assert code == 0, err
    curve = read_artifact(out.strip()).meta["loss_curve"]
    assert [s for s, _ in curve] == [10, 18]  # 24 examples / 4 = 6 steps per epoch: every 10th and the last
    code, _, err = cli("show", "--plot", tmp_path / "curves.svg", out.strip())
    assert code == 0 and (tmp_path / "curves.svg").read_text().startswith("<?xml") and "1 training curves" in err


def test_dense_round_of_search_logs_its_training_curve(cli, tiny_model, glue_dir, tmp_path):
    args = ["--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "4", "--batch-size", "8",
            "--device", "cpu", "--out", tmp_path, "--task", "mrpc", "-q"]
    code, out, err = cli("search", "--sparsity", "0.1", *args)
    assert code == 0, err
    (dense,) = tmp_path.glob("mrpc-logits-dev-dense-s0-*.safetensors")
    assert [s for s, _ in read_artifact(dense).meta["loss_curve"]] == [10, 12]


def test_python_api_matches_the_cli(cli, tiny_model, glue_dir, tmp_path, capsys):
    """docs/training.md "From Python": the library functions the commands wrap give the CLI's artifacts (same names, same
    outputs), and the analysis function's records render as the CLI's table."""
    import numpy as np

    from ticketctl.analysis import render, tables
    from ticketctl.analysis.ensemble import ensemble, size_table
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.stages.finetune import finetune
    from ticketctl.stages.imp import search

    train = TrainConfig(epochs=1, batch_size=8)
    data = DataOptions(data_dir=str(glue_dir))
    members = []
    for seed in (1, 2):
        run = RunOptions(model=str(tiny_model), out=str(tmp_path / "py"), device="cpu", quiet=True)
        mask = search("mrpc", seed, policy="random", sparsity=0.2, train=train, data=data, run=run)
        members += finetune("mrpc", seed, mask=str(mask), train=train, data=data, run=run)
    args = ["--model", tiny_model, "--data-dir", glue_dir, "--epochs", "1", "--batch-size", "8", "--quiet",
            "--device", "cpu", "--out", tmp_path / "cli"]
    cli_members = []
    for seed in (1, 2):
        code, mask, err = cli("search", "--task", "mrpc", "--seed", seed, "--policy", "random", "--sparsity", "0.2",
                              *args)
        assert code == 0, err
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", seed, "--mask", mask.strip(), *args)
        cli_members += out.split()
    assert [p.name for p in members] == [Path(p).name for p in cli_members]
    for a, b in zip(members, cli_members):
        assert np.array_equal(read_artifact(a).tensors["outputs"], read_artifact(b).tensors["outputs"])
    result = ensemble([str(p) for p in members], size="1-2")
    py_table = tables.text(render.ensemble_table(size_table(result.members, result.sizes)), "tsv")
    code, out, err = cli("ensemble", "--size", "1-2", "--format", "tsv", *cli_members)
    assert code == 0 and py_table == out and out.startswith("k\tcombinations")


def test_max_grad_norm_enters_identity_and_changes_training(cli, tiny_args, tmp_path):
    """--max-grad-norm through the CLI: recorded in the config, part of the name, and it changes the numbers (the
    tiny model's gradients are far above 0.01); 0 turns clipping off."""
    outs = {}
    for norm in ("0.01", "0", "1.0"):
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--max-grad-norm", norm, *tiny_args,
                             "--out", tmp_path, "--lr", "1e-2")
        assert code == 0, err
        art = read_artifact(out.split()[0])
        assert art.meta["config"]["max_grad_norm"] == float(norm) and art.meta["config"]["computation"] == 4
        outs[norm] = art
    assert len({a.path.name for a in outs.values()}) == 3
    assert not np.array_equal(outs["0.01"].tensors["outputs"], outs["0"].tensors["outputs"])
    code, out, err = cli("finetune", "--task", "mrpc", "--max-grad-norm", "-1", *tiny_args, "--out", tmp_path)
    assert code == 2 and "--max-grad-norm must be >= 0" in err
