"""Do the analytic FLOPs of ``ticketctl.model.cost`` track real time? CPU latency of the default model physically
pruned to each structured level, on one fixed batch, against the FLOPs the cost record gives it, in one run.

For each level: a structured ticket of that level (heads and FFN sublayers chosen at random, seeded: the cost
depends on how many are kept, not which), pruned physically as ``finetune`` trains and ``predict`` runs it; the
median of ``--reps`` forward passes (after ``--warmup``) over the same batch of MRPC dev examples, padded
dynamically as ticketctl pads; the analytic FLOPs of that batch (per example at its own length: no padding). Prints
per level the relative analytic cost, the relative measured latency (both against the dense model) and their
ratio; 1.0 means the analytic cost predicts the speed-up exactly.

    python benchmarks/bench_cost.py [--levels 0,0.1,0.3,0.5,0.7] [--batch 64] [--reps 15] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from ticketctl.data import files
from ticketctl.data.batching import collate, encode
from ticketctl.data.tasks import get_task
from ticketctl.masks.structured import StructuredMask, ticket
from ticketctl.model import loading
from ticketctl.model.cost import Dims, flops_per_example
from ticketctl.model.units import prune_physically


def measure(levels: list[float], batch: int, reps: int, warmup: int) -> list[dict]:
    task = get_task("mrpc")
    _, folder = loading.resolve_model(None)
    tokenizer = loading.load_tokenizer(folder)
    dev = files.load_split(task, "dev")
    enc = encode(tokenizer, dev.subset(np.arange(batch)), 128)
    idx = np.arange(batch)
    device = torch.device("cpu")
    rows = []
    for level in levels:
        torch.manual_seed(0)
        model = loading.load_model(folder, 2, None, loading.attention_for("cpu")).eval()
        d = Dims.of(model.config)
        if level > 0:
            rng = np.random.default_rng(0)
            mask = ticket(np.zeros((d.layers, d.heads)), np.zeros(d.layers), level, "random", rng)
            prune_physically(model, mask)
        else:
            mask = StructuredMask(np.ones((d.layers, d.heads), bool), np.ones(d.layers, bool))
        inputs = collate(enc, idx, tokenizer.pad_token_id or 0, device)
        times = []
        with torch.inference_mode():
            for i in range(warmup + reps):
                start = time.perf_counter()
                model(**inputs)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        flops = flops_per_example(d, mask.heads.sum(axis=1), mask.ffn, enc.lengths) * batch
        rows.append({"level": level, "heads_kept": int(mask.heads.sum()), "ffn_kept": int(mask.ffn.sum()),
                     "gflops": flops / 1e9, "ms": statistics.median(times) * 1e3,
                     "ms_iqr": float(np.subtract(*np.percentile(times, [75, 25]))) * 1e3})
    dense = rows[0]
    for r in rows:
        r["analytic"] = r["gflops"] / dense["gflops"]
        r["measured"] = r["ms"] / dense["ms"]
        r["ratio"] = r["analytic"] / r["measured"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="0,0.1,0.3,0.5,0.7")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [float(x) for x in args.levels.split(",")]
    if levels[0] != 0:
        levels = [0.0] + levels
    rows = measure(levels, args.batch, args.reps, args.warmup)
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "rows": rows}))
        return
    print(f"# default model, {args.batch} MRPC dev examples, fp32, {torch.get_num_threads()} threads, median of "
          f"{args.reps}")
    print("| level | heads kept | FFN kept | GFLOPs (analytic) | ms (measured) | analytic x dense | measured x dense | "
          "analytic / measured |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['level']:.0%} | {r['heads_kept']} | {r['ffn_kept']} | {r['gflops']:.2f} | {r['ms']:.1f} "
              f"(IQR {r['ms_iqr']:.1f}) | {r['analytic']:.3f} | {r['measured']:.3f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
