"""Artifact names are pinned (issue #23): users' runs folders are reused by name, so the config hash each command
puts in its file names must not change unless the computation does (open_lth's ``lottery/test/test_desc.py``).

Each test runs a command on the tiny model of ``conftest`` and compares every file it wrote with literals taken from
the code before the run identity became one object. The hashes cover the tiny model's and data's bytes, so the first
assertion of each test pins those fingerprints: if it fails, the fixture changed (a transformers or torch upgrade that
saves the model differently), not the identity.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

MODEL_FP = "73b2ca71d79f943b9cc22a30bd82e005e7fff2b203bb882f813be77de75e8d67"
MRPC_TRAIN_FP = "abcdc47ea8f96698f74d5dce5da43d865440d6d399064acf4d471574e351b3ec"


def _names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.safetensors"))


@pytest.fixture()
def run(cli, tiny_model, glue_dir, tmp_path, monkeypatch):
    """The CLI on the tiny model, fp32 on CPU (the identity holds the resolved precision), with the model at a
    relative path: a saved member's config records the model's name, which enters ``predict``'s hash."""
    shutil.copytree(tiny_model, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    where = ["--quiet", "--device", "cpu", "--out", "runs"]
    training = ["--model", "tiny", "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8",
                "--precision", "fp32"]

    def go(*command):
        code, out, err = cli(*command, *where, *([] if command[0] == "predict" else training))
        assert code == 0, err
        return out.split()

    return go


def test_fixture_fingerprints_are_pinned(tiny_model, glue_dir):
    from ticketctl.data import files
    from ticketctl.data.tasks import get_task
    from ticketctl.model.loading import model_fingerprint

    assert model_fingerprint(tiny_model) == MODEL_FP
    assert files.load_split(get_task("mrpc"), "train", glue_dir).fingerprint == MRPC_TRAIN_FP


def test_finetune_names_are_pinned(run, tmp_path):
    run("finetune", "--task", "mrpc", "--seed", "1")
    run("finetune", "--task", "mrpc", "--seed", "1", "--bagging", "0.5")
    run("finetune", "--task", "mrpc", "--seed", "2", "--train-fraction", "0.5", "--lr", "3e-5")
    assert _names(tmp_path / "runs") == [
        'cache/mrpc-dense-weights-s1-3ccd5baf19.safetensors',
        'cache/mrpc-dense-weights-s2-8a70051c1c.safetensors',
        'cache/mrpc-tokens-dev-40ba77dca8.safetensors',
        'cache/mrpc-tokens-train-019805d730.safetensors',
        'cache/mrpc-tokens-train-6658a2b6b1.safetensors',
        'cache/mrpc-tokens-train-f8884522e8.safetensors',
        'mrpc-logits-dev-bagging-s1-00e1a76bff.safetensors',
        'mrpc-logits-dev-dense-s1-f149a6d924.safetensors',
        'mrpc-logits-dev-dense-s2-b571f72145.safetensors',
    ]


def test_imp_search_names_are_pinned(run, tmp_path):
    base = run("search", "--task", "mrpc", "--seed", "1", "--sparsity", "0.2")
    run("search", "--task", "mrpc", "--seed", "2", "--policy", "random", "--sparsity", "0.2")
    run("search", "--task", "mrpc", "--seed", "3", "--policy", "active", "--prior", base[0], "--sparsity", "0.1",
        "--l1", "0.01")
    assert _names(tmp_path / "runs") == [
        'cache/mrpc-dense-weights-s1-3ccd5baf19.safetensors',
        'cache/mrpc-round1-active-s3-036e619cc5.safetensors',
        'cache/mrpc-round1-base-s1-3dadd53f46.safetensors',
        'cache/mrpc-round1-random-s2-0ee381552f.safetensors',
        'cache/mrpc-round2-base-s1-3dadd53f46.safetensors',
        'cache/mrpc-round2-random-s2-0ee381552f.safetensors',
        'cache/mrpc-tokens-dev-40ba77dca8.safetensors',
        'cache/mrpc-tokens-train-6658a2b6b1.safetensors',
        'mrpc-logits-dev-dense-s1-f149a6d924.safetensors',
        'mrpc-mask-active-10pct-s3-036e619cc5.safetensors',
        'mrpc-mask-base-20pct-s1-3dadd53f46.safetensors',
        'mrpc-mask-random-20pct-s2-0ee381552f.safetensors',
    ]


def test_structured_search_names_are_pinned(run, tmp_path):
    run("search", "--method", "structured", "--task", "rte", "--seed", "1", "--sparsity", "0.5",
        "--ticket", "winning,random")
    run("search", "--method", "structured", "--task", "rte", "--seed", "2", "--sparsity", "0.5",
        "--policy", "perturbed")
    assert _names(tmp_path / "runs") == [
        'cache/rte-dense-weights-s1-38df8f9468.safetensors',
        'cache/rte-dense-weights-s2-6e591c4e04.safetensors',
        'cache/rte-importance-s1-9abe5250ab.safetensors',
        'cache/rte-importance-s2-21b29c2995.safetensors',
        'cache/rte-tokens-dev-4fbc4165a0.safetensors',
        'cache/rte-tokens-train-b2f57946d9.safetensors',
        'rte-logits-dev-dense-s1-090e26c668.safetensors',
        'rte-logits-dev-dense-s2-be624d4b44.safetensors',
        'rte-mask-random-50pct-s1-d01c51d25f.safetensors',
        'rte-mask-winning-50pct-s1-a746f888d8.safetensors',
        'rte-mask-winning-perturbed-50pct-s2-18b6cc718a.safetensors',
    ]


def test_share_names_are_pinned(run, tmp_path):
    rte = run("search", "--method", "structured", "--task", "rte", "--seed", "1", "--sparsity", "0.5")
    mrpc = run("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity", "0.5")
    shared = run("share", "--task", "rte", "--mask", rte[0], "--task", "mrpc", "--mask", mrpc[0], "--seed", "1")
    dense = run("share", "--task", "rte", "--task", "mrpc", "--seed", "1", "--sampling", "equal")
    assert [Path(p).name for p in shared + dense] == [
        'rte-logits-dev-share-s1-02fb4e6ed6.safetensors',
        'mrpc-logits-dev-share-s1-3f330b68bf.safetensors',
        'rte-logits-dev-share-dense-s1-6d30733612.safetensors',
        'mrpc-logits-dev-share-dense-s1-7dab25bd07.safetensors',
    ]


def test_predict_names_are_pinned(run, tmp_path, glue_dir):
    run("finetune", "--task", "mrpc", "--seed", "1", "--save-model", "member")
    written = run("predict", str(glue_dir / "MRPC" / "dev.tsv"), "-m", "member")
    assert [Path(p).name for p in written] == [
        'mrpc-logits-dev-dense-s1-c578c6a385.safetensors',
    ]
    # --init: named by the saved folder's content (which records the model's name, here a relative path)
    transfer = run("finetune", "--task", "mrpc", "--seed", "2", "--init", "member", "--train-fraction", "0.5")
    assert [Path(p).name for p in transfer] == ["mrpc-logits-dev-init-s2-b25ef6bf8d.safetensors"]


# ---------------------------------------------------------------------------------------------- through RunIdentity


@pytest.fixture()
def mrpc(tiny_model, glue_dir, tmp_path):
    """The resolved MRPC context and config of the tiny model, as ``context.start`` gives them to every stage."""
    shutil.copytree(tiny_model, tmp_path / "tiny")
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.stages import context

    def start(task="mrpc", **train):
        return context.start(task, TrainConfig(epochs=1, batch_size=8, precision="fp32", **train),
                             DataOptions(data_dir=str(glue_dir)),
                             RunOptions(model=str(tmp_path / "tiny"), out=tmp_path / "runs", device="cpu",
                                        quiet=True))[:2]

    return start


def test_run_identity_names_a_finetune(mrpc):
    from ticketctl.data.sampling import training_subset
    from ticketctl.store.identity import IDENTITY_DEFAULTS, RunIdentity, finetune_scheme

    ctx, cfg = mrpc()
    dense = RunIdentity.training("mrpc", MODEL_FP, 1, MRPC_TRAIN_FP, cfg.as_dict(), train_fraction=1.0, init=None)
    same = ctx.identity(cfg, 1, train_fraction=1.0, init=None)
    assert (dense.hash(), dense.scheme) == (same.hash(), same.scheme) and dense.defaults is IDENTITY_DEFAULTS
    assert dense.paths("runs", [(s.name, s.fingerprint) for s in ctx.evals]) == [
        Path("runs/mrpc-logits-dev-dense-s1-f149a6d924.safetensors")]
    assert dense.dense_weights_path("runs") == Path("runs/cache/mrpc-dense-weights-s1-3ccd5baf19.safetensors")
    bagged = training_subset(ctx.train, 1, bagging=0.5)
    bagging = ctx.identity(cfg, 1, bagged, None, 0.5, scheme=finetune_scheme(None, 0.5), train_fraction=1.0,
                           init=None)
    assert [p.name for p, _ in bagging.logits("runs", [(ctx.evals[0].name, ctx.evals[0].fingerprint)])] == [
        "mrpc-logits-dev-bagging-s1-00e1a76bff.safetensors"]
    ctx, cfg = mrpc(lr=3e-5)
    fraction = ctx.identity(cfg, 2, training_subset(ctx.train, 2, fraction=0.5), train_fraction=0.5, init=None)
    assert fraction.paths("runs", [(s.name, s.fingerprint) for s in ctx.evals])[0].name == \
        "mrpc-logits-dev-dense-s2-b571f72145.safetensors"


def test_run_identity_names_an_imp_search(mrpc):
    from ticketctl.store.identity import SEARCH_DEFAULTS

    ctx, cfg = mrpc()
    base = ctx.identity(cfg, 1, train_fraction=1.0).imp_search("base", 0.2, 0.1, 0.0, [])
    assert base.defaults is SEARCH_DEFAULTS and base.scheme == "base"
    assert base.paths("runs") == [Path("runs/mrpc-mask-base-20pct-s1-3dadd53f46.safetensors")]
    assert base.round_path("runs", 2) == Path("runs/cache/mrpc-round2-base-s1-3dadd53f46.safetensors")
    random = ctx.identity(cfg, 2, train_fraction=1.0).imp_search("random", 0.2, 0.1, 1e-4, [])
    assert random.paths("runs")[0].name == "mrpc-mask-random-20pct-s2-0ee381552f.safetensors"


def test_run_identity_names_a_structured_search(mrpc):
    from ticketctl.masks import policies
    from ticketctl.stages.structured import IMPORTANCE_VERSION

    ctx, cfg = mrpc("rte")
    scores = ctx.identity(cfg, 1, train_fraction=1.0).importance(IMPORTANCE_VERSION)
    assert scores.importance_path("runs").name == "rte-importance-s1-9abe5250ab.safetensors"
    assert [scores.structured_ticket(k, 0.5).paths("runs")[0].name for k in ("winning", "random")] == [
        "rte-mask-winning-50pct-s1-a746f888d8.safetensors", "rte-mask-random-50pct-s1-d01c51d25f.safetensors"]
    perturbed = policies.get(policies.STRUCTURED, "perturbed")
    ticket = ctx.identity(cfg, 2, train_fraction=1.0).importance(IMPORTANCE_VERSION).structured_ticket(
        "winning", 0.5, "perturbed", perturbed.identity(perturbed.strength(None), []))
    assert ticket.paths("runs")[0].name == "rte-mask-winning-perturbed-50pct-s2-18b6cc718a.safetensors"


def test_run_identity_names_share_and_predict_members(run, tmp_path, glue_dir):
    """share's identities from its own function, predict's from RunIdentity.prediction, against the pinned names."""
    from ticketctl.data import files
    from ticketctl.data.tasks import get_task
    from ticketctl.stages.predict import read_member, run_identity

    run("finetune", "--task", "mrpc", "--seed", "1", "--save-model", "member")
    member = read_member("member")
    dev = files.load_split(get_task("mrpc"), "dev", glue_dir)
    identity = run_identity(member, dev, "fp32")
    assert identity.split_key is None and set(identity.fields) == {"member", "data", "max_length", "precision"}
    assert identity.paths("runs", [(dev.name, dev.fingerprint)])[0].name == \
        "mrpc-logits-dev-dense-s1-c578c6a385.safetensors"


def test_share_identities_are_pinned(mrpc):
    from ticketctl.stages.share import Member, run_identities

    (rte, cfg), (mrpc_ctx, _) = mrpc("rte"), mrpc("mrpc")
    members = [Member(rte, None), Member(mrpc_ctx, None)]
    identities = run_identities(members, {"rte": None, "mrpc": None}, cfg, 1, "equal")
    names = [p.name for m in members for p in identities[m.name].paths("runs", [(s.name, s.fingerprint)
                                                                             for s in m.ctx.evals])]
    assert names == ["rte-logits-dev-share-dense-s1-6d30733612.safetensors",
                     "mrpc-logits-dev-share-dense-s1-7dab25bd07.safetensors"]
