"""Run a protocol plan: find which jobs are finished already (from the artifacts' identities, the config-hash names
of ``ticketctl.store.paths``), run the others on an executor, and return what every member is.

Each job calls the library function its command calls (:func:`ticketctl.stages.imp.search`,
:func:`ticketctl.stages.finetune.finetune`) with the plan's options, so a member made here is the one ``search`` and
``finetune`` make with the same options. A job holds a per-identity lock (``filelock``, ``OUT/protocol/locks``)
while it runs, so two protocol runs on one ``--out`` never train the same member at once: the second waits and then
reuses the first one's artifact.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ticketctl.errors import InputError, NoLabels, TicketError, UsageError
from ticketctl.log import Log
from ticketctl.protocol import executors
from ticketctl.protocol.plan import Job, Plan
from ticketctl.stages import context, imp
from ticketctl.stages import finetune as finetune_stage
from ticketctl.stages import structured as structured_stage

PROTOCOL_DIR = "protocol"  # inside --out: job logs, locks, the journal, Slurm's job folders


def protocol_dir(plan: Plan) -> Path:
    return plan.run.out / PROTOCOL_DIR


@dataclass
class State:
    """What is known of the plan's jobs before running: each job's target artifacts where they can be computed (a
    ticket's finetune needs its mask, an ACTIVE-LT search the earlier masks), and which are finished."""

    jobs: dict[str, Job]
    targets: dict[str, list[Path]] = field(default_factory=dict)  # job id -> artifact paths (search: the mask)
    done: set[str] = field(default_factory=set)

    @property
    def todo(self) -> list[str]:
        return [j for j in self.jobs if j not in self.done]


def _quiet(plan: Plan) -> Plan:
    return replace(plan, run=replace(plan.run, quiet=True, verbose=False))


def locate(plan: Plan) -> State:
    """The plan's jobs with their targets and finished ones, computed without training (loads the task's data and
    fingerprints the model once)."""
    ctx, cfg = _checked_start(plan)
    search_cfg = replace(cfg, epochs=plan.search_train.epochs)
    state = State(plan.jobs_graph())
    for job in state.jobs.values():
        paths = _job_targets(plan, job, ctx, cfg, search_cfg, state.targets, state.done)
        if paths is None:
            continue
        state.targets[job.id] = paths
        kind = "mask" if job.kind == "search" else "logits"
        if all(_existing(p, kind) for p in paths):
            state.done.add(job.id)
    return state


def _checked_start(plan: Plan):
    """The task's context and config, or a UsageError (a bad plan, exit 2, before anything trains) where its data
    cannot make a report: no labels in the training split or in the split members are scored on. Other input
    errors (an unreadable file, a model folder without weights) stay InputError (exit 3), as in every command."""
    try:
        ctx, cfg, _ = context.start(plan.task, plan.train, plan.data, _quiet(plan).run, data_parallel=False)
    except NoLabels as e:
        raise UsageError(str(e)) from None
    if ctx.evals and ctx.evals[0].labels is None:
        raise UsageError(f"{ctx.evals[0].source}: the {ctx.evals[0].name} split has no labels; the protocol's report "
                         f"scores members on it (give a labelled --validation-file)")
    return ctx, cfg


def _existing(path: Path, kind: str) -> bool:
    from ticketctl.store.artifacts import existing

    return existing(path, kind) is not None


def _job_targets(plan: Plan, job: Job, ctx, cfg, search_cfg, known: dict, done: set) -> list[Path] | None:
    """The artifact paths ``job`` writes, or None while an input it depends on (a mask) is not finished."""
    out = plan.run.out
    subset = plan.data.subset_seed
    if job.kind == "search" and job.scheme == "structured":
        return structured_stage.targets(ctx, cfg, job.seed, out, plan.levels, subset_seed=subset)
    if job.kind == "search":
        if any(p not in done for p in job.priors):
            return None
        priors = ["none"] if job.scheme == "active" and not job.priors else [str(known[p][0]) for p in job.priors]
        return [imp.target(ctx, search_cfg, job.seed, out, policy=job.scheme, sparsity=plan.sparsity,
                           prune_step=plan.prune_step, l1=plan.l1, prior_paths=priors, subset_seed=subset)]
    if job.mask is not None:
        if job.mask not in done:
            return None
        return finetune_stage.targets(ctx, cfg, job.seed, out, mask_path=str(known[job.mask][job.mask_index]),
                                      subset_seed=subset)
    bagging = plan.bagging if job.scheme == "bagging" else 1.0
    return finetune_stage.targets(ctx, cfg, job.seed, out, bagging=bagging, subset_seed=subset)


# ---------------------------------------------------------------------------------------------- one job


def run_job(plan: Plan, job_id: str, threads: int | None = None) -> dict:
    """Run one job of ``plan`` in this process (an executor's worker, or a Slurm job): resolve its inputs (masks of
    finished searches), take the lock of its identity, and call ``search`` / ``finetune``. Logs go to
    ``OUT/protocol/logs/JOB.log``. Returns ``{"job", "paths", "seconds", "ran", "device", "pid"}``; ``ran`` is
    False when the artifact was finished already (another run made it). Raises what the stage raises."""
    job = plan.jobs_graph()[job_id]
    pdir = protocol_dir(plan)
    log_path = executors.job_log(pdir, job)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run = replace(plan.run, threads=threads if threads is not None else plan.run.threads, quiet=False)
    plan = replace(plan, run=run)
    with _stderr_to(log_path):
        _journal(pdir, job.id, "start")
        try:
            return _run_job(plan, job, pdir, run)
        except BaseException as e:  # the log ends with why the job failed (the parent reports its path)
            import sys
            import traceback

            if not isinstance(e, TicketError):
                traceback.print_exc(file=sys.stderr)
            sys.stderr.write(f"ticketctl: error: {job.id}: {e}\n")
            raise


def _run_job(plan: Plan, job: Job, pdir: Path, run) -> dict:
    from filelock import FileLock

    start = time.perf_counter()
    state_ctx = context.start(plan.task, plan.train, plan.data, _quiet(plan).run)
    ctx, cfg, device = state_ctx
    search_cfg = replace(cfg, epochs=plan.search_train.epochs)
    known: dict[str, list[Path]] = {}
    done: set[str] = set()
    graph = plan.jobs_graph()
    for dep in _inputs(graph, job):  # the masks this job reads, earliest first
        paths = _job_targets(plan, graph[dep], ctx, cfg, search_cfg, known, done)
        if paths is None or not all(_existing(p, "mask") for p in paths):
            raise InputError(f"{job.id}: its input {dep} is not finished (run the protocol again)")
        known[dep], _ = paths, done.add(dep)
    targets = _job_targets(plan, job, ctx, cfg, search_cfg, known, done)
    locks = pdir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{targets[0].name}.lock")):
        kind = "mask" if job.kind == "search" else "logits"
        ran = not all(_existing(p, kind) for p in targets)
        if job.kind == "search" and job.scheme == "structured":
            written = structured_stage.structured_search(plan.task, job.seed, levels=plan.levels, train=plan.train,
                                                         data=replace(plan.data, eval_files=[]), run=plan.run)
        elif job.kind == "search":
            priors = ["none"] if job.scheme == "active" and not job.priors else [str(known[p][0])
                                                                                  for p in job.priors]
            written = [imp.search(plan.task, job.seed, policy=job.scheme, sparsity=plan.sparsity,
                                  prune_step=plan.prune_step, l1=plan.l1, priors=priors, train=plan.search_train,
                                  data=replace(plan.data, eval_files=[]), run=plan.run)]  # as `search` takes it
        else:
            written = finetune_stage.finetune(
                plan.task, job.seed, mask=str(known[job.mask][job.mask_index]) if job.mask else None,
                bagging=plan.bagging if job.scheme == "bagging" else 1.0, train=plan.train, data=plan.data,
                run=plan.run)
    seconds = time.perf_counter() - start
    result = {"job": job.id, "paths": [str(p) for p in written], "seconds": round(seconds, 2), "ran": ran,
              "device": str(device), "pid": os.getpid(), "threads": run.threads}
    _journal(pdir, job.id, "done", ran=ran, seconds=round(seconds, 2))
    return result


def _inputs(graph: dict[str, Job], job: Job) -> list[str]:
    """The search jobs whose masks ``job`` reads (and, for an ACTIVE-LT prior, that prior's own priors first)."""
    wanted = list(job.priors) + ([job.mask] if job.mask else [])
    order: list[str] = []
    for w in wanted:
        for p in [*graph[w].priors, w]:
            if p not in order:
                order.append(p)
    return order


class _stderr_to:
    """Send this process's stderr (file descriptor 2: Python's and native libraries') to a log file while a job
    runs; restored afterwards (a local worker runs many jobs)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import sys

        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = open(self.path, "a", encoding="utf-8")
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        import sys

        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.close()


def _journal(pdir: Path, job: str, event: str, **fields) -> None:
    """One JSON line per job start and end in ``OUT/protocol/journal.jsonl`` (appended in one write, so concurrent
    workers' lines never interleave): which process ran what, when, and whether it trained."""
    line = json.dumps({"job": job, "event": event, "time": round(time.time(), 3), "pid": os.getpid(), **fields})
    fd = os.open(pdir / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- the plan


@dataclass
class Outcome:
    """A protocol run: the jobs, those finished before it, what it ran, what failed, and its wall time."""

    state: State
    results: dict[str, dict]  # job id -> run_job's result
    failures: dict[str, str]  # job id -> one line: why, and where its log is
    seconds: float
    device: str
    workers: str  # e.g. "2 jobs x 1 thread"

    def members(self) -> dict[str, list[Path]]:
        """Scheme (``Plan.member_schemes``) -> dev logits path of each member, in the order of ``--seeds`` (members
        whose path is known)."""
        out: dict[str, list[Path]] = {}
        for job in self.state.jobs.values():
            if job.kind == "finetune" and job.id in self.state.targets:
                out.setdefault(job.scheme, []).append(self.state.targets[job.id][0])
        return out

    def masks(self) -> dict[str, list[Path]]:
        """Ticket scheme -> the mask each member is finetuned from, in the order of ``--seeds`` (searches whose mask
        path is known: finished ones, and those whose name needs no earlier mask)."""
        out: dict[str, list[Path]] = {}
        for job in self.state.jobs.values():
            if job.kind == "finetune" and job.mask is not None and job.mask in self.state.targets:
                out.setdefault(job.scheme, []).append(self.state.targets[job.mask][job.mask_index])
        return out


def describe(state: State) -> list[str]:
    """Dry-run lines: ``JOB  done|todo  deps  target`` in dependency order (target ``-`` where an input is
    missing), then ``N to run, M done``."""
    lines = []
    for job in state.jobs.values():
        status = "done" if job.id in state.done else "todo"
        target = state.targets.get(job.id)
        lines.append("\t".join([job.id, status, ",".join(job.deps) or "-", str(target[0]) if target else "-"]))
    lines.append(f"{len(state.todo)} to run, {len(state.done)} done")
    return lines


def run_plan(plan: Plan, log=None, state: State | None = None) -> Outcome:
    """Run every job of ``plan`` that is not finished (``state``: :func:`locate`'s, when the caller has it already),
    on its executor; then locate the artifacts again.
    Failed jobs are listed in ``Outcome.failures`` (the others still run); raises UsageError for an executor that
    cannot start (no Slurm) and TicketError for a refused submission."""
    log = log or Log()
    pdir = protocol_dir(plan)
    if plan.executor == "slurm":
        executors.check_slurm()  # before anything else: one line where there is no Slurm
    pdir.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else locate(plan)
    start = time.perf_counter()
    log.info(f"protocol: {len(state.jobs)} jobs, {len(state.todo)} to run, {len(state.done)} done")
    if plan.executor == "slurm":
        results, failures, workers = executors.run_slurm(plan, state.jobs, state.todo, state.done, run_job, pdir, log)
    else:
        results, failures, workers = executors.run_local(plan, state.jobs, state.todo, state.done, run_job, pdir, log)
    seconds = time.perf_counter() - start
    final = locate(plan)
    devices = sorted({r["device"] for r in results.values()}) or ["-"]
    return Outcome(final, results, failures, seconds, ",".join(devices), workers)


__all__ = ["Outcome", "State", "describe", "locate", "run_job", "run_plan", "TicketError"]
