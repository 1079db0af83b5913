"""Structured (super) tickets and multi-task sharing on tiny BERTs built in code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ticketctl.masks import structured as mstructured
from ticketctl.model import units
from ticketctl.store import artifacts
from ticketctl.train import importance
from ticketctl.masks.structured import StructuredMask
from ticketctl.model.gates import Gates


@pytest.fixture(scope="session")
def tiny4(tmp_path_factory) -> Path:
    """3 layers x 4 heads (head size 4), FFN 32: enough structure to prune."""
    from conftest import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny4"), seed=1, hidden=16, layers=3, heads=4)


def _model(folder: Path, num_labels: int = 2, seed: int = 0):
    from ticketctl.model.loading import load_model

    torch.manual_seed(seed)
    model = load_model(folder, num_labels, 0.0, "eager").double()
    model.eval()
    return model


def _batch(folder: Path, glue_dir: Path, task: str = "mrpc"):
    from ticketctl.data import files
    from ticketctl.model.loading import load_tokenizer
    from ticketctl.data.tasks import get_task
    from ticketctl.data.batching import collate, encode

    split = files.load_split(get_task(task), "train", str(glue_dir))
    tok = load_tokenizer(folder)
    enc = encode(tok, split, 64)
    idx = np.arange(len(enc))
    return enc, split.labels, collate(enc, idx, tok.pad_token_id, torch.device("cpu"))


MASK = StructuredMask(np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], bool), np.array([1, 0, 1], bool))


def _apply(model, mask):
    keep = units.expand(model, mask)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, k in keep.items():
            params[n].mul_(k.to(params[n].dtype))
    return keep


def test_importance_matches_finite_differences(tiny4, glue_dir):
    model = _model(tiny4)
    enc, labels, batch = _batch(tiny4, glue_dir)
    heads, ffn = importance.importance(model, enc, labels, torch.device("cpu"), 0, "fp32", batch_size=7)
    assert heads.shape == (3, 4) and ffn.shape == (3,) and (heads > 0).all() and (ffn > 0).all()
    y = torch.from_numpy(labels)
    gates = Gates(model)
    # Central differences in float64: truncation error ~eps**2 (relative), rounding error ~1e-16 * loss / eps
    # (absolute). The fixture's head importances are ~1e-6 of a loss ~0.7, so eps = 1e-6 left a 1e-4 rounding
    # error (relative); eps = 1e-4 keeps both errors near 1e-7, well inside rel=1e-5.
    eps = 1e-4

    def losses(h, f):
        gates.set(h, f)
        with torch.no_grad():
            return importance.example_losses(model(**batch).logits, y)

    ones_h, ones_f = torch.ones(3, 4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for layer, head in [(0, 0), (1, 3), (2, 2)]:
        up, down = ones_h.clone(), ones_h.clone()
        up[layer, head] += eps
        down[layer, head] -= eps
        fd = ((losses(up, ones_f) - losses(down, ones_f)) / (2 * eps)).abs().mean().item()
        assert heads[layer, head] == pytest.approx(fd, rel=1e-5)
    for layer in range(3):
        up, down = ones_f.clone(), ones_f.clone()
        up[layer] += eps
        down[layer] -= eps
        fd = ((losses(ones_h, up) - losses(ones_h, down)) / (2 * eps)).abs().mean().item()
        assert ffn[layer] == pytest.approx(fd, rel=1e-5)
    gates.remove()


def test_masked_structures_are_silent_and_gates_agree(tiny4, glue_dir):
    _, _, batch = _batch(tiny4, glue_dir)
    full = _model(tiny4)
    gates = Gates(full)
    gates.set(torch.from_numpy(MASK.heads).double(), torch.from_numpy(MASK.ffn).double())
    with torch.no_grad():
        gated = full(**batch).logits
    gates.remove()

    model = _model(tiny4)
    _apply(model, MASK)
    with torch.no_grad():
        masked = model(**batch).logits
    torch.testing.assert_close(masked, gated)
    # Outputs do not depend on the pruned structures' own weights: scramble them.
    lay = units.layout(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in range(3):
            att = lay.layers[layer].attention.self
            for h in np.flatnonzero(~MASK.heads[layer]):
                rows = slice(4 * h, 4 * h + 4)
                for lin in (att.query, att.key, att.value):
                    lin.weight[rows] = torch.randn(lin.weight[rows].shape, generator=g, dtype=torch.float64)
                    lin.bias[rows] = torch.randn(4, generator=g, dtype=torch.float64)
            if not MASK.ffn[layer]:
                inter = lay.layers[layer].intermediate.dense
                inter.weight.copy_(torch.randn(inter.weight.shape, generator=g, dtype=torch.float64))
        scrambled = model(**batch).logits
    torch.testing.assert_close(scrambled, masked)


def test_physical_pruning_matches_masking_and_reloads(tiny4, glue_dir, tmp_path):
    from ticketctl.model.loading import load_model

    _, _, batch = _batch(tiny4, glue_dir)
    model = _model(tiny4)
    _apply(model, MASK)
    before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        masked = model(**batch).logits
    units.prune_physically(model, MASK)
    with torch.no_grad():
        pruned = model(**batch).logits
    torch.testing.assert_close(pruned, masked)
    after = sum(p.numel() for p in model.parameters())
    lay = units.layout(model)
    # 5 heads x (3 x (16x4 + 4) + 16x4) and one FFN (16x32 + 32 + 32x16 + 16) are gone
    assert before - after == 5 * (3 * 68 + 64) + (16 * 32 + 32 + 32 * 16 + 16)
    assert lay.layers[1].attention.self.query.out_features == 4
    assert lay.layers[1].intermediate.dense.out_features == 0
    model.float().save_pretrained(str(tmp_path / "ticket"))
    reloaded = load_model(tmp_path / "ticket", 2, 0.0, "eager").double().eval()
    with torch.no_grad():
        again = reloaded(**batch).logits
    torch.testing.assert_close(again, pruned.float().double(), atol=1e-5, rtol=1e-5)


def test_training_pruned_equals_training_masked(tiny4, glue_dir):
    """finetune trains a structured ticket physically pruned: same training trajectory as the masked model (no
    dropout, so no random draws differ), pruned structures included (they stay zero in the masked one)."""
    from ticketctl.model.loading import load_tokenizer
    from ticketctl.hparams import TrainConfig
    from ticketctl.train.loop import predict, train

    enc, labels, batch = _batch(tiny4, glue_dir)
    cfg = TrainConfig(epochs=2, batch_size=4, dropout=0.0, lr=1e-3)
    pad = load_tokenizer(tiny4).pad_token_id
    masked, pruned = _model(tiny4).float(), _model(tiny4).float()
    keep = units.expand(masked, MASK)
    units.prune_physically(pruned, MASK)
    cpu = torch.device("cpu")
    train(masked, enc, labels, cfg, 3, cpu, pad, keep=keep)
    train(pruned, enc, labels, cfg, 3, cpu, pad)
    a, b = predict(masked, enc, cpu, pad, "fp32"), predict(pruned, enc, cpu, pad, "fp32")
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    units.prune_physically(masked, MASK)  # the trained masked model, pruned, has the same weights
    for (n, p), q in zip(masked.named_parameters(), pruned.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)


def test_ticket_selection():
    scores = np.array([[0.9, 0.1, 0.5, 0.2], [0.05, 0.02, 0.03, 0.04], [0.8, 0.7, 0.6, 0.3]])
    ffn = np.array([0.3, 0.1, 0.2])
    win = mstructured.ticket(scores, ffn, 0.5, "winning")
    assert win.heads.sum() == 6 and win.heads.any(axis=1).all()  # one head per layer survives
    assert win.heads[1].tolist() == [True, False, False, False]  # layer 1's best head is kept despite low scores
    assert win.ffn.tolist() == [True, False, False]  # round(1.5) = 2 of 3 FFNs pruned, the least important
    lose = mstructured.ticket(scores, ffn, 0.5, "losing")
    assert lose.heads.astype(int).tolist() == [[0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert lose.ffn.tolist() == [False, True, False]
    r1 = mstructured.ticket(scores, ffn, 0.5, "random", np.random.default_rng(1))
    r2 = mstructured.ticket(scores, ffn, 0.5, "random", np.random.default_rng(1))
    assert (r1.heads == r2.heads).all() and r1.heads.sum() == 6 and r1.heads.any(axis=1).all()
    with pytest.raises(Exception, match="at most 9 of 12 heads"):
        mstructured.ticket(scores, ffn, 0.8, "winning")


def test_share_updates_exactly_the_kept_structures(tiny4, glue_dir):
    """One step of the training loop on a task's batch, through share's ticket hooks, moves exactly that task's
    ticket (weights and AdamW moments) and the task's own head."""
    from ticketctl.data.batching import encode
    from ticketctl.hparams import DataOptions, TrainConfig
    from ticketctl.model.loading import load_tokenizer
    from ticketctl.log import Log
    from ticketctl.stages.context import Context
    from ticketctl.stages.share import Member, build_models
    from ticketctl.stages.share import mean_example_loss
    from ticketctl.train.sharing import TicketHooks, moments
    from ticketctl.train.loop import Loop

    masks = {"mrpc": MASK,
             "rte": StructuredMask(np.array([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1]], bool), np.array([0, 0, 1], bool))}
    contexts = {t: Context.create(t, str(tiny4), DataOptions(data_dir=str(glue_dir)), Log(True)) for t in masks}
    members = [Member(contexts[t], None) for t in masks]
    cfg = TrainConfig(lr=1e-2, dropout=0.0)
    cpu = torch.device("cpu")
    models = build_models(members, cfg, 1, cpu)
    first = models["mrpc"]
    tok = load_tokenizer(tiny4)
    data = {t: (encode(tok, contexts[t].train, 64), contexts[t].train.labels) for t in masks}
    loop = Loop(models, data, cfg, 1, cpu, tok.pad_token_id, hooks=TicketHooks(first, masks, cpu),
                loss=mean_example_loss)
    keep = {t: units.expand(first, m) for t, m in masks.items()}
    named = dict(first.named_parameters())
    none_kept = {n: ~(keep["mrpc"][n] | keep["rte"][n]) for n in keep["mrpc"]}
    start = {n: p.detach().clone() for n, p in named.items()}
    for task in ["mrpc", "rte", "mrpc", "rte", "mrpc"]:
        before = {n: p.detach().clone() for n, p in named.items()}
        saved_moments = {n: [m.clone() for m in moments(loop.opt, named[n])] for n in keep[task]}
        loop.step(task, np.arange(8), 1.0)
        changed_inside = 0
        for n, k in keep[task].items():
            p = named[n].detach()
            assert torch.equal(p[~k], before[n][~k]), f"{task} step moved {n} outside its ticket"
            changed_inside += int((p[k] != before[n][k]).sum())
            for old, new in zip(saved_moments[n], moments(loop.opt, named[n])):  # AdamW's moments too
                assert torch.equal(new[~k], old[~k]), f"{task} step moved {n}'s optimizer state outside its ticket"
        assert changed_inside > 0
    for n, k in none_kept.items():
        assert torch.equal(named[n].detach()[k], start[n][k]), f"{n}: a structure no task keeps changed"
    # the other task's head is untouched by a step on this task
    rte_head = {n: p.detach().clone() for n, p in models["rte"].named_parameters() if "classifier" in n}
    loop.step("mrpc", np.arange(8), 1.0)
    for n, p in models["rte"].named_parameters():
        if "classifier" in n:
            assert torch.equal(p.detach(), rte_head[n])


def test_structured_cli_sweep_finetune_stats_share(cli, tiny4, glue_dir, tmp_path):
    args = ["--model", str(tiny4), "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8", "--quiet",
            "--device", "cpu", "--out", str(tmp_path / "runs")]
    code, out, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity",
                         "0.25,0.5", "--ticket", "winning,random,losing", *args)
    assert code == 0, err
    masks = out.split()
    assert len(masks) == 6
    for p in masks:
        art = artifacts.read_artifact(p, "mask")
        m = art.structured()
        level = float(art.meta["target_sparsity"])
        assert m.heads.sum() == 12 - round(level * 12) and m.ffn.sum() == 3 - round(level * 3)
        # by hand (H = 16, head size 4, FFN 32): a head owns Q/K/V with biases and its output-projection columns
        # 4*16*4 + 3*4 = 268, an FFN 16*32 + 32 + 32*16 + 16 = 1072, a layer's LayerNorms and output bias 80
        kept = 268 * m.heads.sum() + 1072 * m.ffn.sum() + 3 * 80
        assert float(art.meta["weights_remaining"]) == pytest.approx(kept / (3 * (4 * 268 + 1072 + 80)), abs=1e-6)
    # the scores were computed once, and a second call reuses everything
    assert len(list((tmp_path / "runs" / "cache").glob("mrpc-importance-*"))) == 1
    code, out2, _ = cli("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity",
                        "0.25,0.5", "--ticket", "winning,random,losing", *args)
    assert code == 0 and out2.split() == masks
    code, out, err = cli("show", "--json", masks[1])
    assert code == 0 and json.loads(out)["summary"]["heads_kept"] == 6

    logits = []
    for p in masks:
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--mask", p, *args)
        assert code == 0, err
        logits += out.split()
    dense = sorted((tmp_path / "runs").glob("mrpc-logits-dev-dense-s1-*"))
    assert len(dense) == 1  # written by the structured search's dense finetune
    code, out, err = cli("stats", "--by", "sparsity", "--format", "json", str(dense[0]), *logits)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["sparsity"] for r in rows] == [0.25, 0.5] and all(r["winning_n"] == 1 for r in rows)
    plot = tmp_path / "phase.png"
    code, out, err = cli("stats", "--by", "sparsity", "--plot", str(plot), str(dense[0]), *logits)
    assert code == 0 and plot.stat().st_size > 0
    code, out, err = cli("stats", "--by", "sparsity", "--select", "best", *logits)
    assert code == 0 and len(out.split()) == 1 and "-mask-winning-" in out
    # the level by hand: the winning ticket most accurate on the seeded half of the dev examples chosen for
    # selection (numpy default_rng(0)'s permutation, first half), ties to the sparser level
    chosen = np.sort(np.random.default_rng(0).permutation(8)[:4])
    scored = []
    for p in logits:
        art = artifacts.read_artifact(p)
        mask = artifacts.read_artifact(art.meta["parents"][0]["path"])
        if mask.meta["policy"] == "winning":
            right = art.tensors["outputs"][chosen].argmax(1) == art.tensors["labels"][chosen]
            scored.append((right.mean(), float(mask.meta["target_sparsity"]), str(mask.path)))
    assert len(scored) == 2
    assert out.split() == [max(scored)[2]]

    saved = tmp_path / "ticket"
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "1", "--mask", masks[1], "--save-model",
                         str(saved), *args)
    assert code == 0, err
    # weights_remaining against a direct count: the saved member (at the full shapes, zeros where heads and FFNs
    # were pruned) keeps this many nonzero encoder-layer weights
    from safetensors.numpy import load_file

    layers = [v for k, v in load_file(str(saved / "model.safetensors")).items() if ".encoder.layer." in f".{k}"]
    assert float(artifacts.read_artifact(masks[1]).meta["weights_remaining"]) == pytest.approx(
        sum(int(np.count_nonzero(v)) for v in layers) / sum(v.size for v in layers), abs=1e-6)
    assert json.loads((saved / "config.json").read_text())["ticketctl_structure"]["ffn"] == \
        artifacts.read_artifact(masks[1]).structured().ffn.astype(int).tolist()

    code, out, err = cli("search", "--method", "structured", "--task", "rte", "--seed", "1", "--sparsity", "0.5",
                         *args)
    assert code == 0, err
    rte_mask = out.strip()
    code, out, err = cli("share", "--task", "mrpc", "--mask", masks[1], "--task", "rte", "--mask", rte_mask,
                         "--seed", "1", "--save-model", str(tmp_path / "shared"), *args)
    assert code == 0, err
    shared_logits = out.split()
    assert len(shared_logits) == 2 and "mrpc-logits-dev-share-s1" in shared_logits[0]
    assert (tmp_path / "shared" / "task_heads.safetensors").is_file()
    code, out, err = cli("share", "--task", "mrpc", "--task", "rte", "--seed", "1", *args)
    assert code == 0 and "share-dense" in out


@pytest.mark.parametrize("argv, code, message", [
    (["search", "--method", "structured", "--task", "mrpc", "--sparsity", "0.9"], 2, "at most"),
    (["search", "--method", "imp", "--task", "mrpc", "--sparsity", "0.1,0.2"], 2, "one --sparsity"),
    (["search", "--method", "structured", "--task", "mrpc", "--ticket", "best"], 2, "--ticket must be"),
    (["search", "--method", "structured", "--task", "mrpc", "--policy", "random"], 2,
     "--policy must be one of base, perturbed, active"),
    (["search", "--method", "structured", "--task", "mrpc", "--l1", "1e-4"], 2, "--l1 belongs to --method imp"),
    (["search", "--method", "structured", "--task", "mrpc", "--policy", "perturbed", "--ticket", "random"], 2,
     "give --ticket winning"),
    (["search", "--method", "structured", "--task", "mrpc", "--prior", "x"], 2, "--prior belongs to --policy active"),
    (["search", "--method", "structured", "--task", "mrpc", "--diversity", "0.5"], 2, "--diversity takes a value"),
    (["search", "--method", "imp", "--task", "mrpc", "--diversity", "0.5"], 2, "--diversity belongs to --method"),
    (["search", "--method", "prune", "--task", "mrpc"], 2, "--method must be"),
    (["share", "--task", "mrpc"], 2, "at least two"),
    (["share", "--task", "mrpc", "--task", "mrpc"], 2, "given twice"),
    (["share", "--task", "mrpc", "--task", "rte", "--sampling", "temperature"], 2, "--sampling must be"),
])
def test_structured_usage_errors(cli, tiny4, glue_dir, tmp_path, argv, code, message):
    got, out, err = cli(*argv, "--model", str(tiny4), "--data-dir", str(glue_dir), "--out", str(tmp_path), "-q",
                        "--device", "cpu", "--epochs", "1")
    assert got == code and message in err and out == ""
    assert "Traceback" not in err


def test_share_refuses_mismatched_masks(cli, tiny4, tiny_args, glue_dir, tmp_path):
    args = ["--model", str(tiny4), "--data-dir", str(glue_dir), "-q", "--device", "cpu", "--epochs", "1",
            "--out", str(tmp_path)]
    code, out, err = cli("search", "--method", "structured", "--task", "mrpc", "--sparsity", "0.5", *args)
    mrpc = out.strip()
    code, out, err = cli("share", "--task", "mrpc", "--mask", mrpc, "--task", "rte", *args)
    assert code == 2 and "one --mask per --task" in err
    code, out, err = cli("share", "--task", "rte", "--mask", mrpc, "--task", "mrpc", "--mask", mrpc, *args)
    assert code == 3 and "mask is for mrpc" in err
    code, out, err = cli("search", "--task", "mrpc", "--sparsity", "0.1", "--prune-step", "0.1", *args)
    imp = out.strip()
    code, out, err = cli("share", "--task", "mrpc", "--mask", imp, "--task", "rte", "--mask", mrpc, *args)
    assert code == 3 and "structured masks" in err


def test_stats_refuses_a_group_mixing_levels(cli, tiny4, glue_dir, tmp_path):
    args = ["--model", str(tiny4), "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8", "--quiet",
            "--device", "cpu", "--out", str(tmp_path)]
    logits = []
    for seed, level in ((1, "0.25"), (2, "0.5")):
        code, out, err = cli("search", "--method", "structured", "--task", "mrpc", "--seed", seed, "--sparsity",
                             level, *args)
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", seed, "--mask", out.strip(), *args)
        logits.append(out.strip())
    code, out, err = cli("stats", "--by", "policy", "--size", "1", *logits)
    assert code == 3 and "mixes sparsity levels" in err


def test_weights_remaining_counts_the_kept_parameters(tiny4):
    model = _model(tiny4)
    lay = units.layout(model)
    keep = units.expand(model, MASK)
    total = kept = 0
    for name, p in model.named_parameters():
        if name.startswith(lay.prefix + "."):
            total += p.numel()
            kept += int(keep[name].sum()) if name in keep else p.numel()
    assert mstructured.weights_remaining(MASK, units.unit_sizes(model)) == pytest.approx(kept / total, abs=1e-12)
