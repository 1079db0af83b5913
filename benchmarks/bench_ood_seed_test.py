"""The seed test on out-of-distribution scores (``stats --ood``, the report's OOD section; docs/calibration.md "The
seed test on an OOD score"): its level under the null, by simulation, and its cost at the paper's scale.

Null: two schemes' members from one distribution, 8 paired seeds (a seed's two members share a seed effect, every
member an example effect), 150 evaluation and 100 OOD examples; 3 classes (the OOD texts flatter), or STS-B-shaped
regression outputs (the OOD texts' predictions spread more); 199 permutations per test; how often p < 0.05 and how
often the 95% jackknife interval holds 0.

Cost: the report's tests (every OOD column, ensembles at k = 5 in 2 seed groups and single members, 1,000
permutations) of 4 schemes x 20 seeds against BASELINE's 20, 408 evaluation and 1,000 OOD examples, 2 classes.

    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_ood_seed_test.py              # 200 simulations
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_ood_seed_test.py --sims 50    # a quicker look

One thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from ticketctl.analysis import ood  # noqa: E402
from ticketctl.analysis.significance import compare  # noqa: E402
from ticketctl.data.tasks import get_task  # noqa: E402

NULL = (("auroc_msp", 3), ("fpr95_entropy", 3), ("auroc_mi", 3), ("auroc_msp", 1))
NULL_REGRESSION = (("auroc_spread", 3), ("fpr95_spread", 3))


@dataclasses.dataclass
class Sides:
    """What ``ood.Paired.inside`` needs of ``Members``: the task, one entry per member, the outputs."""

    task: object
    arts: list
    outputs: np.ndarray

    def __len__(self) -> int:
        return len(self.arts)


def simulate(rng, regression: bool, n: int = 8, n_in: int = 150, n_out: int = 100) -> ood.Paired:
    """Scheme B = members 0..n-1, scheme A = n..2n-1, from one distribution."""
    c = 1 if regression else 3
    gold = rng.uniform(0, 5, (n_in, 1)) if regression else np.eye(3)[rng.integers(0, 3, n_in)] * 2.5
    hard_in, hard_out = rng.normal(0, 1, (n_in, c)), rng.normal(0, 1, (n_out, c))
    seed_in = [rng.normal(0, 1, (n_in, c)) for _ in range(n)]
    seed_out = [rng.normal(0, 1, (n_out, c)) for _ in range(n)]
    spread_in, spread_out = (0.3, 0.6) if regression else (0.7, 0.7)
    xi, xo = [], []
    for _ in range(2):
        for s in range(n):
            xi.append(gold + hard_in + spread_in * (seed_in[s] + rng.normal(0, 1, (n_in, c))))
            xo.append((2.5 if regression else 0) + 1.5 * hard_out + spread_out * (seed_out[s]
                                                                                   + rng.normal(0, 1, (n_out, c))))
    task = get_task("stsb" if regression else "mnli")
    return ood.Paired(Sides(task, list(range(2 * n)), np.array(xi)), np.array(xo), "ood")


def null(sims: int) -> None:
    for regression, configs in ((False, NULL), (True, NULL_REGRESSION)):
        rng = np.random.default_rng(1)
        rejected, covered, start = dict.fromkeys(configs, 0), dict.fromkeys(configs, 0), time.perf_counter()
        for i in range(sims):
            scorer = ood.OodScorer(simulate(rng, regression), configs[0][0])
            for column, k in configs:
                c = compare(scorer.column(column), list(range(8, 16)), list(range(8)), k, 1, True, 199, seed=i)
                rejected[column, k] += c.p < 0.05
                covered[column, k] += c.low <= 0 <= c.high
        for (column, k) in configs:
            print(f"{column} k={k}: p < 0.05 in {100 * rejected[column, k] / sims:.1f}%, interval holds 0 in "
                  f"{100 * covered[column, k] / sims:.1f}% ({sims} simulations, {time.perf_counter() - start:.1f} s "
                  f"for the {'regression' if regression else 'classification'} ones)")


def cost() -> None:
    rng = np.random.default_rng(0)
    members = 100
    x_in, x_out = rng.normal(0, 2, (members, 408, 2)), rng.normal(0, 1, (members, 1000, 2))
    for regression in (False, True):
        task = get_task("stsb" if regression else "mrpc")
        sides = Sides(task, list(range(members)), x_in[..., :1] if regression else x_in)
        scorer = ood.OodScorer(ood.Paired(sides, x_out[..., :1] if regression else x_out, "ood"),
                               ood.task_columns(regression, 5)[0])
        start, ref = time.perf_counter(), list(range(20))
        for s in range(1, 5):
            a = list(range(20 * s, 20 * s + 20))
            for column in ood.task_columns(regression, 5):
                compare(scorer.column(column), a, ref, 5, 2, True, 1000)
                if column in ood.task_columns(regression, 1):
                    compare(scorer.column(column), a, ref, 1, 1, True, 1000)
        print(f"{'regression' if regression else 'classification'}: the report's OOD tests of 4 schemes x "
              f"{len(ood.task_columns(regression, 5))} columns in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sims = int(sys.argv[sys.argv.index("--sims") + 1]) if "--sims" in sys.argv else 200
    null(sims)
    cost()
