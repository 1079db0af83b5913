"""``stats --cost --score NAME`` at the paper's scale: the cost frontier by a registered metric against the same
frontier by the task's headline metric, one process, through the real CLI.

    python benchmarks/bench_score_frontier.py [--seeds 20] [--examples 408] [--scores nll,brier,ece,ts_nll]

Writes synthetic MRPC-shaped logits artifacts (5 schemes x seeds, members of a seed correlated across schemes, as
``bench_stats.py``; RANDOM-LT members recorded at 0.6 of a dense member's cost, the others at 1.0) to a temporary
folder, then times ``stats --by policy --cost --groups 2`` without ``--score`` and with each score (after one
untimed small call, so that imports are not counted). Prints one JSON
line per measurement (seconds) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stats import timed  # noqa: E402  (the CLI in this process, timed)

COSTS = {"dense": 1.0, "bagging": 1.0, "base": 1.0, "active": 1.0, "random": 0.6}


def write_members(folder: Path, seeds: int, examples: int) -> list[str]:
    import numpy as np

    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, examples).astype(np.int64)
    signal = (2 * labels - 1) * 0.8
    seed_effect = [rng.normal(0, 1, examples) for _ in range(seeds)]
    paths = []
    for scheme, cost in COSTS.items():
        for s in range(seeds):
            m = signal + 1.2 * (0.7 * seed_effect[s] + 0.7 * rng.normal(0, 1, examples))
            meta = {"task": "mrpc", "split": "dev", "data_fingerprint": "d", "model_fingerprint": "m",
                    "seed": str(s + 1), "policy": scheme,
                    "cost": {"relative_flops": cost, "flops_per_example": 2e10 * cost, "params": 1, "nonzero_params": 1,
                             "mean_tokens": 50.0}}
            tensors = {"outputs": np.stack([np.zeros(examples), m], -1).astype(np.float32),
                       "ids": np.arange(examples), "labels": labels}
            paths.append(str(write_artifact(folder / f"mrpc-{scheme}-s{s + 1}.safetensors", "logits", tensors, meta)))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--examples", type=int, default=408)
    ap.add_argument("--scores", default="nll,brier,ece,ts_nll")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_members(Path(tmp), args.seeds, args.examples)
        timed("stats", *paths[:: len(paths) // 10], "--cost", "--format", "tsv")  # imports, not timed below
        for score in [None, *args.scores.split(",")]:
            extra = [] if score is None else ["--score", score]
            seconds = timed("stats", *paths, "--cost", "--groups", "2", "--format", "tsv", *extra)
            print(json.dumps({"score": score or "headline (accuracy)", "seeds": args.seeds, "schemes": len(COSTS),
                              "examples": args.examples, "seconds": round(seconds, 2)}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
