"""Members per hour of ``ticketctl protocol`` on this machine: 1 job x all cores vs one job per core (1 thread each).

    python benchmarks/bench_protocol.py                      # the default model on 256 MRPC pairs, 1 epoch
    python benchmarks/bench_protocol.py --tiny               # a tiny BERT built in code (process start-up dominates)

Each layout runs the same plan (seeds 1-4, dense and RANDOM-LT: 4 dense finetunes, 4 searches of 3 IMP rounds,
4 ticket finetunes) into a fresh folder and prints the report's wall time and members per hour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    tiny = "--tiny" in sys.argv
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = ["--max-train-samples", "256", "--max-eval-samples", "128", "--epochs", "1"]
        if tiny:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from conftest import build_tiny_bert, write_glue

            extra = ["--model", str(build_tiny_bert(Path(tmp) / "tiny")), "--data-dir",
                     str(write_glue(Path(tmp) / "glue")), "--epochs", "1", "--batch-size", "8"]
        for jobs, threads in ((1, cores), (cores, 1)):
            folder = Path(tmp) / f"{jobs}x{threads}"
            folder.mkdir()
            cmd = [sys.executable, "-m", "ticketctl", "protocol", "--task", "mrpc", "--seeds", "1-4", "--schemes",
                   "dense,random", "--size", "2-3", "--jobs", str(jobs), "--threads", str(threads), "--device", "cpu",
                   "--precision", "fp32", "--resamples", "199", "--quiet", *extra]
            subprocess.run(cmd, cwd=folder, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
            run = json.loads((folder / "report" / "report.json").read_text())["run"]
            print(f"{jobs} job(s) x {threads} thread(s): {run['members_trained']} members in "
                  f"{run['wall_seconds']:.1f} s = {run['members_per_hour']:.0f} members/hour ({run['machine']})")


if __name__ == "__main__":
    main()
