"""``stats`` at the paper's scale: 20 seeds x 5 schemes on 1,725 evaluation examples (MRPC's test-set size), one
process, through the real CLI.

    python benchmarks/bench_stats.py [--seeds 20] [--examples 1725] [--resamples 1000]

Writes synthetic logits artifacts (binary like MRPC and regression like STS-B; members of a seed correlated across
schemes) to a temporary folder, then times:
- ``stats --groups 2 --test paper --plot fig3.png``: Table 1 and Figure 3 (k = 1..10), no resampling;
- ``stats --groups 2`` (the default permutation test, 1,000 permutations, for ensembles and single members);
- ``stats --groups 2 --bootstrap 1000`` as well.
Prints one JSON line per measurement (seconds) on stdout.

    python benchmarks/bench_stats.py --scores-vs REV [--seeds 20] [--examples 1725] [--resamples 1000]

The cost of ``stats --score NAME`` (#33) as a user runs it, MRPC-shaped: commit REV's ``stats --groups 2``
(checked out into a temporary git worktree, run with it on PYTHONPATH in a fresh Python) against this checkout's
with each directed classification metric, one run each, in one session.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_members(folder: Path, task: str, seeds: int, examples: int) -> list[str]:
    import numpy as np

    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(0)
    regression = task == "stsb"
    labels = (rng.uniform(0, 5, examples).astype(np.float32) if regression
              else rng.integers(0, 2, examples).astype(np.int64))
    signal = labels - 2.5 if regression else (2 * labels - 1) * 0.8
    paths = []
    seed_effect = [rng.normal(0, 1, examples) for _ in range(seeds)]
    for scheme in ("dense", "bagging", "base", "active", "random"):
        for s in range(seeds):
            z = 0.7 * seed_effect[s] + 0.7 * rng.normal(0, 1, examples)
            m = signal + 1.2 * z
            outputs = m[:, None] if regression else np.stack([np.zeros(examples), m], -1)
            meta = {"task": task, "split": "dev", "data_fingerprint": "d", "model_fingerprint": "m",
                    "seed": str(s + 1), "policy": scheme}
            tensors = {"outputs": outputs.astype(np.float32), "ids": np.arange(examples), "labels": labels}
            paths.append(str(write_artifact(folder / f"{task}-{scheme}-s{s + 1}.safetensors", "logits", tensors,
                                            meta)))
    return paths


def timed(*args) -> float:
    from ticketctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            if e.code:
                raise RuntimeError(err.getvalue()) from None
    return time.perf_counter() - start


SCORED = ("nll", "brier", "ece", "adaptive_ece", "aurc", "eaurc", "ts_nll", "ts_ece")


def scores_vs(rev: str, seeds: int, examples: int, resamples: int) -> None:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_members(Path(tmp), "mrpc", seeds, examples)
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "-q", "--detach", str(base_tree), rev], check=True)
        try:
            def run(tree: Path, extra: list[str]) -> float:
                cmd = [sys.executable, "-m", "ticketctl", "stats", *paths, "--groups", "2", "--resamples",
                       str(resamples), "--format", "tsv", *extra]
                start = time.perf_counter()
                # cwd: ``python -m`` puts the working folder first on sys.path; from the repository root both runs
                # imported this checkout's package (before 2026-12-06)
                subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(tree)}, check=True, cwd=tmp,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return time.perf_counter() - start

            base = run(base_tree, [])
            print(json.dumps({"run": f"{rev}: stats --groups 2", "seconds": round(base, 2)}), flush=True)
            for name in ("", *SCORED):
                seconds = run(root, ["--score", name] if name else [])
                print(json.dumps({"run": f"stats --groups 2 {'--score ' + name if name else ''}".strip(),
                                  "seconds": round(seconds, 2), "vs_rev": round(seconds / base, 1)}), flush=True)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(base_tree)], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--examples", type=int, default=1725)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--scores-vs", metavar="REV")
    args = ap.parse_args()
    if args.scores_vs:
        return scores_vs(args.scores_vs, args.seeds, args.examples, args.resamples)
    with tempfile.TemporaryDirectory() as tmp:
        for task in ("mrpc", "stsb"):
            paths = write_members(Path(tmp), task, args.seeds, args.examples)
            runs = {
                "table+fig3 (k=1..10), paper test": ["--test", "paper", "--plot", Path(tmp) / f"{task}.png"],
                f"permutation test ({args.resamples})": ["--resamples", args.resamples],
                f"permutation + bootstrap ({args.resamples})": ["--resamples", args.resamples, "--bootstrap",
                                                                args.resamples],
            }
            for name, extra in runs.items():
                seconds = timed("stats", *paths, "--groups", "2", "--format", "tsv", *extra)
                print(json.dumps({"task": task, "run": name, "seeds": args.seeds, "schemes": 5,
                                  "examples": args.examples, "seconds": round(seconds, 2)}))
                sys.stdout.flush()


if __name__ == "__main__":
    main()
