"""Run a protocol plan: find which jobs are finished already (from the artifacts' identities, the config-hash names
of ``ticketctl.store.paths``, under every hardware variant the plan allows: :class:`Locator`), run the others on an
executor, and return what every member is. Nothing here picks a device: each job decides its own where it runs.

Each job calls the library function its command calls (:func:`ticketctl.stages.imp.search`,
:func:`ticketctl.stages.finetune.run_finetune` with the job's ``FinetuneSpec``) with the plan's options, so a member
made here is the one ``search`` and ``finetune`` make with the same options. A job holds a lock named by its
identity under the first variant (``filelock``, ``OUT/protocol/locks``; the same whatever hardware runs it) while it
runs, so two protocol runs on one ``--out`` never train the same member at once: the second waits and then reuses the
first one's artifact.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ticketctl.analysis import ensemble as ensemble_stage
from ticketctl.errors import InputError, NoLabels, TicketError, UsageError
from ticketctl.log import Log
from ticketctl.protocol import executors
from ticketctl.protocol.plan import Job, Plan
from ticketctl.stages import imp
from ticketctl.stages import finetune as finetune_stage
from ticketctl.stages import structured as structured_stage

PROTOCOL_DIR = "protocol"  # inside --out: job logs, locks, the journal, Slurm's job folders


def protocol_dir(plan: Plan) -> Path:
    return plan.run.out / PROTOCOL_DIR


@dataclass
class State:
    """What is known of the plan's jobs before running: each job's artifacts where they can be named (a ticket's
    finetune needs its mask, an ACTIVE-LT search the earlier masks), and which are finished. ``targets`` holds, for a
    finished job, the artifacts found (whatever hardware made them, :mod:`ticketctl.protocol.hardware`), for the
    others what a job run on this machine would write (a dry run's guess); ``found`` the variant
    (precision, dropout stream) each finished job was found under."""

    jobs: dict[str, Job]
    targets: dict[str, list[Path]] = field(default_factory=dict)  # job id -> artifact paths (search: the mask)
    done: set[str] = field(default_factory=set)
    found: dict[str, tuple[str, str]] = field(default_factory=dict)  # finished job -> (precision, dropout stream)
    also: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # finished job -> other variants present

    @property
    def todo(self) -> list[str]:
        return [j for j in self.jobs if j not in self.done]


def _quiet(plan: Plan) -> Plan:
    return replace(plan, run=replace(plan.run, quiet=True, verbose=False))


class Locator:
    """The names a plan's jobs write, computed without deciding any hardware: the task's data and model are loaded
    once (no device is picked, so a login node without a GPU plans GPU jobs), and each job's artifact names are
    computed for every variant :func:`ticketctl.protocol.hardware.variants` allows. Raises UsageError for a plan
    whose data cannot make a report (no labels), InputError for unreadable inputs."""

    def __init__(self, plan: Plan):
        from ticketctl.log import Log
        from ticketctl.stages.context import Context
        from ticketctl.store import atomic, paths

        from ticketctl.protocol.hardware import local_variant, variants

        self.plan = plan
        try:
            ctx = Context.create(plan.task, plan.run.model, plan.data, Log(True, False))
        except NoLabels as e:
            raise UsageError(str(e)) from None
        if ctx.evals and ctx.evals[0].labels is None:
            raise UsageError(f"{ctx.evals[0].source}: the {ctx.evals[0].name} split has no labels; the protocol's "
                             f"report scores members on it (give a labelled --validation-file)")
        plan.check_report_scores(ctx.task.is_regression)  # own data: its labels say which kind of task it is
        ctx = replace(ctx, cache_dir=plan.run.out / paths.CACHE_DIR, report_to=plan.run.report_to)
        replace(plan.train, precision="fp32").validate()
        atomic.ensure_writable(plan.run.out)
        dropout = plan.train.dropout
        self.variants = variants(plan.run.device, plan.train.precision, dropout)
        self.here = local_variant(plan.run.device, plan.train.precision, dropout)
        self._ctx = {v: (replace(ctx, dropout_stream=v[1]), replace(plan.train, precision=v[0]),
                         replace(plan.search_train, precision=v[0])) for v in self.variants}
        self._scoring = {}  # --distill-from's finetunes: the context whose evaluation splits end with the training file
        if plan.distill_from is not None:
            scoring = replace(Context.create(plan.task, plan.run.model, plan.teacher_data, Log(True, False)),
                              cache_dir=ctx.cache_dir, report_to=ctx.report_to)
            self._scoring = {v: replace(scoring, dropout_stream=v[1]) for v in self.variants}

    def named(self, job: Job, known: dict, done: set, variant: tuple[str, str]) -> list[Path] | None:
        """The artifacts ``job`` writes when computed with ``variant``; None while an input (a mask) is missing."""
        ctx, cfg, search_cfg = self._ctx[variant]
        ctx = self._scoring[variant] if job.scores_train else ctx
        return kind_of(job).targets(self.plan, job, ctx, cfg, search_cfg, known, done)

    def find(self, job: Job, known: dict, done: set) -> tuple[list[Path] | None, tuple[str, str] | None, list]:
        """(paths, variant, other variants present) of ``job``'s finished artifacts under the first variant that has
        them all; (None, None, []) when none has or an input is missing."""
        kind = kind_of(job).artifact
        hits = []
        for v in self.variants:
            paths = self.named(job, known, done, v)
            if paths is None:
                return None, None, []
            if all(_existing(p, kind) for p in paths):
                hits.append((paths, v))
        if not hits:
            return None, None, []
        return hits[0][0], hits[0][1], [v for _, v in hits[1:]]

    def key(self, job: Job, known: dict, done: set) -> str:
        """A name of the job that no hardware changes (its artifact's name under the first variant): its lock."""
        return self.named(job, known, done, self.variants[0])[0].name


def locate(plan: Plan) -> State:
    """The plan's jobs with their targets and finished ones, computed without training and without deciding any
    hardware (loads the task's data and fingerprints the model once): the same on every machine."""
    loc = Locator(plan)
    state = State(plan.jobs_graph())
    for job in state.jobs.values():
        paths, variant, also = loc.find(job, state.targets, state.done)
        if paths is not None:
            state.targets[job.id], state.found[job.id] = paths, variant
            state.done.add(job.id)
            if also:
                state.also[job.id] = also
            continue
        guess = loc.named(job, state.targets, state.done, loc.here)
        if guess is not None:
            state.targets[job.id] = guess
    return state


def _existing(path: Path, kind: str) -> bool:
    from ticketctl.store.artifacts import existing

    return existing(path, kind) is not None


class JobKind:
    """How the protocol plans and runs one kind of job, in one place: :meth:`targets`, the artifact paths it writes
    (computed without training, on any machine; None while an input it reads is unfinished), and :meth:`run`, the
    library call its command makes. ``artifact`` is the kind of artifact it writes. A new kind of job is one
    subclass and one entry in :data:`KINDS` (and its jobs in ``Plan.jobs_graph``)."""

    artifact = "logits"

    def targets(self, plan: Plan, job: Job, ctx, cfg, search_cfg, known: dict, done: set) -> list[Path] | None:
        raise NotImplementedError

    def run(self, plan: Plan, job: Job, known: dict) -> list[Path]:
        raise NotImplementedError


class _StructuredSearch(JobKind):
    """``search --method structured`` (Super Tickets): one mask per level."""

    artifact = "mask"

    def targets(self, plan, job, ctx, cfg, search_cfg, known, done):
        spec = structured_stage.StructuredSpec(plan.task, job.seed, levels=plan.levels, data=plan.data, run=plan.run)
        return structured_stage.targets(spec, ctx, cfg)

    def run(self, plan, job, known):
        return structured_stage.structured_search(plan.task, job.seed, levels=plan.levels, train=plan.train,
                                                  data=replace(plan.data, eval_files=[]), run=plan.run)


class _ImpSearch(JobKind):
    """``search`` by IMP (base, random, active: ACTIVE-LT's priors are its earlier searches' masks)."""

    artifact = "mask"

    @staticmethod
    def _priors(job: Job, known: dict) -> list[str]:
        return ["none"] if job.scheme == "active" and not job.priors else [str(known[p][0]) for p in job.priors]

    def targets(self, plan, job, ctx, cfg, search_cfg, known, done):
        if any(p not in done for p in job.priors):
            return None
        spec = imp.SearchSpec(plan.task, job.seed, policy=job.scheme, sparsity=plan.sparsity,
                              prune_step=plan.prune_step, l1=plan.l1, priors=self._priors(job, known), data=plan.data,
                              run=plan.run)
        return [imp.target(spec, ctx, search_cfg)]

    def run(self, plan, job, known):
        return [imp.search(plan.task, job.seed, policy=job.scheme, sparsity=plan.sparsity,
                           prune_step=plan.prune_step, l1=plan.l1, priors=self._priors(job, known),
                           train=plan.search_train, data=replace(plan.data, eval_files=[]), run=plan.run)]


class _Teacher(JobKind):
    """A distilled scheme's teacher: ``ensemble --combine probs --out OUT`` of its members' outputs on the
    training file."""

    def targets(self, plan, job, ctx, cfg, search_cfg, known, done):
        if any(d not in done for d in job.deps):
            return None
        return [ensemble_stage.ensemble_path(_teacher_members(job, known), plan.run.out)]

    def run(self, plan, job, known):
        ens = ensemble_stage.ensemble(_teacher_members(job, known), "probs")
        return [ensemble_stage.write_ensemble(ens, plan.run.out)]


class _Finetune(JobKind):
    """``finetune``: dense, bagging, a ticket (its search's mask), or a student (its teacher job's artifact)."""

    def targets(self, plan, job, ctx, cfg, search_cfg, known, done):
        if any(d not in done for d in (job.mask, job.teacher) if d is not None):
            return None
        return finetune_stage.targets(_finetune_spec(plan, job, known), ctx, cfg)

    def run(self, plan, job, known):
        return finetune_stage.run_finetune(_finetune_spec(plan, job, known))


def _finetune_spec(plan: Plan, job: Job, known: dict) -> finetune_stage.FinetuneSpec:
    """A finetune job's spec, the one its planner's targets and its run both follow: the job's mask (its search's
    artifact), bagging fraction and teacher, the plan's options (a member of ``--distill-from``'s scheme also scores
    the training file)."""
    return finetune_stage.FinetuneSpec(
        plan.task, job.seed, mask=str(known[job.mask][job.mask_index]) if job.mask is not None else None,
        bagging=_bagging(plan, job), train=plan.train, data=plan.teacher_data if job.scores_train else plan.data,
        run=plan.run, distill=_distill(plan, job, known))


KINDS: dict[str, JobKind] = {"structured-search": _StructuredSearch(), "search": _ImpSearch(),
                             "teacher": _Teacher(), "finetune": _Finetune()}


def kind_of(job: Job) -> JobKind:
    """The one dispatch on a job's kind (a structured search is a search of the ``structured`` scheme)."""
    return KINDS["structured-search" if job.kind == "search" and job.scheme == "structured" else job.kind]


def _bagging(plan: Plan, job: Job) -> float:
    return plan.bagging if job.trained_as == "bagging" else 1.0


def _distill(plan: Plan, job: Job, known: dict):
    """A student's distillation options (its teacher job's artifact), else None."""
    return None if job.teacher is None else plan.distill(str(known[job.teacher][0]))


def _teacher_members(job: Job, known: dict) -> list[str]:
    """A teacher job's members' outputs on the training file: the last evaluation split of each member finetune."""
    return [str(known[d][-1]) for d in job.deps]


# ---------------------------------------------------------------------------------------------- one job


def run_job(plan: Plan, job_id: str, threads: int | None = None) -> dict:
    """Run one job of ``plan`` in this process (an executor's worker, or a Slurm job): resolve its inputs (masks of
    finished searches), take the lock of its identity, and call ``search`` / ``finetune``. Logs go to
    ``OUT/protocol/logs/TASK-JOB.log``. Returns ``{"job", "paths", "seconds", "ran", "device", "pid"}``; ``ran`` is
    False when the artifact was finished already (another run made it). Raises what the stage raises."""
    job = plan.jobs_graph()[job_id]
    pdir = protocol_dir(plan)
    log_path = executors.job_log(pdir, job)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run = replace(plan.run, threads=threads if threads is not None else plan.run.threads, quiet=False)
    plan = replace(plan, run=run)
    with _stderr_to(log_path):
        _journal(pdir, job.id, "start", task=plan.task)
        try:
            return _run_job(plan, job, pdir, run)
        except SystemExit:  # submitit ends a job it requeued (Slurm's USR2) this way: no failure, it starts again
            sys.stderr.write(f"ticketctl: {job.id}: stopped by Slurm's signal (requeued: it starts again)\n")
            raise
        except BaseException as e:  # the log ends with why the job failed (the parent reports its path)
            import traceback

            if not isinstance(e, TicketError):
                traceback.print_exc(file=sys.stderr)
            sys.stderr.write(f"ticketctl: error: {job.id}: {e}\n")
            raise


def _run_job(plan: Plan, job: Job, pdir: Path, run) -> dict:
    start = time.perf_counter()
    loc = Locator(plan)
    known: dict[str, list[Path]] = {}
    done: set[str] = set()
    graph = plan.jobs_graph()
    for dep in _inputs(graph, job):  # the masks this job reads, earliest first, whatever hardware made them
        paths, _, _ = loc.find(graph[dep], known, done)
        if paths is None:
            raise InputError(f"{job.id}: its input {dep} is not finished (run the protocol again)")
        known[dep], _ = paths, done.add(dep)
    locks = pdir / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with job_lock(locks / f"{loc.key(job, known, done)}.lock"):
        found, variant, _ = loc.find(job, known, done)
        ran = found is None
        if found is not None:  # made by another run, maybe on other hardware: the planner finds it there too
            sys.stderr.write(f"{job.id}: finished already ({variant[0]}, {variant[1]}): reusing "
                             + ", ".join(str(p) for p in found) + "\n")
            written = found
        else:
            written = kind_of(job).run(plan, job, known)
    seconds = time.perf_counter() - start
    result = {"job": job.id, "paths": [str(p) for p in written], "seconds": round(seconds, 2), "ran": ran,
              "pid": os.getpid(), "threads": run.threads, **_made_on(written[0])}
    _journal(pdir, job.id, "done", task=plan.task, ran=ran, seconds=round(seconds, 2), device=result["device"],
             precision=result["precision"], stream=result["stream"])
    return result


class job_lock:
    """The lock a job holds while it runs: ``filelock.FileLock`` (``flock``: the kernel releases it when its process
    dies, on any node), or, on a file system without ``flock`` (NFS without lockd, Lustre mounted without
    ``flock``: ENOSYS, ENOLCK, EOPNOTSUPP), a lock file made with ``O_EXCL`` (``PATH.owner``) that names its owner
    (host, pid, Slurm job). An owner lock is stale, and is removed, when its process is gone from this host or its
    Slurm job has left the queue, so a lock left by a killed job does not hang a rerun. The same with every
    ``filelock`` the project allows (4.x falls back by itself; 3.x raises, and this falls back). ``timeout``
    (seconds, None: wait for ever) raises TimeoutError."""

    FALLBACK = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP}

    def __init__(self, path: Path, timeout: float | None = None, poll: float = 1.0):
        self.path, self.timeout, self.poll = Path(path), timeout, poll
        self._lock = None
        self.owner = Path(str(path) + ".owner")

    def __enter__(self):
        from filelock import FileLock

        lock = FileLock(str(self.path))
        try:
            lock.acquire(timeout=-1 if self.timeout is None else self.timeout)
            self._lock = lock
            return self
        except (NotImplementedError, OSError) as e:
            if isinstance(e, TimeoutError) or isinstance(e, OSError) and e.errno not in self.FALLBACK:
                raise
        self._acquire_owner_file()
        return self

    def _acquire_owner_file(self) -> None:
        import socket

        me = f"{socket.gethostname()} {os.getpid()} {os.environ.get('SLURM_JOB_ID', '')}".strip()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fd = os.open(self.owner, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, (me + "\n").encode())
                os.close(fd)
                return
            except FileExistsError:
                if _stale(self.owner):
                    self.owner.unlink(missing_ok=True)
                    continue
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{self.owner}: held by {self.owner.read_text().strip()}")
            time.sleep(self.poll)

    def __exit__(self, *exc):
        if self._lock is not None:
            self._lock.release()
        else:
            self.owner.unlink(missing_ok=True)


def _stale(owner: Path) -> bool:
    """An owner lock file whose process is gone from this host, or whose Slurm job Slurm no longer runs."""
    import socket

    try:
        host, pid, *job = owner.read_text().split()
    except (OSError, ValueError):
        return False  # being written, or unreadable: not ours to break
    if job:
        states = executors.queue_states(job) if executors.shutil.which("squeue") else None
        if states is not None:
            return states.get(job[0], ("", ""))[0] not in executors.ACTIVE_STATES
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def _made_on(path) -> dict:
    """Where an artifact was computed, from its own record: device type, precision, dropout stream."""
    from ticketctl.store.artifacts import read_artifact
    from ticketctl.train.seeds import CPU_STREAM

    try:
        meta = read_artifact(path).meta
    except Exception:  # noqa: BLE001 - a record for the report, not a reason to fail a finished job
        return {"device": "-", "precision": "-", "stream": "-"}
    config = meta.get("config") or {}
    return {"device": (meta.get("runtime") or {}).get("device", "-"), "precision": config.get("precision", "fp32"),
            "stream": config.get("dropout_stream", CPU_STREAM)}


def _inputs(graph: dict[str, Job], job: Job) -> list[str]:
    """The jobs whose artifacts ``job`` reads, earliest first: the search jobs whose masks it reads (and, for an
    ACTIVE-LT prior, that prior's own priors first); a teacher's member finetunes (and their masks' searches); a
    student's teacher (after the teacher's own inputs)."""
    if job.kind == "teacher":
        wanted = [i for d in job.deps for i in [*_inputs(graph, graph[d]), d]]
    else:
        wanted = list(job.priors) + ([job.mask] if job.mask else [])
        wanted = [i for w in wanted for i in [*graph[w].priors, w]]
        if job.teacher is not None:
            wanted += [*_inputs(graph, graph[job.teacher]), job.teacher]
    order: list[str] = []
    for w in wanted:
        if w not in order:
            order.append(w)
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
            if job.kind == "finetune" and job.id in self.state.done:
                out.setdefault(job.scheme, []).append(self.state.targets[job.id][0])
        return out

    def masks(self) -> dict[str, list[Path]]:
        """Ticket scheme -> the mask each member is finetuned from, in the order of ``--seeds`` (searches whose mask
        path is known: finished ones, and those whose name needs no earlier mask)."""
        out: dict[str, list[Path]] = {}
        for job in self.state.jobs.values():
            if job.kind == "finetune" and job.mask is not None and job.mask in self.state.done:
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


def status(plan: Plan, state: State) -> list[str]:
    """``--status``: one line per job, ``JOB  STATE  SLURM_ID``, where STATE is ``done``, the Slurm state of the job
    an earlier run submitted (``PENDING (Reason)``, ``RUNNING``, ...) while Slurm holds it, else ``todo``; then
    ``N done, M in Slurm, K to run``. Reads ``OUT/protocol/slurm-jobs.tsv`` and ``squeue`` for those ids only."""
    recorded = executors.recorded_jobs(protocol_dir(plan), plan.task)
    ids = [recorded[j] for j in [*state.todo, executors.REPORT_JOB] if j in recorded]
    queue = (executors.queue_states(ids) or {}) if ids and executors.shutil.which("squeue") else {}
    lines, held = [], 0
    for job in state.jobs:
        slurm_id = recorded.get(job, "-")
        if job in state.done:
            word = "done"
        elif slurm_id in queue:
            held += 1
            word = _queue_word(*queue[slurm_id])
        else:
            word = "todo"
        lines.append(f"{job}\t{word}\t{slurm_id}")
    report_id = recorded.get(executors.REPORT_JOB)
    if report_id in queue:  # a detached run's report job, still to run
        lines.append(f"{executors.REPORT_JOB}\t{_queue_word(*queue[report_id])}\t{report_id}")
    lines.append(f"{len(state.done)} done, {held} in Slurm, {len(state.todo) - held} to run")
    return lines


def _queue_word(state: str, reason: str) -> str:
    """``PENDING (Reason)`` for a pending job whose reason Slurm has set (``None`` until its first scheduling pass),
    else the state alone."""
    return state + (f" ({reason})" if state == "PENDING" and reason not in ("", "None") else "")


def report_job(plan: Plan, write_report) -> str:
    """A detached run's report (a Slurm job that starts after every job of the plan has ended): locate the members
    and write the report with ``write_report`` (``protocol.report.write_report``, given by the caller: the runner
    stands below the report in the import levels). Returns report.md's path. Raises TicketError, naming them, where
    jobs are unfinished (one failed: rerun the protocol)."""
    state = locate(plan)
    if state.todo:
        raise TicketError(f"no report: {len(state.todo)} job(s) unfinished ({', '.join(state.todo)}); run the "
                          f"protocol again")
    outcome = Outcome(state, {}, {}, 0.0, "-", "the report job of a detached run")
    path = write_report(plan, outcome, outcome.members(), outcome.masks())
    sys.stderr.write(f"{path}\n")
    return str(path)


def detach(plan: Plan, write_report, log=None) -> list[tuple[str, str]]:
    """``--detach``: submit every unfinished job of ``plan`` (re-attaching those an earlier run submitted that Slurm
    still holds) and the report as a job that runs after them all (:func:`report_job` with ``write_report``,
    ``protocol.report.write_report``), and return without waiting:
    ``[(protocol job, Slurm id), ..., ("report", id)]``. Raises UsageError for an executor whose jobs cannot outlive
    the command, TicketError for a refused submission."""
    log = log or Log()
    check(plan, detach=True)
    pdir = protocol_dir(plan)
    pdir.mkdir(parents=True, exist_ok=True)
    state = locate(plan)
    log.info(f"protocol: {len(state.jobs)} jobs, {len(state.todo)} to run, {len(state.done)} done")
    report = functools.partial(report_job, write_report=write_report)  # pickled by name for the Slurm job
    return executors.get(plan.executor).detach(plan, state.jobs, state.todo, run_job, report, pdir, log)


def cancel(plan: Plan) -> list[str]:
    """``--cancel``: ``scancel`` every job an earlier run of this plan submitted (``OUT/protocol/slurm-jobs.tsv``)
    that Slurm still holds. Returns the ``JOB=SLURM_ID`` pairs cancelled. Raises UsageError without Slurm."""
    executors.check_slurm()
    recorded = executors.recorded_jobs(protocol_dir(plan), plan.task)
    queue = executors.queue_states(list(recorded.values())) or {}
    held = [(j, i) for j, i in recorded.items() if queue.get(i, ("", ""))[0] in executors.ACTIVE_STATES]
    if held:
        executors.subprocess.run(["scancel", *[i for _, i in held]], capture_output=True)
    return [f"{j}={i}" for j, i in held]


def check(plan: Plan, detach: bool = False) -> None:
    """What the plan's executor needs of this machine, checked before anything is located or trained: Slurm's
    commands and controller (``--executor slurm``), the GPU ``--device cuda[:N]`` names (``--executor local``: the
    jobs run here); with ``detach``, an executor whose jobs outlive the command. Raises UsageError, one line."""
    ex = executors.get(plan.executor)
    if detach and not ex.detaches:
        raise UsageError(f"--detach belongs to an executor whose jobs outlive the command (--executor "
                         f"{', '.join(n for n, e in executors.EXECUTORS.items() if e.detaches)})")
    ex.check(plan)
    _check_writable(Path(plan.report), "--report")


def _check_writable(folder: Path, option: str) -> None:
    """``folder`` can be made and written (its nearest existing ancestor is a writable folder), checked without
    creating anything. Raises UsageError, one line."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{option} {folder}: {probe} is not a folder, so the report cannot be written there")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {folder}: {probe} is not writable")


def run_plan(plan: Plan, log=None, state: State | None = None) -> Outcome:
    """Run every job of ``plan`` that is not finished (``state``: :func:`locate`'s, when the caller has it already),
    on its executor; then locate the artifacts again.
    Failed jobs are listed in ``Outcome.failures`` (the others still run); raises UsageError for an executor that
    cannot start (no Slurm) and TicketError for a refused submission."""
    log = log or Log()
    pdir = protocol_dir(plan)
    check(plan)  # before anything else: one line where the executor cannot run this plan here
    pdir.mkdir(parents=True, exist_ok=True)
    state = state if state is not None else locate(plan)
    start = time.perf_counter()
    log.info(f"protocol: {len(state.jobs)} jobs, {len(state.todo)} to run, {len(state.done)} done")
    results, failures, workers = executors.get(plan.executor).run(plan, state.jobs, state.todo, state.done, run_job,
                                                                  pdir, log)
    seconds = time.perf_counter() - start
    return Outcome(locate(plan), results, failures, seconds, _devices(results), workers)


def _devices(results: dict[str, dict]) -> str:
    return ",".join(sorted({f"{r['device']} {r['precision']}" for r in results.values()}) or ["-"])


class TaskJobs:
    """``work`` for the jobs of several plans run as one (one plan per ``--task``): a job is named by its
    :attr:`~ticketctl.protocol.plan.Job.key` (``rte:finetune:dense:s1``) and runs with its own task's plan
    (:func:`run_job`); the plan the executor passes (the plans' shared options) is not used. Picklable."""

    def __init__(self, plans: list[Plan]):
        self.plans = {p.task: p for p in plans}

    def __call__(self, plan: Plan, key: str, threads: int | None = None) -> dict:
        for task, mine in self.plans.items():
            if task and key.startswith(f"{task}:"):
                return run_job(mine, key[len(task) + 1:], threads)
        raise KeyError(f"{key}: no such task's job")


def run_plans(plans: list[Plan], log=None, states: list[State] | None = None) -> list[Outcome]:
    """Run the unfinished jobs of several plans (one per ``--task``; they share ``--out`` and the executor's options)
    as one run on their executor: every task's jobs are started, or submitted to Slurm, before anything is waited
    for, and a failed job stops only the jobs that need it. Returns each plan's :class:`Outcome`, as
    :func:`run_plan` does (``seconds`` is the whole run's wall time); one plan is :func:`run_plan`. Raises as
    :func:`run_plan`."""
    if len(plans) == 1:
        return [run_plan(plans[0], log, states[0] if states else None)]
    log = log or Log()
    for p in plans:
        check(p)
    pdir = protocol_dir(plans[0])
    pdir.mkdir(parents=True, exist_ok=True)
    states = states if states is not None else [locate(p) for p in plans]
    jobs: dict[str, Job] = {}
    todo: list[str] = []
    done: set[str] = set()
    for state in states:  # every task's jobs under their keys (TASK:JOB), dependencies too
        for job in state.jobs.values():
            jobs[job.key] = replace(job, id=job.key, deps=tuple(state.jobs[d].key for d in job.deps), task=None)
        todo += [state.jobs[j].key for j in state.todo]
        done |= {state.jobs[j].key for j in state.done}
    start = time.perf_counter()
    log.info(f"protocol: {len(plans)} tasks, {len(jobs)} jobs, {len(todo)} to run, {len(done)} done")
    shared = replace(plans[0], task="+".join(p.task for p in plans))  # the options they share; names Slurm's array
    results, failures, workers = executors.get(shared.executor).run(shared, jobs, todo, done, TaskJobs(plans), pdir,
                                                                    log)
    seconds = time.perf_counter() - start
    outcomes = []
    for plan, state in zip(plans, states):
        keys = {j: job.key for j, job in state.jobs.items()}
        mine = {j: results[k] for j, k in keys.items() if k in results}
        outcomes.append(Outcome(locate(plan), mine, {j: failures[k] for j, k in keys.items() if k in failures},
                                seconds, _devices(mine), workers))
    return outcomes


__all__ = ["Outcome", "State", "TaskJobs", "cancel", "describe", "detach", "locate", "report_job", "run_job",
           "run_plan", "run_plans", "status", "TicketError"]
