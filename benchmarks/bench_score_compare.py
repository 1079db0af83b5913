"""The cost of one seed test by a registered metric (``stats --score NAME``, the protocol report's probability
calibration section) at the paper's shape: 2 schemes x 20 paired seeds, 408 binary examples (MRPC's dev split),
k = 5 in two groups (every combination, as the report's test), 199 permutations, through
``significance.compare``. Each metric is timed with the scorer that
remembers the ensembles it has scored (``MetricScorer``, today) and with one that scores every ensemble of every
permutation afresh (the reference, as before the cache), in one run, and the p-values and intervals of the two are
checked equal.

    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_score_compare.py                 # nll, ece, ts_nll
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_score_compare.py ts_ece          # given metrics

Prints one line per metric: seconds without and with the cache, and their ratio. One thread (OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402


def members(seeds: int = 20, n: int = 408, seed: int = 0):
    """(outputs (2 * seeds, n, 2), labels (n,)): two schemes' members, a shared example effect and noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    example = rng.normal(0, 1.5, n)
    margin = (2 * labels - 1) * 1.2 + example
    outputs = np.zeros((2 * seeds, n, 2), dtype=np.float32)
    outputs[..., 1] = margin + rng.normal(0, 1.0, (2 * seeds, n))
    return outputs, labels


def main(argv: list[str]) -> None:
    from ticketctl.analysis.metrics import MetricScorer
    from ticketctl.analysis.significance import compare
    from ticketctl.data.tasks import get_task

    class Afresh(MetricScorer):
        """The reference: every ensemble of every permutation scored again."""

        def scores(self, weights, examples=None):
            weights = np.asarray(weights, dtype=np.float64)
            if not len(weights):
                return np.zeros(0)
            x = self.x if examples is None else self.x[:, examples]
            labels = self.labels if examples is None else self.labels[examples]
            return self._compute(weights, x, labels)

    outputs, labels = members()
    task = get_task("mrpc")
    a, b = list(range(20)), list(range(20, 40))
    for name in argv or ["nll", "ece", "ts_nll"]:
        results, seconds = [], []
        for cls in (Afresh, MetricScorer):
            start = time.perf_counter()
            results.append(compare(cls(task, outputs, labels, name), a, b, 5, 2, paired=True, resamples=199,
                                   limit=None))
            seconds.append(time.perf_counter() - start)
        same = all(np.isclose(getattr(results[0], f), getattr(results[1], f), rtol=1e-12, atol=1e-15)
                   for f in ("diff", "low", "high", "p"))
        print(f"{name}: {seconds[0]:.2f} s afresh, {seconds[1]:.2f} s remembered = {seconds[0] / seconds[1]:.1f}x "
              f"faster; same p and interval: {same} (p={results[1].p:.3f})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
