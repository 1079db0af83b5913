"""The cost of ``ensemble --size 2-5 --scores ...`` against the same table without ``--scores`` (#33), in one run:
20 seeded binary members x 2,000 examples (21,679 combinations of 2 to 5 members), scored in process by
``ticketctl.analysis.ensemble.size_table`` (what ``ensemble --size`` runs once the artifacts are read).

    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py                 # the groups below
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py nll,brier,ece   # given lists
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py --ks 2,3 ...    # fewer sizes (a quick look)
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py --cli 0baf9cb   # the command, against a commit
    flock /tmp/ticketctl-cpu.lock python benchmarks/bench_scores.py --ood 8d2918f   # ensemble --ood, against a commit
    cd /tmp && flock /tmp/ticketctl-cpu.lock python /work/wt31/benchmarks/bench_scores.py --cli 0baf9cb \
        --fit-sample 0 ts_nll,ts_ece                                                   # also with --fit-sample 0

``--cli REV``: the whole command as a user runs it (``ticketctl ensemble --size 2-5 [--scores ...]`` in a fresh
Python over 20 logits artifacts written to a temporary folder), this checkout against commit REV (checked out into
a temporary git worktree and run with it on PYTHONPATH), best of 3 each; the groups and ``all``. These runs use
every core, as a user's would (no OMP_NUM_THREADS). ``--fit-sample N[,N...]`` after REV: each list (not ``all``)
is also run with ``ensemble --fit-sample N`` (the temperature-fitted metrics' sample of combinations; 0: all).

``--ood REV``: the same members with their outputs on 2,000 other texts (split ``ood``, paired by run config),
``ensemble --size 2-5 --format json`` without and with ``--ood ood``, this checkout against REV, best of 3 each, and
whether the two print the same bytes.

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


def write_members(folder: Path, m: int = 20, n: int = 2000, ood: int = 0) -> list[str]:
    """The synthetic members of :func:`members` as logits artifacts in ``folder``; with ``ood`` > 0 also each
    member's outputs on ``ood`` other texts (split ``ood``, flatter logits, its own random stream), paired with its
    dev artifact by the run config, as ``ensemble --ood ood`` reads them (dev paths first, then the OOD ones)."""
    from ticketctl.store.artifacts import write_artifact

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, n)
    paths = []
    for i in range(m):
        outputs = (np.eye(2)[labels] * 2 + rng.normal(0, 2, (n, 2))).astype(np.float32)
        meta = {"task": "mrpc", "split": "dev", "data_fingerprint": "d1", "model_fingerprint": "m1", "seed": str(i),
                "policy": "dense", "config": {"task": "mrpc", "seed": i}}
        paths.append(str(write_artifact(folder / f"m{i:02d}.safetensors", "logits",
                                        {"outputs": outputs, "ids": np.arange(n), "labels": labels}, meta)))
    other = np.random.default_rng(1)
    for i in range(m if ood else 0):
        outputs = other.normal(0, 1.5, (ood, 2)).astype(np.float32)
        meta = {"task": "mrpc", "split": "ood", "data_fingerprint": "d2", "model_fingerprint": "m1", "seed": str(i),
                "policy": "dense", "config": {"task": "mrpc", "seed": i}}
        paths.append(str(write_artifact(folder / f"ood{i:02d}.safetensors", "logits",
                                        {"outputs": outputs, "ids": np.arange(ood)}, meta)))
    return paths


class Trees:
    """This checkout and commit ``rev`` (checked out into a temporary git worktree), each run as a fresh
    ``python -m ticketctl`` with its tree on PYTHONPATH and every core (no OMP_NUM_THREADS), as a user's would.
    The commands run in a scratch folder: ``python -m`` puts the working folder first on sys.path, so run from the
    repository root both would import this checkout's package (the ``--cli`` runs before 2026-12-06 did)."""

    def __init__(self, rev: str, tmp: Path):
        import subprocess

        self.root = Path(__file__).resolve().parent.parent
        self.rev, self.base, self.scratch = rev, tmp / "base", tmp / "cwd"
        self.scratch.mkdir()
        subprocess.run(["git", "-C", str(self.root), "worktree", "add", "-q", "--detach", str(self.base), rev],
                       check=True)

    def run(self, tree: Path, args: list[str]) -> tuple[float, bytes]:
        """(seconds, stdout) of ``ticketctl ARGS`` with ``tree``'s code."""
        import subprocess

        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONPATH"] = str(tree)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "ticketctl", *args], env=env, check=True, cwd=self.scratch,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start, done.stdout

    def check(self) -> None:
        """Each tree's command imports that tree's package (SystemExit otherwise)."""
        import subprocess

        for tree in (self.base, self.root):
            env = {**os.environ, "PYTHONPATH": str(tree)}
            got = subprocess.run([sys.executable, "-c", "import ticketctl; print(ticketctl.__file__)"], env=env,
                                 cwd=self.scratch, check=True, capture_output=True, text=True).stdout.strip()
            if not got.startswith(str(tree)):
                raise SystemExit(f"with PYTHONPATH={tree} the package imported is {got}")

    def best(self, tree: Path, args: list[str], times: int = 3) -> tuple[float, bytes]:
        runs = [self.run(tree, args) for _ in range(times)]
        return min(t for t, _ in runs), runs[0][1]

    def close(self) -> None:
        import subprocess

        subprocess.run(["git", "-C", str(self.root), "worktree", "remove", "--force", str(self.base)], check=False)


def cli(rev: str, lists: list[str], fit_samples: list[list[str]] = ()) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_members(Path(tmp) / "members")
        trees = Trees(rev, Path(tmp))
        try:
            trees.check()
            base = trees.best(trees.base, ["ensemble", "--size", "2-5", *paths])[0]
            here = trees.best(trees.root, ["ensemble", "--size", "2-5", *paths])[0]
            print(f"`ticketctl ensemble --size 2-5`, 20 members x 2,000 examples: {rev}: {base:.2f} s; "
                  f"this checkout: {here:.2f} s")
            for spec, extra in [*((s, e) for s in lists for e in [[], *fit_samples]), ("all", [])]:
                s = trees.best(trees.root, ["ensemble", "--size", "2-5", "--scores", spec, *extra, *paths])[0]
                print(f"{' '.join(['--scores', spec, *extra])}: {s:.2f} s = {s / base:.1f}x {rev}", flush=True)
        finally:
            trees.close()


def cli_ood(rev: str, n_ood: int = 2000) -> None:
    """``--ood REV``: ``ensemble --size 2-5`` over the 20 members, without and with ``--ood ood`` (their outputs
    on ``n_ood`` other texts), this checkout against REV, best of 3 each; checks that both print the same table
    (``--format json``, every digit)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = write_members(Path(tmp) / "members", ood=n_ood)
        dev = [p for p in paths if not Path(p).name.startswith("ood")]
        trees = Trees(rev, Path(tmp))
        try:
            trees.check()
            for what, args in (("without --ood", dev), ("--ood ood", ["--ood", "ood", *paths])):
                cmd = ["ensemble", "--size", "2-5", "--format", "json", *args]
                (base, out_base), (here, out_here) = trees.best(trees.base, cmd), trees.best(trees.root, cmd)
                same = "same output" if out_base == out_here else "OUTPUT DIFFERS"
                print(f"`ensemble --size 2-5 {what}`, 20 members x 2,000 dev (+ {n_ood:,} OOD) examples: {rev}: "
                      f"{base:.2f} s; this checkout: {here:.2f} s ({base / here:.2f}x faster; {same})", flush=True)
        finally:
            trees.close()


def main(argv: list[str]) -> None:
    from ticketctl.analysis.ensemble import size_table

    if argv[:1] == ["--cli"]:
        rev, argv = argv[1], argv[2:]
        fit_samples = []
        if argv[:1] == ["--fit-sample"]:
            fit_samples, argv = [["--fit-sample", n] for n in argv[1].split(",")], argv[2:]
        return cli(rev, argv or GROUPS, fit_samples)
    if argv[:1] == ["--ood"]:
        return cli_ood(argv[1])

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
