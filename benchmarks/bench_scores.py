"""The cost of ``ensemble --size 2-5 --scores ...`` against the same table without ``--scores`` (#33), in one run:
20 seeded binary members x 2,000 examples (21,679 combinations of 2 to 5 members), scored in process by
``ticketctl.analysis.ensemble.size_table`` (what ``ensemble --size`` runs once the artifacts are read).

    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py                 # the groups below
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py nll,brier,ece   # given lists
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py --ks 2,3 ...    # fewer sizes (a quick look)
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py --cli 0baf9cb   # the command, against a commit

``--cli REV``: the whole command as a user runs it (``ticketctl ensemble --size 2-5 [--scores ...]`` in a fresh
Python over 20 logits artifacts written to a temporary folder), this checkout against commit REV (checked out into
a temporary git worktree and run with it on PYTHONPATH), best of 3 each; the groups and ``all``. These runs use
every core, as a user's would (no OMP_NUM_THREADS).

Prints one line per list: seconds (baseline: best of 2; a list: one run, baseline included) and its ratio to the
baseline. One thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

GROUPS = ["nll,brier,ece", "total_entropy,expected_entropy,mutual_information", "adaptive_ece,aurc,eaurc",
          "ts_nll,ts_ece"]


def members(m: int = 20, n: int = 2000):
    from ticketctl.analysis.members import Members
    from ticketctl.data.tasks import get_task
    from ticketctl.store.artifacts import Artifact

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    outputs = np.eye(2)[labels] * 2 + rng.normal(0, 2, (m, n, 2))
    arts = [Artifact(Path(f"m{i}.safetensors"), {"kind": "logits", "seed": str(i)}, {}, "") for i in range(m)]
    return Members(get_task("mrpc"), "dev", arts, outputs, labels, np.arange(n))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def write_members(folder: Path, m: int = 20, n: int = 2000) -> list[str]:
    """The synthetic members of :func:`members` as logits artifacts in ``folder``."""
    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    paths = []
    for i in range(m):
        outputs = (np.eye(2)[labels] * 2 + rng.normal(0, 2, (n, 2))).astype(np.float32)
        meta = {"task": "mrpc", "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": str(i),
                "policy": "dense"}
        paths.append(str(write_artifact(folder / f"m{i:02d}.safetensors", "logits",
                                        {"outputs": outputs, "ids": np.arange(n), "labels": labels}, meta)))
    return paths


def cli(rev: str, lists: list[str]) -> None:
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_members(tmp / "members")
        base_tree = tmp / "base"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "-q", "--detach", str(base_tree), rev], check=True)
        try:
            def run(tree: Path, extra: list[str]) -> float:
                env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # every core, as a user's
                env["PYTHONPATH"] = str(tree)
                cmd = [sys.executable, "-m", "ticketctl", "ensemble", "--size", "2-5", *extra, *paths]
                start = time.perf_counter()
                subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                return time.perf_counter() - start

            base = min(run(base_tree, []) for _ in range(3))
            here = min(run(root, []) for _ in range(3))
            print(f"`ticketctl ensemble --size 2-5`, 20 members x 2,000 examples: {rev}: {base:.2f} s; "
                  f"this checkout: {here:.2f} s")
            for spec in [*lists, "all"]:
                s = min(run(root, ["--scores", spec]) for _ in range(3))
                print(f"--scores {spec}: {s:.2f} s = {s / base:.1f}x {rev}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(base_tree)], check=False)


def main(argv: list[str]) -> None:
    from ticketctl.analysis.ensemble import size_table

    if argv[:1] == ["--cli"]:
        return cli(argv[1], argv[2:] or GROUPS)

    ks = [2, 3, 4, 5]
    if argv[:1] == ["--ks"]:
        ks, argv = [int(k) for k in argv[1].split(",")], argv[2:]
    lists = argv or GROUPS
    m = members()
    base = min(timed(lambda: size_table(m, ks, "probs")) for _ in range(2))
    print(f"baseline (no --scores), k={ks}: {base:.2f} s")
    for spec in lists:
        names = spec.split(",")
        s = timed(lambda: size_table(m, ks, "probs", scores=names))
        print(f"--scores {spec}: {s:.2f} s = {s / base:.1f}x baseline", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
