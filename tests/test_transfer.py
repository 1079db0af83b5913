"""Super-ticket analyses: training fractions, --init transfer, importance across tasks, weights remaining."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ticketctl.data import sampling
from ticketctl.store import artifacts


def test_fractions_are_nested_and_reproducible():
    a = sampling.fraction_indices(1000, 0.01, 3)
    b = sampling.fraction_indices(1000, 0.1, 3)
    c = sampling.fraction_indices(1000, 0.1, 3)
    assert len(a) == 10 and len(b) == 100 and set(a) <= set(b) and np.array_equal(b, c)
    assert not np.array_equal(b, sampling.fraction_indices(1000, 0.1, 4))  # another seed, another subset
    assert len(sampling.fraction_indices(1000, 0.0001, 1)) == 1 and len(sampling.fraction_indices(7, 1.0, 1)) == 7


@pytest.fixture()
def args(tiny_model, glue_dir, tmp_path):
    return ["--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8", "-q",
            "--device", "cpu", "--out", str(tmp_path / "runs")]


def test_init_starts_from_the_saved_encoder_with_a_fresh_head(cli, args, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from ticketctl.model.loading import load_encoder, load_model

    saved = tmp_path / "mrpc-model"
    code, _, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--save-model", str(saved), *args)
    assert code == 0, err
    state = load_file(str(saved / "model.safetensors"))
    torch.manual_seed(5)
    model = load_model(tiny_model, 1, 0.1)  # another task (regression head)
    fresh_head = {n: p.detach().clone() for n, p in model.named_parameters() if "classifier" in n}
    load_encoder(model, saved)
    for n, p in model.named_parameters():
        if n.startswith("bert."):
            assert torch.equal(p.detach(), state[n]), n
        else:
            assert torch.equal(p.detach(), fresh_head[n])  # the head stays as drawn from the seed
    code, out, err = cli("finetune", "--task", "stsb", "--seed", "1", "--init", str(saved), "--train-fraction",
                         "0.5,1", *args)
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 2 and all("-init-s1-" in p for p in paths)
    metas = [artifacts.read_artifact(p).meta for p in paths]
    assert [m["train_fraction"] for m in metas] == ["0.5", "1.0"] and metas[0]["init_model"] == str(saved)
    assert [int(m["train_examples"]) for m in metas] == [12, 24]
    code, out2, err = cli("finetune", "--task", "stsb", "--seed", "1", "--train-fraction", "0.5,1", *args)
    code, table, err = cli("stats", "--by", "train_fraction", "--format", "json", *paths, *out2.split())
    assert code == 0, err
    rows = [json.loads(line) for line in table.splitlines()]
    assert [r["train_fraction"] for r in rows] == [0.5, 1.0]
    assert set(rows[0]) >= {"dense", "init from mrpc-model"}


def test_init_refuses_another_architecture(cli, args, tmp_path):
    from conftest import build_tiny_bert

    other = build_tiny_bert(tmp_path / "wide", hidden=32, heads=2)
    code, out, err = cli("finetune", "--task", "mrpc", "--init", str(other), *args)
    assert code == 3 and "hidden_size=32" in err and out == ""
    code, out, err = cli("finetune", "--task", "mrpc", "--train-fraction", "0", *args)
    assert code == 2 and "--train-fraction" in err


def test_importance_shares_sum_to_one_and_remaining(cli, args):
    masks = []
    for task in ("mrpc", "rte", "stsb"):
        code, out, err = cli("search", "--method", "structured", "--task", task, "--sparsity", "0.5", *args)
        assert code == 0, err
        masks.append(out.strip())
    code, out, err = cli("iou", "--importance", "--format", "json", *masks)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["unit"] for r in rows] == ["L0.H0", "L0.H1", "L1.H0", "L1.H1", "L0.FFN", "L1.FFN"]
    # by hand from the scores each mask file holds: a task's head scores normalised to sum 1 (its FFN scores
    # likewise), then each unit's share of the sum over tasks; a task holding half or more dominates the unit
    tasks = ("mrpc", "rte", "stsb")
    units = []
    for path in masks:
        t = artifacts.read_artifact(path).tensors
        heads, ffn = t["head_scores"].astype(np.float64), t["ffn_scores"].astype(np.float64)
        units.append(np.concatenate([heads.ravel() / heads.sum(), ffn / ffn.sum()]))
    units = np.array(units)
    for u, r in enumerate(rows):
        shares = units[:, u] / units[:, u].sum()
        assert [r[f"share_{t}"] for t in tasks] == pytest.approx(shares.tolist())
        assert r["mean_importance"] == pytest.approx(units[:, u].mean())
        assert r["dominated_by"] == (tasks[int(np.argmax(shares))] if shares.max() >= 0.5 else "")
    code, out, err = cli("iou", "--remaining", "--format", "json", masks[0])
    row = json.loads(out)
    # tiny model (H = 16, head size 8, FFN 32): a head owns 4*16*8 + 3*8 = 536 weights, an FFN 1,072, the rest of
    # a layer 80; 2 of 4 heads and 1 of 2 FFNs kept
    assert code == 0 and row["heads_kept"] == 2 and row["ffn_kept"] == 1
    assert row["weights_remaining"] == pytest.approx((2 * 536 + 1072 + 2 * 80) / (2 * (2 * 536 + 1072 + 80)),
                                                     abs=1e-6)
    code, out, err = cli("iou", "--importance", masks[0], masks[0])
    assert code == 2 and "are the same file" in err and out == ""
    import shutil

    copy = shutil.copy(masks[0], masks[0].replace(".safetensors", "-copy.safetensors"))
    code, out, err = cli("iou", "--importance", masks[0], copy)
    assert code == 2 and "have the same content" in err and out == ""
    code, out, err = cli("iou", "--importance", masks[0])
    assert code == 2 and "at least 2 masks" in err  # one task only


def test_init_from_a_shared_encoder(cli, args, tiny_model, tmp_path):
    from safetensors.torch import load_file

    from ticketctl.model.loading import load_encoder, load_model

    shared = tmp_path / "shared"
    code, out, err = cli("share", "--task", "mrpc", "--task", "rte", "--seed", "2", "--save-model", str(shared), *args)
    assert code == 0, err
    assert set(json.loads((shared / "ticketctl_share.json").read_text())["tasks"]) == {"mrpc", "rte"}
    heads = load_file(str(shared / "task_heads.safetensors"))
    assert any(k.startswith("rte.classifier") for k in heads) and any(k.startswith("mrpc.classifier") for k in heads)
    state = load_file(str(shared / "model.safetensors"))  # the encoder alone, BertModel names
    model = load_model(tiny_model, 1, 0.1)
    load_encoder(model, shared)
    for n, p in model.base_model.named_parameters():
        assert torch.equal(p.detach(), state[n]), n
    code, out, err = cli("finetune", "--task", "stsb", "--init", str(shared), "--train-fraction", "0.5", *args)
    assert code == 0 and "-init-" in out, err


def test_subset_seed_fixes_the_training_subset_across_seeds(cli, args, tmp_path):
    """--train-fraction draws its subset from each run's seed unless --subset-seed fixes it for every seed."""
    from ticketctl.store.artifacts import read_artifact

    def run(seed, *extra):
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", seed, "--train-fraction", "0.5", *extra, *args)
        assert code == 0, err
        return read_artifact(out.split()[0]).meta["config"]["train_data"]

    assert run(1) != run(2)  # seed-dependent subsets by default
    assert run(1, "--subset-seed", "7") == run(2, "--subset-seed", "7") == run(3, "--subset-seed", "7")
    assert run(1, "--subset-seed", "7") != run(1, "--subset-seed", "8")
    assert run(7) == run(1, "--subset-seed", "7")  # the same subset as seed 7's own
    code, out, err = cli("share", "--task", "mrpc", "--task", "rte", "--subset-seed", "1", *args)
    assert code == 2 and "--subset-seed" in err  # share has no training fractions
