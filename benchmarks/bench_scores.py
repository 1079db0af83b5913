"""The cost of ``ensemble --size 2-5 --scores ...`` against the same table without ``--scores`` (#33), in one run:
20 seeded binary members x 2,000 examples (21,679 combinations of 2 to 5 members), scored in process by
``ticketctl.analysis.ensemble.size_table`` (what ``ensemble --size`` runs once the artifacts are read).

    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py                 # the groups below
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py nll,brier,ece   # given lists
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py --ks 2,3 ...    # fewer sizes (a quick look)

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


def main(argv: list[str]) -> None:
    from ticketctl.analysis.ensemble import size_table

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
