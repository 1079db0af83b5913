"""The seed test of ``stats --score NAME`` under the null, by simulation (docs/calibration.md "The seed test on a
calibration metric"): the false-positive rate of the permutation test over seeds at alpha 0.05, and how often the
95% jackknife interval holds 0, when two schemes' members come from one distribution and are compared by a
registered metric of probabilities (lower is better: nll, brier, ece), or of regression outputs (gaussian_nll,
spread_error_corr: :func:`simulate_regression`).

The members are ``tests/test_significance.simulate``'s (a binary task, 300 examples, 8 paired seeds, members
sharing an example effect and, within a seed, a seed effect), the configurations those of docs/statistics.md's
simulation of the headline metric: k = 3 in one group, k = 1, k = 2 in two groups; 199 permutations per test.

    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_score_null.py                  # 200 simulations each
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_score_null.py --sims 50 nll    # a quicker look
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_score_null.py gaussian_nll spread_error_corr  # regression

Prints one line per (metric, k, groups): rejections, coverage, seconds. One thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402

CONFIGS = ((3, 1), (1, 1), (2, 2))  # (k, groups), as docs/statistics.md's simulation


def simulate_regression(rng, n: int = 8, examples: int = 300, corr: float = 0.5):
    """STS-B-shaped members under the null: gold scores in [0, 5]; each member predicts gold + an example effect
    (shared by all members) + 0.6 x (a seed effect shared by the seed's two members, and member noise, mixed by
    ``corr``); scheme B = members 0..n-1, scheme A = n..2n-1, from one distribution. Returns (None, outputs
    (2n, examples, 1), gold)."""
    gold = rng.uniform(0, 5, examples)
    difficulty = rng.normal(0, 0.5, examples)
    seed_effect = [rng.normal(0, 1.0, examples) for _ in range(n)]
    outputs = [gold + difficulty + 0.6 * (np.sqrt(corr) * seed_effect[s] + np.sqrt(1 - corr) * rng.normal(0, 1.0,
                                                                                                        examples))
               for _ in range(2) for s in range(n)]
    return None, np.array(outputs)[..., None], gold


REGRESSION = ("gaussian_nll", "spread_error_corr")


def null_rates(name: str, k: int, groups: int, sims: int, seed: int = 0) -> tuple[int, int]:
    """(rejections at p < 0.05, intervals holding 0) in ``sims`` null comparisons by metric ``name``."""
    from test_significance import TASK, simulate

    from ticketctl.analysis.metrics import MetricScorer
    from ticketctl.analysis.significance import compare
    from ticketctl.data.tasks import get_task

    task, draw = (get_task("stsb"), simulate_regression) if name in REGRESSION else (TASK, simulate)
    rng = np.random.default_rng(seed)
    rejected = covered = 0
    for i in range(sims):
        _, outputs, labels = draw(rng)
        c = compare(MetricScorer(task, outputs, labels, name), list(range(8, 16)), list(range(8)), k, groups,
                    paired=True, resamples=199, seed=i)
        rejected += c.p < 0.05
        covered += c.low <= 0 <= c.high
    return rejected, covered


def main(argv: list[str]) -> None:
    sims = 200
    if argv[:1] == ["--sims"]:
        sims, argv = int(argv[1]), argv[2:]
    for name in argv or ["nll", "brier", "ece"]:
        for k, groups in CONFIGS:
            if name == "spread_error_corr" and k == 1:
                continue  # one member has no spread
            start = time.perf_counter()
            rejected, covered = null_rates(name, k, groups, sims)
            print(f"{name}\tk={k}\tgroups={groups}\trejected {rejected}/{sims} = {rejected / sims:.1%}\tinterval "
                  f"holds 0 {covered}/{sims} = {covered / sims:.1%}\t{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
