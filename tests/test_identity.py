"""Artifact names are pinned (issue #23): users' runs folders are reused by name, so the config hash each command
puts in its file names must not change unless the computation does (open_lth's ``lottery/test/test_desc.py``).

Each test runs a command on the tiny model of ``conftest`` and compares every file it wrote with literals. A literal
is pinned only where nothing in it depends on a package's release or the CPU's float rounding (issue #30): the tiny
model and data are written from fixed bytes (``conftest.build_tiny_bert``, ``write_glue``), and the names hash only
those bytes' fingerprints and the run's options, never trained weights. A name that hashes trained bytes (``predict``
of a saved member, ``--init`` from one) is checked by how it is derived, the member's content hash recomputed here.
The first test pins the fixtures' fingerprints: if it fails, the fixture's bytes changed, not the identity.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from ticketctl.store.artifacts import read_artifact
from ticketctl.store.identity import IDENTITY_DEFAULTS, SEARCH_DEFAULTS
from ticketctl.store.provenance import config_hash

# The tiny model's and MRPC's fingerprints: sha256 of bytes conftest writes by hand, the same under every release
# and CPU. Every literal name below hashes only these, the data's bytes and the options (never trained weights).
MODEL_FP = "1db08b99836ecec4b4e1a88afea02b2dad497c76d89de1855a84f7d4f28fcb48"
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


def test_fixture_model_loads_every_weight(tiny_model):
    """The hand-written checkpoint is what transformers loads: every tensor matched by name, none drawn afresh (a
    release that renamed BERT's parameters would otherwise initialise them at random, silently)."""
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import BertModel

    written = load_file(str(tiny_model / "model.safetensors"))
    loaded = {k: v.numpy() for k, v in BertModel.from_pretrained(str(tiny_model)).state_dict().items()}
    assert set(loaded) == set(written)
    assert all(np.array_equal(loaded[k], written[k]) for k in written)


def test_finetune_names_are_pinned(run, tmp_path):
    run("finetune", "--task", "mrpc", "--seed", "1")
    run("finetune", "--task", "mrpc", "--seed", "1", "--bagging", "0.5")
    run("finetune", "--task", "mrpc", "--seed", "2", "--train-fraction", "0.5", "--lr", "3e-5")
    assert _names(tmp_path / "runs") == [
        'cache/mrpc-dense-weights-s1-3f0dd673a6.safetensors',
        'cache/mrpc-dense-weights-s2-73e86369ed.safetensors',
        'cache/mrpc-tokens-dev-779904be14.safetensors',
        'cache/mrpc-tokens-train-4bfbe31aad.safetensors',
        'cache/mrpc-tokens-train-a3bdb3e347.safetensors',
        'cache/mrpc-tokens-train-b503db7c44.safetensors',
        'mrpc-logits-dev-bagging-s1-d066e8c526.safetensors',
        'mrpc-logits-dev-dense-s1-a9c3687337.safetensors',
        'mrpc-logits-dev-dense-s2-bd43dede78.safetensors',
    ]


def test_imp_search_names_are_pinned(run, tmp_path):
    base = run("search", "--task", "mrpc", "--seed", "1", "--sparsity", "0.2")
    run("search", "--task", "mrpc", "--seed", "2", "--policy", "random", "--sparsity", "0.2")
    active = run("search", "--task", "mrpc", "--seed", "3", "--policy", "active", "--prior", base[0],
                 "--sparsity", "0.1", "--l1", "0.01")
    # ACTIVE-LT hashes its priors' digests, which come from trained weights' magnitudes (a near tie at the threshold
    # can fall either way on another CPU): its name is derived here from the prior read back
    h = _derived_hash(active[0], SEARCH_DEFAULTS, priors=[read_artifact(base[0]).mask().digest()])
    names = _names(tmp_path / "runs")
    assert [n for n in names if "-active-" in n] == [f"cache/mrpc-round1-active-s3-{h}.safetensors",
                                                     f"mrpc-mask-active-10pct-s3-{h}.safetensors"]
    assert [n for n in names if "-active-" not in n] == [
        'cache/mrpc-dense-weights-s1-3f0dd673a6.safetensors',
        'cache/mrpc-round1-base-s1-ad4ba4b1f6.safetensors',
        'cache/mrpc-round1-random-s2-edbf7f1ae5.safetensors',
        'cache/mrpc-round2-base-s1-ad4ba4b1f6.safetensors',
        'cache/mrpc-round2-random-s2-edbf7f1ae5.safetensors',
        'cache/mrpc-tokens-dev-779904be14.safetensors',
        'cache/mrpc-tokens-train-b503db7c44.safetensors',
        'mrpc-logits-dev-dense-s1-a9c3687337.safetensors',
        'mrpc-mask-base-20pct-s1-ad4ba4b1f6.safetensors',
        'mrpc-mask-random-20pct-s2-edbf7f1ae5.safetensors',
    ]


def test_structured_search_names_are_pinned(run, tmp_path):
    run("search", "--method", "structured", "--task", "rte", "--seed", "1", "--sparsity", "0.5",
        "--ticket", "winning,random")
    run("search", "--method", "structured", "--task", "rte", "--seed", "2", "--sparsity", "0.5",
        "--policy", "perturbed")
    assert _names(tmp_path / "runs") == [
        'cache/rte-dense-weights-s1-aed5760dc2.safetensors',
        'cache/rte-dense-weights-s2-1273911ac0.safetensors',
        'cache/rte-importance-s1-86a2ea8c6b.safetensors',
        'cache/rte-importance-s2-381130dbb8.safetensors',
        'cache/rte-tokens-dev-36b0620844.safetensors',
        'cache/rte-tokens-train-7ea4e4aba5.safetensors',
        'rte-logits-dev-dense-s1-dffaf4b161.safetensors',
        'rte-logits-dev-dense-s2-c431107067.safetensors',
        'rte-mask-random-50pct-s1-d57c7f2a71.safetensors',
        'rte-mask-winning-50pct-s1-5b6f5c416b.safetensors',
        'rte-mask-winning-perturbed-50pct-s2-15ee625eac.safetensors',
    ]


def test_share_names_are_pinned(run, tmp_path, glue_dir):
    from ticketctl.data import files
    from ticketctl.data.tasks import get_task

    rte = run("search", "--method", "structured", "--task", "rte", "--seed", "1", "--sparsity", "0.5")
    mrpc = run("search", "--method", "structured", "--task", "mrpc", "--seed", "1", "--sparsity", "0.5")
    shared = run("share", "--task", "rte", "--mask", rte[0], "--task", "mrpc", "--mask", mrpc[0], "--seed", "1")
    dense = run("share", "--task", "rte", "--task", "mrpc", "--seed", "1", "--sampling", "equal")
    assert [Path(p).name for p in dense] == [
        'rte-logits-dev-share-dense-s1-dd4f569f23.safetensors',
        'mrpc-logits-dev-share-dense-s1-c3256aeda4.safetensors',
    ]
    # with tickets: the masks' digests enter the hash, and which heads a structured mask keeps follows importance
    # scores of trained weights (a near tie can fall either way on another CPU): derived from the masks read back
    digests = {"rte": read_artifact(rte[0]).structured().digest(), "mrpc": read_artifact(mrpc[0]).structured().digest()}
    for path, task in zip(shared, ("rte", "mrpc")):
        dev = files.load_split(get_task(task), "dev", glue_dir).fingerprint
        share = read_artifact(path).meta["config"]["share"]
        assert {e["task"]: e["mask"] for e in share} == digests
        h = _derived_hash(path, IDENTITY_DEFAULTS, mask=digests[task], eval_data=dev)
        assert Path(path).name == f"{task}-logits-dev-share-s1-{h}.safetensors"


def _derived_hash(path: str, defaults: dict, **fields) -> str:
    """The name hash of an artifact whose identity holds values derived from trained bytes: the config it records,
    checked to hold ``fields`` (recomputed by the caller; ``eval_data``, the split a logits file is hashed with, is
    not recorded and is added), hashed with ``defaults`` left out."""
    config = read_artifact(path).meta["config"]
    assert {k: config[k] for k in fields if k != "eval_data"} == {k: v for k, v in fields.items() if k != "eval_data"}
    return config_hash({**config, **fields}, defaults)[:10]


def _hand_hash(fields: dict) -> str:
    """The first 10 hex digits of sha256 over the fields' compact JSON with sorted keys: config_hash's rule, written
    out here so that the test does not take it from the code under test."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def test_predict_names_follow_the_member_content(run, tmp_path, glue_dir):
    """predict hashes the member's content, which holds trained weights (their bytes differ between CPUs whose
    kernels round differently): the name is checked against that content's fingerprint, recomputed here."""
    from ticketctl.data import files
    from ticketctl.data.tasks import get_task
    from ticketctl.model.loading import model_fingerprint

    run("finetune", "--task", "mrpc", "--seed", "1", "--save-model", "member")
    written = run("predict", str(glue_dir / "MRPC" / "dev.tsv"), "-m", "member")
    member = model_fingerprint(tmp_path / "member")
    dev = files.load_split(get_task("mrpc"), "dev", glue_dir).fingerprint
    want = _hand_hash({"member": member, "data": dev, "max_length": 128, "precision": "fp32"})
    assert [Path(p).name for p in written] == [f"mrpc-logits-dev-dense-s1-{want}.safetensors"]
    # --init: the finetune's identity with the saved folder's fingerprint as ``init`` (IDENTITY_DEFAULTS left out)
    transfer = run("finetune", "--task", "mrpc", "--seed", "2", "--init", "member", "--train-fraction", "0.5")
    dense = run("finetune", "--task", "mrpc", "--seed", "2", "--train-fraction", "0.5")
    assert read_artifact(transfer[0]).meta["config"]["init"] == member
    h = _derived_hash(transfer[0], IDENTITY_DEFAULTS, init=member, eval_data=dev)
    assert Path(transfer[0]).name == f"mrpc-logits-dev-init-s2-{h}.safetensors"
    # ... and is the dense run of the same options but for init
    assert {**read_artifact(dense[0]).meta["config"], "init": member} == read_artifact(transfer[0]).meta["config"]


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
        Path("runs/mrpc-logits-dev-dense-s1-a9c3687337.safetensors")]
    assert dense.dense_weights_path("runs") == Path("runs/cache/mrpc-dense-weights-s1-3f0dd673a6.safetensors")
    bagged = training_subset(ctx.train, 1, bagging=0.5)
    bagging = ctx.identity(cfg, 1, bagged, None, 0.5, scheme=finetune_scheme(None, 0.5), train_fraction=1.0,
                           init=None)
    assert [p.name for p, _ in bagging.logits("runs", [(ctx.evals[0].name, ctx.evals[0].fingerprint)])] == [
        "mrpc-logits-dev-bagging-s1-d066e8c526.safetensors"]
    ctx, cfg = mrpc(lr=3e-5)
    fraction = ctx.identity(cfg, 2, training_subset(ctx.train, 2, fraction=0.5), train_fraction=0.5, init=None)
    assert fraction.paths("runs", [(s.name, s.fingerprint) for s in ctx.evals])[0].name == \
        "mrpc-logits-dev-dense-s2-bd43dede78.safetensors"


def test_a_finetune_spec_plans_the_paths_its_run_writes(mrpc, tmp_path):
    """One ``FinetuneSpec`` (#32): the planner's ``targets`` (no training) are the paths ``run_context`` writes, named
    as pinned above, for a dense member and for one started from a saved member's encoder (``--init``, whose folder's
    fingerprint enters the name); numbers and paths given as strings name the same run."""
    from dataclasses import replace

    import torch

    from ticketctl.hparams import RunOptions
    from ticketctl.stages import finetune

    ctx, cfg = mrpc()
    run = RunOptions(out=tmp_path / "runs", quiet=True)
    dense = finetune.FinetuneSpec("mrpc", 1, run=run, save_model=tmp_path / "member")
    assert dense == finetune.FinetuneSpec("mrpc", 1, bagging="1", train_fraction=1, save_model=str(tmp_path / "member"),
                                          run=run)
    planned = finetune.targets(dense, ctx, cfg)
    assert planned == [tmp_path / "runs" / "mrpc-logits-dev-dense-s1-a9c3687337.safetensors"]
    assert finetune.run_context(dense, ctx, cfg, torch.device("cpu")) == planned
    transfer = replace(dense, seed=2, init=tmp_path / "member", train_fraction="0.5", save_model=None)
    assert transfer.init == str(tmp_path / "member") and transfer.train_fraction == 0.5
    planned = finetune.targets(transfer, ctx, cfg)
    assert planned[0].name.startswith("mrpc-logits-dev-init-s2-")
    assert finetune.run_context(transfer, ctx, cfg, torch.device("cpu")) == planned
    assert read_artifact(planned[0]).meta["init_model"] == str(tmp_path / "member")
    with pytest.raises(ValueError, match="differ in more than their training fraction"):  # one context for all
        finetune.run_finetunes([dense, replace(dense, seed=3, train_fraction=0.5)])


def test_run_identity_names_an_imp_search(mrpc):
    from ticketctl.store.identity import SEARCH_DEFAULTS

    ctx, cfg = mrpc()
    base = ctx.identity(cfg, 1, train_fraction=1.0).imp_search("base", 0.2, 0.1, 0.0, [])
    assert base.defaults is SEARCH_DEFAULTS and base.scheme == "base"
    assert base.paths("runs") == [Path("runs/mrpc-mask-base-20pct-s1-ad4ba4b1f6.safetensors")]
    assert base.round_path("runs", 2) == Path("runs/cache/mrpc-round2-base-s1-ad4ba4b1f6.safetensors")
    random = ctx.identity(cfg, 2, train_fraction=1.0).imp_search("random", 0.2, 0.1, 1e-4, [])
    assert random.paths("runs")[0].name == "mrpc-mask-random-20pct-s2-edbf7f1ae5.safetensors"


def test_run_identity_names_a_structured_search(mrpc):
    from ticketctl.masks import policies
    from ticketctl.stages.structured import IMPORTANCE_VERSION

    ctx, cfg = mrpc("rte")
    scores = ctx.identity(cfg, 1, train_fraction=1.0).importance(IMPORTANCE_VERSION)
    assert scores.importance_path("runs").name == "rte-importance-s1-86a2ea8c6b.safetensors"
    assert [scores.structured_ticket(k, 0.5).paths("runs")[0].name for k in ("winning", "random")] == [
        "rte-mask-winning-50pct-s1-5b6f5c416b.safetensors", "rte-mask-random-50pct-s1-d57c7f2a71.safetensors"]
    perturbed = policies.get(policies.STRUCTURED, "perturbed")
    ticket = ctx.identity(cfg, 2, train_fraction=1.0).importance(IMPORTANCE_VERSION).structured_ticket(
        "winning", 0.5, "perturbed", perturbed.identity(perturbed.strength(None), []))
    assert ticket.paths("runs")[0].name == "rte-mask-winning-perturbed-50pct-s2-15ee625eac.safetensors"


def test_run_identity_names_predict_members(run, tmp_path, glue_dir):
    """predict's identity from RunIdentity.prediction against the name derived by hand from the member's content."""
    from ticketctl.data import files
    from ticketctl.data.tasks import get_task
    from ticketctl.stages.predict import read_member, run_identity

    run("finetune", "--task", "mrpc", "--seed", "1", "--save-model", "member")
    member = read_member("member")
    dev = files.load_split(get_task("mrpc"), "dev", glue_dir)
    identity = run_identity(member, dev, "fp32")
    assert identity.split_key is None and set(identity.fields) == {"member", "data", "max_length", "precision"}
    want = _hand_hash({"member": member.fingerprint, "data": dev.fingerprint, "max_length": 128, "precision": "fp32"})
    assert identity.paths("runs", [(dev.name, dev.fingerprint)])[0].name == \
        f"mrpc-logits-dev-dense-s1-{want}.safetensors"


def test_share_identities_are_pinned(mrpc):
    from ticketctl.stages.share import Member, run_identities

    (rte, cfg), (mrpc_ctx, _) = mrpc("rte"), mrpc("mrpc")
    members = [Member(rte, None), Member(mrpc_ctx, None)]
    identities = run_identities(members, {"rte": None, "mrpc": None}, cfg, 1, "equal")
    names = [p.name for m in members for p in identities[m.name].paths("runs", [(s.name, s.fingerprint)
                                                                             for s in m.ctx.evals])]
    assert names == ["rte-logits-dev-share-dense-s1-dd4f569f23.safetensors",
                     "mrpc-logits-dev-share-dense-s1-c3256aeda4.safetensors"]
