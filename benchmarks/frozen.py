"""Record what every command computes on a tiny model, to check that a refactor changed nothing.

Runs each command of the CLI (finetune dense / bagging / train-fraction / eval-file / masked / structured /
--save-model / --init, search base / random / active / structured, share with and without masks, and the analysis
commands) on a tiny BERT built in code and tiny GLUE-shaped data, then writes one JSON object: for every artifact,
its file name (which carries the config hash) and the sha256 of each tensor's bytes; for every analysis command, its
stdout. Timings, versions and paths are left out, so two runs of the same code give the same JSON.

    python benchmarks/frozen.py before.json        # on the old code (run from outside the checkout)
    python benchmarks/frozen.py after.json         # on the new code
    cmp before.json after.json                     # identical = the same masks, logits, names and tables

Takes about 10 s on 2 cores (one thread).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def capture(*args) -> dict:
    """Run the CLI in this process: {"code", "stdout", "stderr"}."""
    from ticketctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def run(*args) -> str:
    result = capture(*args)
    if result["code"] != 0:
        raise RuntimeError(f"ticketctl {' '.join(map(str, args))}: exit {result['code']}\n{result['stderr']}")
    return result["stdout"]


def digests(root: Path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for p in sorted(root.rglob("*.safetensors")):
        if p.name == "model.safetensors" or p.name == "task_heads.safetensors":
            tensors = load_file(str(p))
            key = f"{p.parent.name}/{p.name}"
        else:
            tensors = load_file(str(p))
            key = str(p.relative_to(root))
        if "-ensemble-" in key:  # named by its members' file hashes, which cover their timings: differs per run
            key = key.rsplit("-", 1)[0] + "-<members>.safetensors"
        out[key] = {k: hashlib.sha256(v.tobytes()).hexdigest()[:16] for k, v in sorted(tensors.items())}
    return out


def main(dest: str) -> None:
    from conftest import MRPC_ROWS, _write_mrpc, build_tiny_bert, write_glue

    tmp = Path(tempfile.mkdtemp(prefix="frozen-"))
    os.chdir(tmp)
    glue = write_glue(tmp / "glue")
    _write_mrpc(tmp / "extra.tsv", MRPC_ROWS[4:10])
    build_tiny_bert(tmp / "tiny", layers=2, heads=4)
    # By its relative path: a saved member's config.json records the --model it was trained from, and --init's
    # identity is the saved folder's content, so an absolute temporary path would rename the --init run every time.
    model = "tiny"
    common = ["--model", model, "--data-dir", glue, "--epochs", "1", "--batch-size", "8", "--quiet", "--device",
              "cpu", "--out", "runs"]
    tables = {}
    lines = lambda s: s.split()  # noqa: E731

    # finetune: dense (two seeds), bagging, train fractions, an extra evaluation file, regression, fp32/bf16
    dense = []
    for s in (1, 2, 3):
        dense += lines(run("finetune", "--task", "mrpc", "--seed", s, "--eval-file", tmp / "extra.tsv", *common))
    run("finetune", "--task", "mrpc", "--seed", 1, "--bagging", "0.5", *common)
    run("finetune", "--task", "mrpc", "--seed", 1, "--train-fraction", "0.5,1", *common)
    run("finetune", "--task", "stsb", "--seed", 1, *common)
    run("finetune", "--task", "stsb", "--seed", 2, "--precision", "bf16", "--warmup", "0.2", "--weight-decay",
        "0.01", *common)
    # search: base, random, active (first member and with a prior), then finetune each ticket
    base = run("search", "--task", "mrpc", "--seed", 1, "--sparsity", "0.2", *common).strip()
    rand = run("search", "--task", "mrpc", "--seed", 2, "--policy", "random", "--sparsity", "0.2", *common).strip()
    act1 = run("search", "--task", "mrpc", "--seed", 3, "--policy", "active", "--prior", "none", "--sparsity", "0.2",
               *common).strip()
    act2 = run("search", "--task", "mrpc", "--seed", 4, "--policy", "active", "--prior", act1, "--sparsity", "0.2",
               "--l1", "0.01", *common).strip()
    tickets = []
    for s, m in ((1, base), (2, rand), (3, act1), (4, act2)):
        tickets += lines(run("finetune", "--task", "mrpc", "--seed", s, "--mask", m, *common))
    # structured: levels and kinds, finetune the tickets, save one physically pruned, transfer from it
    smasks = lines(run("search", "--method", "structured", "--task", "rte", "--seed", 1, "--sparsity", "0.25,0.5",
                       "--ticket", "winning,random,losing", *common))
    sparsity_members = lines(run("finetune", "--task", "rte", "--seed", 1, *common))
    for m in smasks:
        sparsity_members += lines(run("finetune", "--task", "rte", "--seed", 1, "--mask", m, *common))
    run("finetune", "--task", "rte", "--seed", 1, "--mask", smasks[1], "--save-model", tmp / "saved", "--force",
        *common)
    run("finetune", "--task", "mrpc", "--seed", 2, "--init", tmp / "saved", "--train-fraction", "0.5", *common)
    mrpc_s = lines(run("search", "--method", "structured", "--task", "mrpc", "--seed", 1, "--sparsity", "0.5",
                       *common))
    # share: masked (with a saved model) and the dense baseline
    run("share", "--task", "rte", "--mask", smasks[1], "--task", "mrpc", "--mask", mrpc_s[0], "--seed", 1,
        "--save-model", tmp / "shared", *common)
    run("share", "--task", "rte", "--task", "mrpc", "--seed", 1, "--sampling", "equal", *common)

    dev = [p for p in dense if "-dev-" in p]
    tables["ensemble"] = run("ensemble", "--format", "tsv", *dev)
    tables["ensemble_size"] = run("ensemble", "--format", "tsv", "--size", "1-3", "--combine", "vote", *dev)
    tables["ensemble_out"] = Path(run("ensemble", "--out", "runs", *dev).strip()).name.rsplit("-", 1)[0]
    run("ensemble", "--submission", "sub.tsv", *dev)
    tables["submission"] = Path("sub.tsv").read_text()
    tables["diversity"] = run("diversity", "--format", "tsv", *dev)
    tables["diversity_matrix"] = run("diversity", "--format", "tsv", "--matrix", *dev)
    tables["iou"] = run("iou", "--format", "tsv", base, rand, act1, act2)
    tables["iou_layers"] = run("iou", "--format", "tsv", "--layers", base, rand, act1, act2)
    tables["iou_structured"] = run("iou", "--format", "tsv", *smasks)
    tables["iou_remaining"] = run("iou", "--format", "tsv", "--remaining", *smasks)
    tables["iou_importance"] = run("iou", "--format", "tsv", "--importance", smasks[0], mrpc_s[0])
    ticket_dev = [p for p in tickets if "-dev-" in p]
    tables["stats"] = run("stats", "--format", "tsv", "--by", "seed", "--size", "1", *dev[:2])
    tables["stats_policy"] = run("stats", "--format", "tsv", "--size", "1", dev[0], ticket_dev[1])
    tables["stats_bootstrap"] = run("stats", "--format", "tsv", "--by", "seed", "--size", "1", "--bootstrap", "50",
                                    *dev[:2])
    tables["phase"] = run("stats", "--format", "tsv", "--by", "sparsity", *sparsity_members)
    tables["select"] = [Path(p).name for p in lines(run("stats", "--by", "sparsity", "--select", "best",
                                                        *sparsity_members))]
    shown = json.loads(run("show", "--json", base))
    tables["show_mask"] = {k: shown[k] for k in ("config", "config_hash", "sparsity", "metrics", "summary")}
    result = {"artifacts": digests(tmp / "runs"), "saved": digests(tmp / "saved") | digests(tmp / "shared"),
              "tables": tables}
    Path(dest).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{dest}: {len(result['artifacts'])} artifacts, {len(tables)} tables", file=sys.stderr)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "frozen.json"))
