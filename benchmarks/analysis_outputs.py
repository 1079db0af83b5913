"""Record what every analysis command prints, in every format, to check that a refactor of the analysis changed
no byte of it: stdout, stderr and the exit status of ``ensemble`` (also ``--scores`` and ``--ood``), ``diversity``,
``iou``, ``stats`` (Table 1, the phase transition, ``--select best``, ``--cost``, ``--by train_fraction``) and
``show``, each in table, tsv, json and markdown where it offers them, plus the refusals.

Reads two folders of artifacts: the run folder ``benchmarks/frozen.py`` trained (real masks and logits of a tiny
BERT; its path is printed at the end of that run as ``/tmp/frozen-*``), and a folder of synthetic logits artifacts
this script writes (seeded random outputs: several schemes x seeds with inference costs, structured levels, a
regression task, training fractions, members with outputs on OOD texts for ``ensemble --ood``), so that the tables have more than one member per cell.

    python benchmarks/analysis_outputs.py /tmp/frozen-XXXX before.json     # on the old code
    python benchmarks/analysis_outputs.py /tmp/frozen-XXXX after.json      # on the new code
    cmp before.json after.json

Takes a few seconds (no training).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

FORMATS = ("table", "tsv", "json", "markdown")


sys.path.insert(0, str(Path(__file__).resolve().parent))
from frozen import capture as run  # noqa: E402  (the CLI in this process: code, stdout, stderr)


def synthetic(folder: Path) -> dict[str, list[str]]:
    """Seeded logits artifacts: mrpc schemes x 6 seeds with costs, rte structured levels, stsb, train fractions."""
    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(7)
    n = 40
    mrpc_labels = rng.integers(0, 2, n)
    rte_labels = rng.integers(0, 2, n)
    stsb_labels = rng.uniform(0, 5, n).astype(np.float32)
    base = {"split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1"}

    def write(name, task, labels, noise, **meta):
        if task == "stsb":
            outputs = (labels + rng.normal(0, noise, n)).astype(np.float32)[:, None]
        else:
            outputs = (np.eye(2)[labels] * 2 + rng.normal(0, noise, (n, 2))).astype(np.float32)
        tensors = {"outputs": outputs, "ids": np.arange(n), "labels": labels}
        return str(write_artifact(folder / f"{name}.safetensors", "logits", tensors,
                                  {**base, "task": task, **{k: v if isinstance(v, dict) else str(v)
                                                            for k, v in meta.items()}}))

    out: dict[str, list[str]] = {"mrpc": [], "stsb": [], "rte": [], "fraction": []}
    costs = {"dense": 1.0, "base": 1.0, "random": 0.6}
    for policy, noise in (("dense", 2.0), ("base", 2.2), ("random", 2.6)):
        for seed in range(1, 7):
            cost = {"relative_flops": costs[policy], "flops_per_example": 2.5e9 * costs[policy], "params": 1000,
                    "nonzero_params": 900, "mean_tokens": 12.5}
            out["mrpc"].append(write(f"mrpc-{policy}-s{seed}", "mrpc", mrpc_labels, noise, policy=policy, seed=seed,
                                     cost=cost))
    for seed in range(1, 5):
        out["stsb"].append(write(f"stsb-dense-s{seed}", "stsb", stsb_labels, 0.8 + 0.1 * seed, policy="dense",
                                 seed=seed))
    for seed in range(1, 4):
        out["rte"].append(write(f"rte-dense-s{seed}", "rte", rte_labels, 2.0, policy="dense", seed=seed))
        for kind, noise in (("winning", 2.1), ("random", 2.8), ("losing", 3.2)):
            for level in (0.25, 0.5):
                out["rte"].append(write(f"rte-{kind}-{int(level * 100)}-s{seed}", "rte", rte_labels,
                                        noise + level, policy=kind, seed=seed, method="structured",
                                        target_sparsity=level, sparsity=level * 0.97, ffn_sparsity=level * 0.9))
    for seed in range(1, 4):
        for fraction in (0.25, 0.5, 1.0):
            out["fraction"].append(write(f"mrpc-frac{fraction}-s{seed}", "mrpc", mrpc_labels, 3.0 - fraction,
                                         policy="dense", seed=seed, train_fraction=fraction))
    out.update(ood_members(folder))
    return out


def ood_members(folder: Path) -> dict[str, list[str]]:
    """Seeded members of a 3-class task (mnli) and a 2-class one (mrpc) on a labelled dev split and on OOD texts
    (split ``ood``, other examples, paired by the run config); logits rounded to one decimal so that the OOD scores
    tie, within and across the two sides. Its own random stream: the other synthetic artifacts stay as they were."""
    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(11)
    out: dict[str, list[str]] = {"ood-mnli": [], "ood-mrpc": []}
    for task, classes in (("mnli", 3), ("mrpc", 2)):
        labels = rng.integers(0, classes, 40)
        for seed in range(1, 6):
            config = {"task": task, "seed": seed, "lr": 1e-4}
            for split, n, data in (("dev", 40, "d1"), ("ood", 30, "d2")):
                if split == "dev":
                    logits = np.eye(classes)[labels] * 2 + rng.normal(0, 1.5, (n, classes))
                else:
                    logits = rng.normal(0, 1.2, (n, classes))
                tensors = {"outputs": np.round(logits, 1).astype(np.float32), "ids": np.arange(n)}
                if split == "dev":
                    tensors["labels"] = labels
                meta = {"task": task, "split": split, "data_fingerprint": data, "model_fingerprint": "m1",
                        "seed": str(seed), "policy": "dense", "config": config}
                out[f"ood-{task}"].append(str(write_artifact(folder / f"{task}-{split}-dense-s{seed}.safetensors",
                                                             "logits", tensors, meta)))
    return out


def commands(frozen: Path, syn: dict[str, list[str]], scratch: Path) -> dict[str, list]:
    runs = frozen / "runs"
    g = lambda pattern: sorted(str(p) for p in runs.glob(pattern))  # noqa: E731
    from ticketctl.store.artifacts import read_artifact

    dev = [p for p in g("mrpc-logits-dev-dense-s*")  # the three full-data members frozen.py ensembles
           if float((read_artifact(p).meta.get("config") or {}).get("train_fraction", 1.0)) == 1.0]
    imp_masks = g("mrpc-mask-*-20pct-*")
    smasks = g("rte-mask-*")
    mrpc_s = g("mrpc-mask-winning-50pct-*")
    rte = g("rte-logits-dev-*")
    rte = [p for p in rte if "share" not in p]
    stsb = g("stsb-logits-dev-*")
    tickets = g("mrpc-logits-dev-base-*") + g("mrpc-logits-dev-random-*")
    cmds: dict[str, list] = {}
    for f in FORMATS:
        cmds[f"ensemble-{f}"] = ["ensemble", "--format", f, *dev]
        cmds[f"ensemble-size-{f}"] = ["ensemble", "--format", f, "--size", "1-3", "--combine", "vote", *dev]
        cmds[f"ensemble-syn-{f}"] = ["ensemble", "--format", f, *syn["mrpc"][:6]]
        cmds[f"ensemble-syn-size-{f}"] = ["ensemble", "--format", f, "--size", "1-3", "--groups", "2",
                                          *syn["mrpc"][:6]]
        cmds[f"ensemble-stsb-{f}"] = ["ensemble", "--format", f, "--size", "2", *syn["stsb"]]
        for task in ("mnli", "mrpc"):
            cmds[f"ensemble-ood-{task}-{f}"] = ["ensemble", "--format", f, "--ood", "ood", *syn[f"ood-{task}"]]
            cmds[f"ensemble-ood-{task}-size-{f}"] = ["ensemble", "--format", f, "--ood", "ood", "--size", "1-4",
                                                     "--combine", "logits", *syn[f"ood-{task}"]]
        cmds[f"ensemble-scores-mnli-{f}"] = ["ensemble", "--format", f, "--scores", "all", "--size", "1-3",
                                             *[p for p in syn["ood-mnli"] if "-dev-" in p]]
        cmds[f"ensemble-scores-mrpc-{f}"] = ["ensemble", "--format", f, "--scores", "all", "--size", "2",
                                             "--combine", "logits", *syn["mrpc"][:6]]
        cmds[f"diversity-{f}"] = ["diversity", "--format", f, *dev]
        cmds[f"diversity-matrix-{f}"] = ["diversity", "--format", f, "--matrix", *dev]
        cmds[f"diversity-stsb-{f}"] = ["diversity", "--format", f, *syn["stsb"]]
        cmds[f"diversity-stsb-real-{f}"] = ["diversity", "--format", f, *stsb]
        cmds[f"iou-{f}"] = ["iou", "--format", f, *imp_masks]
        cmds[f"iou-layers-{f}"] = ["iou", "--format", f, "--layers", *imp_masks]
        cmds[f"iou-structured-{f}"] = ["iou", "--format", f, *smasks]
        cmds[f"iou-remaining-{f}"] = ["iou", "--format", f, "--remaining", *smasks]
        cmds[f"iou-importance-{f}"] = ["iou", "--format", f, "--importance", smasks[0], *mrpc_s]
        cmds[f"iou-cross-{f}"] = ["iou", "--format", f, "--cross-task", smasks[0], *mrpc_s]
        cmds[f"stats-seed-{f}"] = ["stats", "--format", f, "--by", "seed", "--size", "1", *dev[:2]]
        cmds[f"stats-policy-{f}"] = ["stats", "--format", f, "--size", "1", dev[0], *tickets[:1]]
        cmds[f"stats-bootstrap-{f}"] = ["stats", "--format", f, "--by", "seed", "--size", "1", "--bootstrap", "50",
                                        *dev[:2]]
        cmds[f"stats-syn-{f}"] = ["stats", "--format", f, "--resamples", "199", *syn["mrpc"]]
        cmds[f"stats-syn-groups-{f}"] = ["stats", "--format", f, "--resamples", "199", "--groups", "2", "--size", "2",
                                         "--bootstrap", "20", *syn["mrpc"]]
        cmds[f"stats-syn-paper-{f}"] = ["stats", "--format", f, "--test", "paper", "--ref", "base", *syn["mrpc"]]
        cmds[f"stats-syn-few-{f}"] = ["stats", "--format", f, "--resamples", "199",
                                      *[p for p in syn["mrpc"] if "-s1" in p or "-s2" in p or "-s3" in p]]
        cmds[f"stats-stsb-{f}"] = ["stats", "--format", f, "--by", "seed", "--size", "1", *syn["stsb"]]
        cmds[f"stats-cost-{f}"] = ["stats", "--format", f, "--cost", "--resamples", "199", *syn["mrpc"]]
        cmds[f"stats-cost-groups-{f}"] = ["stats", "--format", f, "--cost", "--groups", "2", "--ref", "random",
                                          *syn["mrpc"]]
        cmds[f"phase-{f}"] = ["stats", "--format", f, "--by", "sparsity", *rte]
        cmds[f"phase-syn-{f}"] = ["stats", "--format", f, "--by", "sparsity", "--resamples", "199", *syn["rte"]]
        cmds[f"fraction-syn-{f}"] = ["stats", "--format", f, "--by", "train_fraction", *syn["fraction"]]
        cmds[f"stats-with-size-cost-{f}"] = ["stats", "--format", f, "--size", "2", "--resamples", "199",
                                             *syn["mrpc"][:12]]
    for name, args in (("stats", [*syn["mrpc"]]), ("cost", ["--cost", *syn["mrpc"]]),
                       ("phase", ["--by", "sparsity", *syn["rte"]])):
        cmds[f"plot-{name}"] = ["stats", "--plot", scratch / f"{name}.png", "--resamples", "99", *args]
    cmds["plot-iou"] = ["iou", "--plot", scratch / "iou.png", *imp_masks]
    cmds["plot-importance"] = ["iou", "--importance", "--plot", scratch / "imp.png", smasks[0], *mrpc_s]
    cmds["plot-show"] = ["show", "--plot", scratch / "curves.png", *dev]
    cmds["select"] = ["stats", "--by", "sparsity", "--select", "best", *rte]
    cmds["select-syn"] = ["stats", "--by", "sparsity", "--select", "best", "--select-fraction", "0.3", *syn["rte"]]
    cmds["ensemble-out"] = ["ensemble", "--out", scratch / "ens", *dev]
    cmds["ensemble-submission"] = ["ensemble", "--submission", scratch / "sub.tsv", *dev]
    cmds["ensemble-submission-stsb"] = ["ensemble", "--submission", scratch / "sub-stsb.tsv", *stsb]
    cmds["ensemble-unlabelled"] = ["ensemble", *g("mrpc-logits-extra-dense-*")]
    for what, paths in (("mask", imp_masks[:1]), ("structured", smasks[:1]), ("logits", dev[:1]),
                        ("several", [*imp_masks[:2], *rte[:1]])):
        cmds[f"show-{what}"] = ["show", *paths]
        cmds[f"show-{what}-json"] = ["show", "--json", *paths]
        cmds[f"show-{what}-verify"] = ["show", "--verify", *paths]
        cmds[f"show-{what}-json-verify"] = ["show", "--json", "--verify", *paths]
    # refusals: one line on stderr, the exit status
    cmds["bad-format"] = ["ensemble", "--format", "xml", *dev]
    cmds["bad-select"] = ["stats", "--select", "worst", *dev]
    cmds["select-needs-sparsity"] = ["stats", "--select", "best", *dev]
    cmds["select-fraction-by"] = ["stats", "--select", "best", "--by", "train_fraction", *syn["fraction"]]
    cmds["bad-bootstrap"] = ["stats", "--bootstrap", "-1", *dev]
    cmds["bad-size"] = ["stats", "--size", "0", *dev]
    cmds["bad-test"] = ["stats", "--test", "t", *syn["mrpc"]]
    cmds["bad-resamples"] = ["stats", "--resamples", "5", *syn["mrpc"]]
    cmds["bad-ref"] = ["stats", "--ref", "nope", *syn["mrpc"]]
    cmds["too-big-k"] = ["stats", "--size", "9", *syn["mrpc"]]
    cmds["bad-groups"] = ["stats", "--groups", "4", *syn["mrpc"]]
    cmds["mixed-recipe"] = ["stats", *tickets, *g("mrpc-logits-dev-active-*")]
    cmds["bad-select-fraction"] = ["stats", "--by", "sparsity", "--select", "best", "--select-fraction", "1", *rte]
    cmds["ensemble-size-unlabelled"] = ["ensemble", "--size", "2", *g("mrpc-logits-extra-dense-*")]
    cmds["ensemble-size-too-big"] = ["ensemble", "--size", "4", *dev]
    cmds["ensemble-bad-groups"] = ["ensemble", "--size", "1", "--groups", "2", *dev]
    cmds["diversity-one"] = ["diversity", *dev[:1]]
    cmds["iou-two-views"] = ["iou", "--layers", "--remaining", *smasks]
    cmds["iou-importance-imp"] = ["iou", "--importance", *imp_masks]
    cmds["iou-layers-structured"] = ["iou", "--layers", *smasks]
    cmds["iou-importance-one-task"] = ["iou", "--importance", *smasks]
    cmds["cost-no-record"] = ["stats", "--cost", *dev]
    cmds["phase-unlabelled"] = ["stats", "--by", "sparsity", *g("mrpc-logits-extra-dense-*")]
    cmds["phase-only-full"] = ["stats", "--by", "sparsity", *dev]
    cmds["ensemble-ood-vote"] = ["ensemble", "--ood", "ood", "--combine", "vote", *syn["ood-mnli"]]
    cmds["ensemble-ood-scores"] = ["ensemble", "--ood", "ood", "--scores", "nll,mutual_information", "--size", "2",
                                   *syn["ood-mnli"]]
    cmds["ensemble-ood-unpaired"] = ["ensemble", "--ood", "ood", *syn["ood-mnli"][:-1]]
    return cmds


def main(frozen: str, dest: str) -> None:
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="analysis-outputs-"))
    syn_folder = Path(frozen) / "synthetic"
    syn_folder.mkdir(exist_ok=True)
    syn = synthetic(syn_folder)
    os.chdir(frozen)
    result = {}
    for name, args in commands(Path(frozen), syn, scratch).items():
        got = run(*args)
        result[name] = {k: v.replace(str(scratch), "<scratch>") if isinstance(v, str) else v for k, v in got.items()}
    for name in ("sub.tsv", "sub-stsb.tsv"):
        if (scratch / name).exists():
            result[f"file:{name}"] = (scratch / name).read_text()
    Path(dest).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    codes = {}
    for r in result.values():
        if isinstance(r, dict):
            codes[r["code"]] = codes.get(r["code"], 0) + 1
    print(f"{dest}: {len(result)} outputs; exit codes {codes}", file=sys.stderr)


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
