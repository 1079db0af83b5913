"""What other tools load and what ticketctl loads from them (#17): saved tickets in stock transformers, `predict`,
torch.nn.utils.prune masks. Real CLI, tiny model, data made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ATOL
from ticketctl.store.artifacts import read_artifact


@pytest.fixture()
def args(tiny_args, tmp_path):
    return [*tiny_args, "--out", str(tmp_path / "runs")]


def _inputs(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    return tok(["The cat sat on the mat.", "Prices fell by ten percent."], ["A cat was sitting.", "The river is long."],
               padding=True, return_tensors="pt")


def test_structured_ticket_loads_in_stock_transformers(cli, args, tmp_path, tiny_model, amx):
    from transformers import AutoModelForSequenceClassification

    from ticketctl.model import loading
    from ticketctl.model.units import structure_of

    code, out, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity", "0.5",
                         *args)
    assert code == 0, err
    saved = tmp_path / "ticket"
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--mask", out.strip(), "--save-model", saved,
                         *args)
    assert code == 0, err
    config = json.loads((saved / "config.json").read_text())
    assert config["id2label"] == {"0": "0", "1": "1"} and config["ticketctl"]["policy"] == "winning"
    assert 0 in config["ticketctl_structure"]["ffn"] and 0 in sum(config["ticketctl_structure"]["heads"], [])

    stock = AutoModelForSequenceClassification.from_pretrained(str(saved)).eval()  # no ticketctl code involved
    ours = loading.load_model(saved, 2, None, "eager").eval()
    assert structure_of(ours.config) is not None  # ticketctl prunes it again: smaller
    assert sum(p.numel() for p in ours.parameters()) < sum(p.numel() for p in stock.parameters())
    batch = _inputs(tiny_model)
    with torch.no_grad():
        a, b = stock(**batch).logits, ours(**batch).logits
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a, b)
    # ... and it gives the logits the finetune wrote
    dev = args[args.index("--data-dir") + 1] + "/MRPC/dev.tsv"
    code, out, err = cli("predict", dev, "--model-dir", saved, *args[-2:], "--quiet")
    assert code == 0, err
    both = sorted((tmp_path / "runs").glob("mrpc-logits-dev-winning-s1-*"))  # the finetune's and predict's
    assert len(both) == 2 and out.strip() in map(str, both)
    arts = {a.meta.get("produced_by", "finetune"): a for a in map(read_artifact, both)}
    trained = arts["finetune"]
    assert trained.meta["config"]["precision"] == amx  # --precision auto, as TICKETCTL_CPU_AMX makes the CPU
    # predict runs fp32; the finetune evaluated in its own precision: the tolerance is that precision's
    diff = np.abs(arts["predict"].tensors["outputs"] - trained.tensors["outputs"]).max()
    assert diff < ATOL[amx], diff


def test_older_pruned_shape_folders_still_load(tmp_path, tiny_model):
    """Folders saved before the full-shape format hold the pruned shapes; they load to the same model."""
    from ticketctl.masks.structured import StructuredMask
    from ticketctl.model import loading
    from ticketctl.model.units import full_state, prune_physically

    torch.manual_seed(0)
    model = loading.load_model(tiny_model, 2, None, "eager").eval()
    prune_physically(model, StructuredMask(np.array([[True, False], [True, True]]), np.array([False, True])))
    old, new = tmp_path / "old", tmp_path / "new"
    model.save_pretrained(str(old))  # pruned shapes
    model.save_pretrained(str(new), state_dict=full_state(model))
    batch = _inputs(tiny_model)
    with torch.no_grad():
        want = model(**batch).logits
        for folder in (old, new):
            got = loading.load_model(folder, 2, None, "eager").eval()(**batch).logits
            assert torch.allclose(want, got, atol=1e-6), folder


def test_predict_members_and_ensemble(cli, args, tmp_path, glue_dir):
    code, out, err = cli("search", "--task", "mrpc", "--seed", "3", *args)
    assert code == 0, err
    mask = out.strip()
    folders = []
    for seed, extra in ((1, []), (2, []), (3, ["--mask", mask])):
        folders.append(tmp_path / f"m{seed}")
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", seed, "--save-model", folders[-1], *extra, *args)
        assert code == 0, err
    new = tmp_path / "new.jsonl"  # new text in another format, unlabelled, with the hub's column names
    new.write_text("".join(json.dumps({"sentence1": f"The cat sat {i}.", "sentence2": "A cat sat."}) + "\n"
                           for i in range(5)))
    code, out, err = cli("predict", new, *[x for f in folders for x in ("-m", f)], *args[-2:], "--quiet")
    assert code == 0, err
    paths = out.split()
    assert len(paths) == 3 and [read_artifact(p).meta["policy"] for p in paths] == ["dense", "dense", "base"]
    code, out, err = cli("ensemble", *paths, "--submission", tmp_path / "sub.tsv")
    assert code == 0, err
    code, out, err = cli("predict", new, *[x for f in folders for x in ("-m", f)], "--ensemble", *args[-2:], "--quiet")
    assert code == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[0] == ["id", "prediction", "p_0", "p_1", "total_entropy", "mutual_information"] and len(rows) == 6
    outs = np.stack([read_artifact(p).tensors["outputs"] for p in paths]).astype(np.float64)
    probs = np.exp(outs) / np.exp(outs).sum(-1, keepdims=True)
    mean = probs.mean(0)
    assert [r[1] for r in rows[1:]] == [str(i) for i in mean.argmax(-1)]
    assert np.allclose([float(r[3]) for r in rows[1:]], mean[:, 1], atol=1e-4)
    # each row's uncertainty: the entropy of the mean probability, minus the members' mean entropy for the MI
    total = -(mean * np.log(mean)).sum(-1)
    expected = -(probs * np.log(probs)).sum(-1).mean(0)
    assert np.allclose([float(r[4]) for r in rows[1:]], total, atol=1e-4)
    assert np.allclose([float(r[5]) for r in rows[1:]], total - expected, atol=1e-4)
    # labelled data is scored; with --output the predictions go to the file
    code, out, err = cli("predict", glue_dir / "MRPC" / "dev.tsv", "-m", folders[0], "--ensemble", "--output",
                         tmp_path / "pred.tsv", *args[-2:], "--quiet")
    assert code == 0 and (tmp_path / "pred.tsv").read_text().startswith("id\tprediction")
    assert "accuracy" in read_artifact(out.split()[0]).meta["metrics"]


def test_predict_refuses_mixed_or_foreign_members(cli, args, tmp_path, tiny_model, glue_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("finetune", "--task", "mrpc", "--seed", "1", "--save-model", a, *args)[0] == 0
    assert cli("finetune", "--task", "rte", "--seed", "1", "--save-model", b, *args)[0] == 0
    dev = glue_dir / "MRPC" / "dev.tsv"
    code, out, err = cli("predict", dev, "-m", a, "-m", b, *args[-2:])
    assert code == 3 and "cannot mix tasks" in err and err.count("\n") == 1
    code, out, err = cli("predict", dev, "-m", a, "-m", a, *args[-2:])
    assert code == 2 and "a member counts once" in err
    code, out, err = cli("predict", dev, "-m", tiny_model, *args[-2:])
    assert code == 3 and "not saved by `ticketctl finetune --save-model`" in err
    assert cli("predict", dev, "-m", a, "--output", tmp_path / "x", *args[-2:])[0] == 2


def test_torch_prune_masks_round_trip(cli, args, tmp_path, tiny_model):
    from torch.nn.utils import prune

    from ticketctl.model import loading

    code, out, err = cli("search", "--task", "mrpc", "--seed", "1", *args)
    assert code == 0, err
    mask_path = out.strip()
    exported = tmp_path / "masks.safetensors"
    code, out, err = cli("convert", mask_path, exported)
    assert code == 0 and out.strip() == str(exported), err
    from safetensors.torch import load_file

    masks = load_file(str(exported))
    model = loading.load_model(tiny_model, 2, None, "eager")
    modules = dict(model.named_modules())
    for key, m in masks.items():
        module, param = key[: -len("_mask")].rsplit(".", 1)
        prune.custom_from_mask(modules[module], param, m)
    keep = read_artifact(mask_path).mask().keep
    assert sorted(k[: -len("_mask")] for k in masks) == sorted(keep)
    for name, k in keep.items():
        module, param = name.rsplit(".", 1)
        assert torch.equal(getattr(modules[module], param + "_mask").bool(), torch.from_numpy(k))
        assert (getattr(modules[module], param)[~torch.from_numpy(k)] == 0).all()
    # import from the pruned model's own state dict (weight_orig + weight_mask), saved with torch.save
    state = tmp_path / "pruned.pt"
    torch.save(model.state_dict(), str(state))
    back = tmp_path / "back.safetensors"
    code, out, err = cli("convert", state, back, "--model", tiny_model, "--task", "mrpc")
    assert code == 0, err
    art = read_artifact(back)
    assert art.mask().digest() == read_artifact(mask_path).mask().digest() and art.meta["policy"] == "imported"
    code, out, err = cli("finetune", "--task", "mrpc", "--mask", back, *args)
    assert code == 0 and "-logits-dev-imported-s0-" in out, err
    # a mask of the bare encoder (no "bert." prefix), one weight only: the others are kept whole
    bare = {"encoder.layer.0.attention.self.query.weight_mask": torch.zeros(16, 16)}
    torch.save(bare, str(tmp_path / "bare.pt"))
    code, out, err = cli("convert", tmp_path / "bare.pt", tmp_path / "bare.safetensors", "--model", tiny_model)
    assert code == 0, err
    assert read_artifact(tmp_path / "bare.safetensors").mask().pruned == 256


@pytest.mark.parametrize("tensors, message", [
    ({"encoder.layer.0.attention.self.query.weight_mask": torch.zeros(3, 16)}, "has shape (3, 16)"),
    ({"classifier.weight_mask": torch.zeros(2, 16)}, "is not a prunable weight"),
    ({"encoder.layer.0.attention.self.query.weight": torch.zeros(16, 16)}, "no '*_mask' tensors"),
    ({"encoder.layer.0.attention.self.query.weight_mask": torch.full((16, 16), 0.5)}, "other than 0 and 1"),
])
def test_bad_torch_prune_masks(cli, tmp_path, tiny_model, tensors, message):
    torch.save(tensors, str(tmp_path / "m.pt"))
    code, out, err = cli("convert", tmp_path / "m.pt", tmp_path / "out.safetensors", "--model", tiny_model)
    assert code == 3 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.safetensors").exists()
