"""Where a protocol's jobs run: worker processes on this machine (``--executor local``; a worker that dies fails
only its job) or Slurm through submitit (``--executor slurm``). Both take the job graph, the ids to run and
``work(plan, job_id, threads) -> dict`` (a module-level function, so it pickles), and return ``(results, failures,
workers)``: each finished job's result, one line per failed job naming its log, and how the work was spread.

A job whose dependency failed is not run; it is listed as failed ("dependency failed"). The others go on.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from dataclasses import dataclass, fields
from typing import Optional

from ticketctl.errors import TicketError, UsageError
from ticketctl.hparams import option


def cores() -> int:
    """CPU cores this process may use (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


JOB_MEMORY_GB = 3  # a default-model search or finetune peaks at 2.3 GB resident (benchmarks/README.md "Memory")


def gpu_ids(n_gpus: int, env: dict | None = None) -> list[str]:
    """The ids of the ``n_gpus`` GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` names them for a child process:
    the inherited value's entries (indices, ``GPU-`` UUIDs or ``MIG-`` ids, in its order; a Slurm allocation of GPUs
    4 and 5 gives ``["4", "5"]``), or ``0..n-1`` where it is not set."""
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return [str(i) for i in range(n_gpus)]
    return [t.strip() for t in value.split(",") if t.strip()][:n_gpus]


def check_local_device(device: str) -> None:
    """``--device`` for ``--executor local``, whose jobs run on this machine: ``cuda`` needs a GPU here and
    ``cuda:N`` GPU N (of those this process sees). Raises UsageError, one line."""
    if not device.startswith("cuda"):
        return
    index = device[5:] if device.startswith("cuda:") else None
    if index is not None and not index.isdigit():
        raise UsageError(f"--device {device}: give cuda:N with N a GPU index")
    n = gpu_count()
    if n == 0:
        raise UsageError(f"--device {device}: no CUDA device is available (--executor local runs its jobs on this "
                         f"machine; --executor slurm runs them where Slurm puts them)")
    if index is not None and int(index) >= n:
        raise UsageError(f"--device {device}: only {n} GPU(s) (cuda:0..cuda:{n - 1})")


def cgroup_memory_limit(proc_cgroup: Path = Path("/proc/self/cgroup"),
                        root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit in bytes of this process's control group (cgroup v2 ``memory.max`` of its group and every
    parent, or v1 ``memory.limit_in_bytes``): the smallest set; None where none is (``max``, no cgroup file system,
    not Linux). What a container, a Slurm job with ``--mem`` or a systemd slice lets the process use."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":  # v2: one unified hierarchy
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):  # v1: the memory controller's hierarchy
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):
            try:
                text = (base.joinpath(*parts[:depth]) / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for "no limit"
                limits.append(int(text))
    return min(limits) if limits else None


def job_memory_gb(model_dir: Path | None) -> float:
    """Resident memory one search or finetune of the model in ``model_dir`` needs, estimated (GB): 1.5 GB of
    runtime and data plus 8 times the weights' size (fp32 weights, their gradients, AdamW's two moments and the
    activations of a batch). MiniLM (133 MB of weights) gives 2.6 GB (2.3 measured, benchmarks/README.md), BERT-base
    (440 MB) 5.0 GB. Without weights files to measure: :data:`JOB_MEMORY_GB`."""
    try:
        files = [p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
        weights = sum(p.stat().st_size for p in files) / 2**30
    except (OSError, TypeError):
        return float(JOB_MEMORY_GB)
    return 1.5 + 8 * weights if files else float(JOB_MEMORY_GB)


def memory_jobs(per_job_gb: float = JOB_MEMORY_GB, cgroup_limit: int | None = None) -> int:
    """How many jobs of ``per_job_gb`` the memory this process may use holds (at least 1): the machine's memory, or
    its control group's limit where that is smaller (:func:`cgroup_memory_limit`)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1
    limit = cgroup_memory_limit() if cgroup_limit is None else cgroup_limit
    if limit is not None:
        total = min(total, limit)
    return max(1, int(total / 2**30 // per_job_gb))


def local_layout(jobs: int | None, threads: int | None, jobs_per_gpu: int | None, n_cores: int,
                 n_gpus: int | list[str], max_jobs: int | None = None) -> tuple[int, int, list[str]]:
    """(parallel jobs, threads per job, GPU id of each worker slot or [] on CPU) such that jobs x threads <=
    cores. ``n_gpus``: a count (ids 0..n-1) or the GPUs' ids (:func:`gpu_ids`). Default: one job per core with one
    thread each (measured faster than one job with every core: 126 vs 115 members/hour on 2 cores,
    benchmarks/README.md), at most ``max_jobs`` (what memory holds); where there are GPUs, one job per GPU.
    ``--jobs-per-gpu N`` runs N jobs on each GPU. Raises UsageError for a layout that oversubscribes the cores."""
    ids = [str(g) for g in range(n_gpus)] if isinstance(n_gpus, int) else list(n_gpus)
    gpus: list[str] = []
    if jobs_per_gpu is None and jobs is None and ids:
        jobs_per_gpu = 1  # on a GPU machine: one job per visible GPU unless told otherwise
    if jobs_per_gpu is not None and ids:
        if jobs is not None:
            raise UsageError("give --jobs or --jobs-per-gpu, not both")
        gpus = [g for g in ids for _ in range(jobs_per_gpu)]
        jobs = len(gpus)
    if jobs is None:
        jobs = max(1, min(n_cores // (threads or 1), max_jobs or n_cores))
    if threads is None:
        threads = max(1, n_cores // jobs)
    if jobs * threads > n_cores:
        raise UsageError(f"--jobs {jobs} x --threads {threads} = {jobs * threads} exceeds the {n_cores} CPU cores: "
                         f"oversubscribed cores make training many times slower")
    return jobs, threads, gpus


def _ready(jobs, pending: list[str], finished: set[str]) -> list[str]:
    return [j for j in pending if all(d in finished for d in jobs[j].deps)]


def _blocked(jobs, pending: list[str], failed: set[str]) -> list[str]:
    return [j for j in pending if any(d in failed for d in jobs[j].deps)]


def job_log(pdir: Path, job) -> Path:
    """A protocol job's log file, ``OUT/protocol/logs/SLUG.log`` (``runner.run_job`` writes it; failures name it)."""
    return pdir / "logs" / f"{job.slug}.log"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------- local


def _init_worker(gpu: str | None) -> None:
    """A worker: die with the parent (Linux: a SIGKILLed protocol leaves no worker training on), and take its GPU
    (CUDA_VISIBLE_DEVICES, before torch is imported) where there are GPUs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _worker_main(conn, gpu: str | None, work) -> None:
    """A worker process: run the jobs the parent sends (``(plan, job_id, threads)``; None ends it) one at a time,
    answering ``("ok", result)`` or ``("error", reason)``."""
    _init_worker(gpu)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        try:
            answer = ("ok", work(*message))
        except BaseException as e:  # noqa: BLE001 - the job's failure is the parent's to report
            answer = ("error", _reason(e))
        conn.send(answer)


def death(exitcode: int | None) -> str:
    """Why a worker process ended without answering, from its exit code (negative: the signal that killed it)."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = "; the out-of-memory killer sends it: likely out of memory" if -exitcode == signal.SIGKILL else ""
        return f"its worker was killed by signal {-exitcode} ({name}{hint})"
    return f"its worker exited with code {exitcode} without a result"


class _Worker:
    """One worker process with its pipe, GPU slot and current job."""

    def __init__(self, context, gpu: str | None, work):
        self.gpu = gpu
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, gpu, work))
        self.process.start()
        child.close()
        self.job: str | None = None


def _local_layout(plan) -> tuple:
    """(plan, parallel jobs, threads per job, GPU id of each worker slot) for ``plan`` on this machine: the GPUs this
    process sees (a pinned ``--device cuda:N`` leaves that one, and its jobs then see it as ``cuda``), at most as
    many jobs as the memory holds (:func:`memory_jobs` of :func:`job_memory_gb` of the plan's model)."""
    from dataclasses import replace

    n_gpus = gpu_count() if not plan.run.device.startswith(("cpu", "mps")) else 0
    ids = gpu_ids(n_gpus)
    if plan.run.device.startswith("cuda:") and ids:  # pinned: every job on that GPU, which its worker sees as cuda
        ids = [ids[int(plan.run.device[5:])]]
        plan = replace(plan, run=replace(plan.run, device="cuda"))
    model_dir = None
    try:
        from ticketctl.model import loading

        model_dir = loading.resolve_model(plan.run.model)[1]
    except Exception:  # noqa: BLE001 - only the memory estimate needs it
        pass
    n_jobs, threads, gpus = local_layout(plan.jobs, plan.run.threads, plan.jobs_per_gpu, cores(), ids,
                                         memory_jobs(job_memory_gb(model_dir)))
    return plan, n_jobs, threads, gpus


def run_local(plan, jobs: dict, todo: list[str], done: set[str], work, pdir: Path, log):
    """Run ``todo`` on worker processes of this machine (spawned, each running one job at a time), each job as soon
    as its dependencies are finished. A worker that dies (the out-of-memory killer, SIGKILL, a segfault) fails only
    the job it ran, named with its signal; a new worker takes its place and the other jobs go on. Returns
    ``(results, failures, workers)`` as the module says."""
    import multiprocessing

    plan, n_jobs, threads, gpus = _local_layout(plan)
    workers = f"{n_jobs} job(s) x {threads} thread(s)" + (f" on GPU(s) {','.join(sorted(set(gpus)))}" if gpus else "")
    if not todo:
        return {}, {}, workers
    log.info(f"protocol: running {len(todo)} job(s), {workers}; logs in {pdir / 'logs'}")
    slots: list[str | None] = list(gpus[:len(todo)]) if gpus else [None] * min(n_jobs, len(todo))
    run = _LocalRun(plan, jobs, todo, done, work, pdir, log, threads, slots, multiprocessing.get_context("spawn"))
    try:
        run.loop()
    except BaseException:
        _stop(run.pool)
        raise
    for w in run.pool:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    _terminate(run.pool, grace=30)
    return run.results, run.failures, workers


class _LocalRun:
    """One local run's workers and bookkeeping: which jobs are pending, finished, failed."""

    def __init__(self, plan, jobs, todo, done, work, pdir, log, threads, slots, context):
        self.plan, self.jobs, self.work, self.pdir, self.log = plan, jobs, work, pdir, log
        self.threads, self.slots, self.context = threads, slots, context
        self.pool: list[_Worker] = []
        self.results: dict[str, dict] = {}
        self.failures: dict[str, str] = {}
        self.finished, self.failed = set(done), set()
        self.pending = list(todo)

    def loop(self) -> None:
        """Start every ready job on an idle worker, wait for an answer or a death, until nothing is left."""
        from multiprocessing.connection import wait

        while self.pending or any(w.job for w in self.pool):
            for j in _blocked(self.jobs, self.pending, self.failed):
                self.pending.remove(j)
                self.failed.add(j)
                self.failures[j] = "not run: a job it depends on failed"
            self._start_ready()
            busy = [w for w in self.pool if w.job]
            if not busy:
                continue
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for w in busy:
                if w.conn in ready or w.process.sentinel in ready:
                    self._collect(w, ready)

    def _start_ready(self) -> None:
        for j in _ready(self.jobs, self.pending, self.finished):
            idle = next((w for w in self.pool if w.job is None), None)
            if idle is None and len(self.pool) < len(self.slots):
                free = list(self.slots)
                for w in self.pool:
                    free.remove(w.gpu)
                idle = _Worker(self.context, free[0], self.work)
                self.pool.append(idle)
            if idle is None:
                return
            self.pending.remove(j)
            idle.job = j
            idle.conn.send((self.plan, j, self.threads))
            self.log.info(f"protocol: started {j}")

    def _collect(self, w: "_Worker", ready) -> None:
        """The answer of worker ``w`` (or its death: only its job fails, a new worker replaces it)."""
        j = w.job
        answer = None
        try:
            if w.conn.poll():
                answer = w.conn.recv()
        except (EOFError, OSError):
            answer = None
        if answer is None and w.process.sentinel not in ready and w.process.is_alive():
            return
        w.job = None
        if answer is not None and answer[0] == "ok":
            self.results[j] = answer[1]
            self.finished.add(j)
            self.log.info(f"protocol: finished {j} ({self.results[j]['seconds']:.1f} s)")
            return
        if answer is None:  # the worker died mid-job
            w.process.join(timeout=10)
            why = death(w.process.exitcode)
            w.conn.close()
            self.pool.remove(w)
        else:
            why = answer[1]
        self.failed.add(j)
        self.failures[j] = f"{why} (log: {job_log(self.pdir, self.jobs[j])})"
        self.log.info(f"protocol: FAILED {j}: {self.failures[j]}")


def _stop(pool: list) -> None:
    """Interrupted (or done): end the workers now (their jobs' temporary files are never read) and leave no
    orphans. Never raises: the interruption that called it is what the command reports."""
    if hasattr(signal, "SIGPIPE"):  # writing to a stopped worker's pipe must not kill us (the CLI restores SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    _terminate(pool)


def _terminate(pool: list, grace: float = 0) -> None:
    """Wait up to ``grace`` seconds for the workers to end, then terminate those still running and reap them."""
    deadline = time.time() + grace
    for w in pool:
        try:
            w.process.join(timeout=max(0.0, deadline - time.time()))
            if w.process.is_alive():
                w.process.terminate()
        except (OSError, ValueError, AttributeError, AssertionError):
            pass
    for w in pool:
        try:
            w.process.join(timeout=10)
            w.conn.close()
        except (OSError, ValueError, AssertionError):
            pass


# ---------------------------------------------------------------------------------------------- Slurm


DEFAULT_SLURM_MINUTES = 24 * 60  # --slurm-time when not given (submitit's own default is 5 minutes)


def slurm_extra(text: str | None) -> dict:
    """``--slurm-extra "--qos=high --account x --constraint=a100"`` -> submitit's ``slurm_additional_parameters``
    (``{"qos": "high", "account": "x", "constraint": "a100"}``). Raises UsageError for anything but sbatch long
    options."""
    out: dict = {}
    words = shlex.split(text or "")
    i = 0
    while i < len(words):
        w = words[i]
        if not w.startswith("--") or len(w) < 3:
            raise UsageError(f"--slurm-extra: {w!r} is not an sbatch long option (--name=value)")
        name, eq, value = w[2:].partition("=")
        if not eq:
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                value, i = words[i + 1], i + 1
            else:
                value = True
        out[name.replace("-", "_")] = value
        i += 1
    return out


_SLURM_TIME = re.compile(r"^(?:(\d+)-(\d+)(?::(\d+)(?::(\d+))?)?|(\d+)(?::(\d+)(?::(\d+))?)?)$")


def slurm_minutes(text: str | None) -> int | None:
    """``--slurm-time`` read exactly as ``sbatch --time`` reads it, as whole minutes (Slurm rounds seconds up):
    ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S`` (``30:00`` is 30 minutes, ``1:30`` 1 minute 30 s
    = 2 minutes, ``2-12`` 2 days 12 hours = 3600). None stays None. Raises UsageError for any other form (also
    Slurm's ``INFINITE``: a protocol job asks for a limit) and for zero."""
    if text is None:
        return None
    m = _SLURM_TIME.match(str(text).strip())
    if not m:
        raise UsageError(f"--slurm-time {text!r}: give sbatch's --time forms: minutes, minutes:seconds, "
                         f"hours:minutes:seconds, days-hours, days-hours:minutes or days-hours:minutes:seconds")
    d, h, dm, ds, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if d is not None:
        seconds = ((d * 24 + h) * 60 + (dm or 0)) * 60 + (ds or 0)
    elif c is not None:  # hours:minutes:seconds
        seconds = (a * 60 + b) * 60 + c
    elif b is not None:  # minutes:seconds
        seconds = a * 60 + b
    else:
        seconds = a * 60
    if seconds <= 0:
        raise UsageError(f"--slurm-time {text!r}: must be positive")
    return -(-seconds // 60)


def slurm_mem(text: str | None) -> str | None:
    """``--slurm-mem`` as sbatch's ``--mem`` takes it (``16G``, ``4000M``, ``4000``: megabytes), checked; None stays
    None. Raises UsageError otherwise."""
    if text is None:
        return None
    value = str(text).strip().upper()
    if not re.fullmatch(r"[1-9]\d*[KMGT]?", value):
        raise UsageError(f"--slurm-mem {text!r}: give memory per job as sbatch --mem takes it, e.g. 16G or 4000M")
    return value


def check_slurm() -> None:
    """Slurm is reachable: sbatch exists and the controller answers. One UsageError line otherwise."""
    if shutil.which("sbatch") is None or shutil.which("squeue") is None:
        raise UsageError("--executor slurm: Slurm's sbatch/squeue are not installed here (run on a Slurm login node, "
                         "or use --executor local)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UsageError("--executor slurm needs submitit: pip install 'ticketctl[slurm]'") from None
    probe = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
    if probe.returncode != 0:
        raise UsageError(f"--executor slurm: the Slurm controller does not answer ({probe.stderr.strip()})")


REPORT_JOB = "report"  # a detached run's report job, as slurm-jobs.tsv names it
JOBS_TSV = "slurm-jobs.tsv"  # in OUT/protocol: TASK:JOB <TAB> Slurm job id, one line per submission
# Pending reasons that never clear by waiting: the job asks for more than its partition, account or QOS allows, or a
# dependency can never be satisfied. A job pending for one of these is reported and cancelled.
NEVER_STARTS = {"PartitionTimeLimit", "PartitionNodeLimit", "PartitionConfig", "BadConstraints", "InvalidAccount",
                "InvalidQOS", "AccountNotAllowed", "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit",
                "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "QOSMaxNodePerJobLimit", "AssocMaxCpuPerJobLimit",
                "AssocMaxNodePerJobLimit", "DependencyNeverSatisfied"}
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def recorded_jobs(pdir: Path, task: str | None = None) -> dict[str, str]:
    """``OUT/protocol/slurm-jobs.tsv``: protocol job -> the Slurm job id it was last submitted as. Its rows name the
    task (``mrpc:finetune:dense:s3``, ``mrpc:report``: several tasks share one ``--out``); with ``task``, that task's
    rows only, keyed by job id (``finetune:dense:s3``), else every row as written."""
    out: dict[str, str] = {}
    try:
        for line in (pdir / JOBS_TSV).read_text(encoding="utf-8").splitlines():
            job, _, slurm_id = line.partition("\t")
            if task:
                job = job[len(task) + 1:] if job.startswith(f"{task}:") else ""
            if job and slurm_id:
                out[job] = slurm_id.strip()
    except OSError:
        pass
    return out


def _record(pdir: Path, pairs: list[tuple[str, str]], task: str | None = None) -> None:
    """Append submissions (of ``task``'s jobs: named ``TASK:JOB``) to the journal of Slurm ids at once (so a planner
    killed now is re-attached on rerun)."""
    with open(pdir / JOBS_TSV, "a", encoding="utf-8") as f:
        f.write("".join(f"{task + ':' if task else ''}{j}\t{i}\n" for j, i in pairs))
        f.flush()
        os.fsync(f.fileno())


def queue_states(ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """``squeue`` for these job ids only (array tasks as ``ID_TASK``): id -> (state, reason) of those Slurm still
    holds; None when squeue failed for another reason than ids it no longer knows."""
    if not ids:
        return {}
    q = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T|%r"], capture_output=True,
                       text=True)
    if q.returncode != 0:
        return {} if "Invalid job id" in q.stderr else None
    out = {}
    for line in q.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            out[parts[0]] = (parts[1], parts[2])
    return out


def parse_scontrol_job(text: str) -> dict[str, str]:
    """``scontrol show job ID`` output -> its ``Key=Value`` fields (JobState, Reason, ExitCode, TimeLimit, ...; the
    first record where an array prints several)."""
    fields: dict[str, str] = {}
    for token in text.split():
        key, eq, value = token.partition("=")
        if eq and key not in fields:
            fields[key] = value
    return fields


def parse_sacct(text: str) -> dict[str, tuple[str, str]]:
    """``sacct -n -P -o JobID,State,ExitCode`` output -> job id -> (state, exit code); the job's own line, not its
    ``.batch``/``.extern`` steps. ``CANCELLED by 123`` reads CANCELLED."""
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and "." not in parts[0]:
            out[parts[0]] = (parts[1].split()[0] if parts[1] else "", parts[2])
    return out


def final_state(slurm_id: str) -> tuple[str, str]:
    """(state, exit code) of a job that left the queue, from what the cluster has: ``scontrol show job`` while
    Slurm keeps the job (MinJobAge), else ``sacct`` where accounting is on; ("", "") when neither knows it."""
    q = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True)
    if q.returncode == 0:
        fields = parse_scontrol_job(q.stdout)
        if fields.get("JobState"):
            return fields["JobState"], fields.get("ExitCode", "")
    if shutil.which("sacct"):
        q = subprocess.run(["sacct", "-n", "-P", "-j", slurm_id, "-o", "JobID,State,ExitCode"], capture_output=True,
                           text=True)
        if q.returncode == 0:
            row = parse_sacct(q.stdout).get(slurm_id)
            if row and row[0]:
                return row
    return "", ""


def describe_end(state: str, exit_code: str) -> str:
    """One phrase for how a Slurm job ended without a result: its state, and the exit status or the signal that
    ended it (``ExitCode=0:9`` is signal 9)."""
    if state == "CANCELLED?":  # a pending array task scancel'ed: Slurm drops it without a record
        return "CANCELLED: it was cancelled while pending (Slurm keeps no record of a pending array task cancelled)"
    if not state:
        return "left Slurm's queue without a result (Slurm no longer knows its state)"
    words = {"OUT_OF_MEMORY": "ran out of memory (give more with --slurm-mem)",
             "TIMEOUT": "reached its time limit (give more with --slurm-time)",
             "NODE_FAIL": "lost its node", "PREEMPTED": "was preempted", "CANCELLED": "was cancelled",
             "BOOT_FAIL": "could not boot its node", "DEADLINE": "missed its deadline", "FAILED": "failed",
             "COMPLETED": "ended without a result"}
    code, _, sig = exit_code.partition(":")
    if sig not in ("", "0"):
        detail = f", killed by signal {sig}"
    elif code.isdigit() and int(code) > 128:  # srun reports a step killed by signal N as exit code 128 + N
        detail = f", exit code {code} (killed by signal {int(code) - 128})"
    else:
        detail = f", exit code {code}" if code not in ("", "0") else ""
    return f"{state}: it {words.get(state, 'ended')}{detail}"


def _partition_limit(partition: str | None) -> str:
    """`` (partition P's MaxTime is T)`` from ``scontrol show partition``, or '' where it cannot be read."""
    cmd = ["scontrol", "show", "partition"] + ([partition] if partition else [])
    q = subprocess.run(cmd, capture_output=True, text=True)
    fields = parse_scontrol_job(q.stdout) if q.returncode == 0 else {}
    if fields.get("MaxTime"):
        return f" (partition {fields.get('PartitionName', partition)}'s MaxTime is {fields['MaxTime']})"
    return ""


MAX_REQUEUES = 3  # times a job is requeued after its time limit (submitit's slurm_max_num_timeout); preemption: always
WARNING_SECONDS = 90  # Slurm signals a job this long before its limit (submitit's default), or a sixth of a short limit


def warning_seconds(minutes: int) -> int:
    """Seconds before a job's time limit at which Slurm is asked to signal it (``--signal=USR2@S``): 90 (submitit's
    default), or a sixth of a limit under 9 minutes. Slurm's controller looks at time limits every 30 s and signals a
    job at the first look within S + 30 s of its limit, so with 90 s a job of 2 minutes or less would be signalled,
    and requeued, as it starts, every time; with a sixth (10 s of a 1-minute limit) it runs at least 20 s first."""
    return min(WARNING_SECONDS, max(1, minutes * 60 // 6))


def max_requeues(plan) -> int:
    """``--slurm-max-requeues``, or :data:`MAX_REQUEUES` where not given."""
    return MAX_REQUEUES if plan.slurm_max_requeues is None else plan.slurm_max_requeues


class Requeueable:
    """A Slurm job's function made checkpointable the way submitit checks it (``submitit.helpers.Checkpointable``:
    a ``checkpoint`` method): when Slurm signals the job (USR2, ``--signal=USR2@90`` before its time limit or on
    preemption), submitit requeues it with the same call, at most :data:`MAX_REQUEUES` times after a timeout. The
    job then starts again: an IMP search resumes from its last finished round (checkpointed in ``OUT/cache``), a
    finetune from its start."""

    def __init__(self, work):
        self.work = work

    def __call__(self, *args):
        return self.work(*args)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _slurm_params(plan, threads: int) -> tuple[dict, dict]:
    """(submitit's parameters, sbatch's additional parameters) of every job of ``plan``."""
    extra = {"kill_on_invalid_dep": "yes", **slurm_extra(plan.slurm_extra)}
    if plan.slurm_mem:
        extra["mem"] = slurm_mem(plan.slurm_mem)
    params = {"cpus_per_task": threads, "tasks_per_node": 1, "nodes": 1}
    if plan.slurm_partition:
        params["slurm_partition"] = plan.slurm_partition
    if plan.slurm_gpus_per_job:
        params["gpus_per_node"] = plan.slurm_gpus_per_job
    params["timeout_min"] = slurm_minutes(plan.slurm_time) if plan.slurm_time else DEFAULT_SLURM_MINUTES
    params["slurm_signal_delay_s"] = warning_seconds(params["timeout_min"])
    if plan.slurm_array_parallelism:
        params["slurm_array_parallelism"] = plan.slurm_array_parallelism
    return params, extra


def reattach(pdir: Path, jobs: dict, todo: list[str], folder: Path) -> dict:
    """The jobs of ``todo`` that an earlier run submitted (``OUT/protocol/slurm-jobs.tsv``, by their keys) and Slurm
    still holds: protocol job -> submitit's handle of that Slurm job (read by id, never submitted again)."""
    from submitit.slurm.slurm import SlurmJob

    recorded = recorded_jobs(pdir)
    earlier = {j: recorded[jobs[j].key] for j in todo if jobs[j].key in recorded}
    alive = queue_states(list(earlier.values())) or {}
    return {j: SlurmJob(folder=str(folder), job_id=i) for j, i in earlier.items()
            if alive.get(i, ("", ""))[0] in ACTIVE_STATES}


def _submit(executor, plan, jobs: dict, todo: list[str], submitted: dict, work, pdir: Path, threads: int) -> list:
    """Submit the jobs of ``todo`` not in ``submitted`` (adding their handles to it, each recorded at once): those
    without unfinished dependencies as one array, each other one on its own with ``afterok`` on its dependencies'
    Slurm jobs. Each is named, and recorded, by its job's key (``ticketctl:mrpc:finetune:dense:s3``); the array by
    ``plan.task`` (``ticketctl:mrpc:wave1-4-jobs``; several tasks run together: ``mrpc+rte``). Returns the protocol
    jobs submitted. Raises TicketError when Slurm refuses (what it took is cancelled)."""
    import submitit

    params, extra = _slurm_params(plan, threads)
    tag = f"{plan.task}:" if plan.task else ""
    new = [j for j in todo if j not in submitted]
    first = [j for j in new if not any(d in todo for d in jobs[j].deps)]
    try:
        if first:
            name = f"ticketctl:{jobs[first[0]].key}" if len(first) == 1 else f"ticketctl:{tag}wave1-{len(first)}-jobs"
            executor.update_parameters(**params, name=name, slurm_additional_parameters=extra)
            with executor.batch():
                handles = [executor.submit(work, plan, j, threads) for j in first]
            submitted.update(zip(first, handles))
            _record(pdir, [(jobs[j].key, h.job_id) for j, h in zip(first, handles)])
        for j in new:
            if j in submitted:
                continue
            after = [submitted[d].job_id for d in jobs[j].deps if d in submitted]
            executor.update_parameters(**params, name=f"ticketctl:{jobs[j].key}", slurm_additional_parameters={
                **extra, **({"dependency": "afterok:" + ":".join(after)} if after else {})})
            submitted[j] = executor.submit(work, plan, j, threads)
            _record(pdir, [(jobs[j].key, submitted[j].job_id)])
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
        for j in new:
            if j in submitted:
                submitted[j].cancel(check=False)
        raise TicketError(f"--executor slurm: the submission was refused: {_reason(e)}") from None
    return new


def submit_slurm(plan, jobs: dict, todo: list[str], work, pdir: Path, log) -> dict:
    """Submit ``todo`` through submitit without waiting: protocol job -> submitit's handle, the jobs an earlier run
    submitted that Slurm still holds re-attached (:func:`reattach`), the others submitted (:func:`_submit`), each
    named by its protocol job (``finetune:dense:s3``) and requeued on USR2 (:class:`Requeueable`). Raises
    TicketError for a refused submission."""
    import submitit

    folder = pdir / "slurm" / "%j"
    submitted = reattach(pdir, jobs, todo, folder)
    if submitted:
        log.info(f"protocol: re-attached to {len(submitted)} Slurm job(s) an earlier run submitted: " + " ".join(
            f"{j}={h.job_id}" for j, h in submitted.items()))
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm", slurm_max_num_timeout=max_requeues(plan))
    new = _submit(executor, plan, jobs, todo, submitted, Requeueable(work), pdir, plan.run.threads or 1)
    if new:
        log.info(f"protocol: submitted {len(new)} Slurm job(s): " + " ".join(
            f"{j}={submitted[j].job_id}" for j in new))
    return submitted


def run_slurm(plan, jobs: dict, todo: list[str], done: set[str], work, pdir: Path, log):
    """Submit ``todo`` through submitit and wait for it (:func:`submit_slurm`, then :func:`_wait_slurm`): the jobs
    without unfinished dependencies as one job array, each other job on its own, with ``afterok`` dependencies on its
    dependencies' Slurm jobs (``--kill-on-invalid-dep``, so a failed prior ends its chain instead of leaving it
    pending). A job that an earlier run submitted (``OUT/protocol/slurm-jobs.tsv``) and Slurm still holds is
    re-attached, never submitted again. Returns ``(results, failures, workers)`` as the module says."""
    check_slurm()
    threads = plan.run.threads or 1
    workers = f"Slurm, {threads} CPU(s) per job" + (f", {plan.slurm_gpus_per_job} GPU(s) per job"
                                                    if plan.slurm_gpus_per_job else "")
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    if not todo:
        return results, failures, workers
    submitted = submit_slurm(plan, jobs, todo, work, pdir, log)
    _wait_slurm(submitted, jobs, results, failures, pdir, log, partition=plan.slurm_partition,
                requeues=max_requeues(plan))
    return results, failures, workers


def submit_after(plan, fn, after: list[str], pdir: Path, name: str, replace: bool = False) -> str:
    """Submit ``fn(plan)`` as one Slurm job that starts once every Slurm job of ``after`` has ended, however it ended
    (``afterany``), recorded in ``slurm-jobs.tsv`` as ``name``; returns its Slurm id. Where an earlier run's job of
    that name is still queued or running, that one is kept and its id returned (nothing submitted twice), unless
    ``replace`` (jobs it does not wait for were submitted since): it is then cancelled and a new one submitted.
    Raises TicketError for a refused submission."""
    import submitit

    earlier = recorded_jobs(pdir, plan.task).get(name)
    if earlier and (queue_states([earlier]) or {}).get(earlier, ("", ""))[0] in ACTIVE_STATES:
        if not replace:
            return earlier
        subprocess.run(["scancel", earlier], capture_output=True)
    params, extra = _slurm_params(plan, 1)
    for key in ("gpus_per_node", "slurm_array_parallelism"):
        params.pop(key, None)  # the report needs no GPU
    extra.pop("kill_on_invalid_dep")
    if after:
        extra["dependency"] = "afterany:" + ":".join(after)
    executor = submitit.AutoExecutor(folder=str(pdir / "slurm" / "%j"), cluster="slurm")
    tag = f"{plan.task}:" if plan.task else ""
    executor.update_parameters(**params, name=f"ticketctl:{tag}{name}", slurm_additional_parameters=extra)
    try:
        job = executor.submit(fn, plan)
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
        raise TicketError(f"--executor slurm: the submission was refused: {_reason(e)}") from None
    _record(pdir, [(name, job.job_id)], plan.task)
    return job.job_id


TIMED_OUT_TOO_OFTEN = "timed-out too many times"  # submitit's reason for not requeuing a job once more


def job_failure(exc: BaseException, slurm_id: str, requeues: int) -> str:
    """One line for a Slurm job whose result is an error (submitit's ``FailedJobError``, whose message holds the
    job's traceback): the exception the job raised (its last line, without the module path), or, where submitit
    refused to requeue it once more after a time limit, ``TIMEOUT: requeued N time(s) ...`` (N: Slurm's
    ``Restarts`` where ``scontrol`` still has the job, else ``requeues``, the bound)."""
    text = str(exc)
    if TIMED_OUT_TOO_OFTEN in text:
        q = subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True, text=True)
        restarts = parse_scontrol_job(q.stdout).get("Restarts", "") if q.returncode == 0 else ""
        n = int(restarts) if restarts.isdigit() else requeues
        return (f"Slurm job {slurm_id} TIMEOUT: requeued {n} time(s) (--slurm-max-requeues {requeues}) and still "
                f"unfinished at its time limit: give a longer --slurm-time")
    trace = text.split("-" * 22)
    lines = [line.strip() for line in trace[1].splitlines() if line.strip()] if len(trace) > 2 else []
    if not lines:  # not submitit's message with a traceback
        return _reason(exc)
    name, colon, message = lines[-1].partition(": ")
    return f"{name.rsplit('.', 1)[-1]}: {message}" if colon else lines[-1]


class _SlurmWait:
    """What :func:`_wait_slurm` knows of the jobs it waits for between two reads of the queue."""

    def __init__(self, submitted, jobs, results, failures, pdir, log, partition, requeues=MAX_REQUEUES):
        self.open = dict(submitted)
        self.jobs, self.results, self.failures, self.pdir, self.log = jobs, results, failures, pdir, log
        self.partition, self.requeues = partition, requeues
        self.gone_since: dict[str, float] = {}
        self.last_seen: dict[str, str] = {}  # the state squeue last showed

    def fail(self, j: str, why: str) -> None:
        self.failures[j] = why
        self.log.info(f"protocol: FAILED {j}: {why}")

    def result(self, j: str, handle) -> None:
        del self.open[j]
        try:
            self.results[j] = handle.result()
            self.log.info(f"protocol: finished {j} ({self.results[j]['seconds']:.1f} s, Slurm job {handle.job_id})")
        except Exception as e:
            self.fail(j, f"{job_failure(e, handle.job_id, self.requeues)} (log: {job_log(self.pdir, self.jobs[j])}; "
                         f"Slurm: {handle.paths.stderr})")

    def left_queue(self, j: str, handle) -> None:
        """``j`` is no longer in the queue: after 10 s without its result file (a shared file system may show it
        late), named by its Slurm state."""
        self.gone_since.setdefault(j, time.time())
        if time.time() - self.gone_since[j] <= 10 or handle.paths.result_pickle.exists():
            return  # a result that appeared is read on the next pass
        del self.open[j]
        end_state, code = final_state(handle.job_id)
        if not end_state and self.last_seen.get(j) == "PENDING" and "_" in handle.job_id:
            end_state = "CANCELLED?"  # only scancel takes a pending array task out of the queue
        deps_failed = any(d in self.failures for d in self.jobs[j].deps)
        if deps_failed and end_state in ("", "CANCELLED", "PENDING"):
            self.fail(j, "not run: a job it depends on failed")
        else:
            self.fail(j, f"Slurm job {handle.job_id} {describe_end(end_state, code)} (log: "
                         f"{job_log(self.pdir, self.jobs[j])}; Slurm: {handle.paths.stderr})")

    def cancel_stuck(self, j: str, handle, reason: str) -> None:
        """``j`` pends for a reason that never clears: cancelled and reported."""
        subprocess.run(["scancel", handle.job_id], capture_output=True)
        del self.open[j]
        if reason == "DependencyNeverSatisfied":
            self.fail(j, "not run: a job it depends on failed")
            return
        limit = _partition_limit(self.partition) if reason in ("PartitionTimeLimit", "PartitionConfig") else ""
        hint = limit + ": give a shorter --slurm-time" if reason == "PartitionTimeLimit" else limit
        self.fail(j, f"Slurm job {handle.job_id} was pending with reason {reason}, which never clears{hint}; "
                     f"cancelled (log: {handle.paths.stderr})")

    def poll(self) -> None:
        """One read of the queue (this run's jobs only) and what follows from it for every open job."""
        queue = queue_states([h.job_id for h in self.open.values()])
        stuck = []
        for j, handle in list(self.open.items()):
            if handle.paths.result_pickle.exists():
                self.result(j, handle)
                continue
            if queue is None:
                continue
            state, reason = queue.get(handle.job_id, ("", ""))
            if state == "PENDING" and reason in NEVER_STARTS:
                stuck.append((j, handle, reason))
            elif state in ACTIVE_STATES:
                self.gone_since.pop(j, None)
                self.last_seen[j] = state
            else:
                self.left_queue(j, handle)
        for j, handle, reason in stuck:
            self.cancel_stuck(j, handle, reason)


def _wait_slurm(submitted: dict, jobs: dict, results: dict, failures: dict, pdir: Path, log,
                poll: float = 2.0, max_poll: float = 10.0, partition: str | None = None,
                requeues: int = MAX_REQUEUES) -> None:
    """Wait until every submitted job has a result or has left Slurm's queue without one. One ``squeue`` call per
    poll for this run's jobs only, every ``poll`` seconds at first, growing to ``max_poll``. A job that leaves the
    queue without a result is named by its Slurm state (``scontrol show job``, else ``sacct``); a job pending for a
    reason that never clears (:data:`NEVER_STARTS`) is cancelled and reported."""
    waiting = _SlurmWait(submitted, jobs, results, failures, pdir, log, partition, requeues)
    wait = poll
    while waiting.open:
        waiting.poll()
        if waiting.open:
            time.sleep(wait)
            wait = min(max_poll, wait * 1.25)


# ---------------------------------------------------------------------------------------------- the registry


class Executor:
    """Where a protocol's jobs run. A new engine is one subclass registered with :func:`register`: its ``name`` (the
    ``--executor`` value), ``help`` (the option's help), ``Options`` (a dataclass of its own command-line options,
    each field declared once with :func:`ticketctl.hparams.option`: the ``protocol`` command and plan files take them
    from here, and given with another executor they are refused in one line; the plan holds each under its field's
    name), :meth:`validate`, :meth:`check` and :meth:`run`; where its jobs outlive the command, ``detaches`` and
    :meth:`detach`."""

    name: str = ""
    help: str = ""
    Options: type | None = None
    options: tuple[str, ...] = ()  # the names of Options' fields (set by :func:`register`)
    detaches = False  # its jobs outlive the command: --detach (:meth:`detach`)

    def validate(self, plan) -> None:
        """This executor's options of ``plan``, checked without the machine. Raises UsageError, one line."""

    def check(self, plan) -> None:
        """What this executor needs of this machine, checked before anything is located or trained. Raises
        UsageError, one line."""

    def run(self, plan, jobs: dict, todo: list[str], done: set[str], work, pdir: Path, log):
        """Run ``todo`` (``work(plan, job_id, threads) -> dict`` each); ``(results, failures, workers)``."""
        raise NotImplementedError

    def detach(self, plan, jobs: dict, todo: list[str], work, report, pdir: Path, log) -> list[tuple[str, str]]:
        """Where ``detaches``: submit ``todo`` and ``report(plan)`` (a job that runs after them all) and return at
        once: ``[(job, id), ..., ("report", id)]``."""
        raise NotImplementedError


EXECUTORS: dict[str, Executor] = {}  # --executor value -> its executor, in registration order


def register(cls: type[Executor]) -> type[Executor]:
    """Class decorator: make ``cls`` the executor named ``cls.name``, with the options its ``Options`` declares."""
    cls.options = tuple(f.name for f in fields(cls.Options)) if cls.Options else ()
    EXECUTORS[cls.name] = cls()
    return cls


def option_classes() -> list[type]:
    """Every registered executor's ``Options`` dataclass, in registration order."""
    return [e.Options for e in EXECUTORS.values() if e.Options]


def get(name: str) -> Executor:
    """The executor registered as ``name``. Raises UsageError (one line) naming the registered ones."""
    try:
        return EXECUTORS[name]
    except KeyError:
        raise UsageError(f"--executor must be one of {', '.join(EXECUTORS)}") from None


def _at_least_one(plan, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(plan, name) is not None and getattr(plan, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")


@dataclass(frozen=True)
class LocalOptions:
    """The local executor's options."""

    jobs: Optional[int] = option(None, "local: jobs at once (default: cores / --threads, or 1); jobs x threads must "
                                 "not exceed the cores.")
    jobs_per_gpu: Optional[int] = option(None, "local, where GPUs exist: N jobs per GPU, each worker pinned with "
                                         "CUDA_VISIBLE_DEVICES.")


@register
class LocalExecutor(Executor):
    """Worker processes on this machine (:func:`run_local`)."""

    name = "local"
    help = "local: worker processes on this machine"
    Options = LocalOptions

    def validate(self, plan) -> None:
        _at_least_one(plan, self.options)

    def check(self, plan) -> None:
        check_local_device(plan.run.device)

    def run(self, plan, jobs, todo, done, work, pdir, log):
        return run_local(plan, jobs, todo, done, work, pdir, log)


@dataclass(frozen=True)
class SlurmOptions:
    """The Slurm executor's options (sbatch's, named ``--slurm-*``)."""

    slurm_partition: Optional[str] = option(None, "slurm: partition.")
    slurm_gpus_per_job: Optional[int] = option(None, "slurm: GPUs per job (1: a job trains on one GPU).")
    slurm_time: Optional[str] = option(None, "slurm: time limit per job, as sbatch --time reads it (M, M:S, H:M:S, "
                                       "D-H, D-H:M, D-H:M:S; default 1-0).")
    slurm_mem: Optional[str] = option(None, "slurm: memory per job, as sbatch --mem (16G, 4000M).")
    slurm_max_requeues: Optional[int] = option(
        None, "slurm: times a job that reaches its time limit is requeued (resuming a search from its last IMP "
        "round) before it is reported TIMEOUT (default 3).")
    slurm_array_parallelism: Optional[int] = option(None, "slurm: array tasks running at once.")
    slurm_extra: Optional[str] = option(None, "slurm: more sbatch options, e.g. \"--qos=high --account=lab\".")


@register
class SlurmExecutor(Executor):
    """Slurm through submitit (:func:`run_slurm`)."""

    name = "slurm"
    help = "slurm: jobs submitted through submitit (pip install 'ticketctl[slurm]')"
    Options = SlurmOptions
    detaches = True

    def validate(self, plan) -> None:
        _at_least_one(plan, ("slurm_gpus_per_job", "slurm_array_parallelism"))
        if plan.slurm_max_requeues is not None and plan.slurm_max_requeues < 0:
            raise UsageError("--slurm-max-requeues must be >= 0")
        if plan.slurm_gpus_per_job is not None and plan.slurm_gpus_per_job > 1:
            raise UsageError(f"--slurm-gpus-per-job {plan.slurm_gpus_per_job}: a protocol job trains one process on "
                             f"one GPU (no data-parallel jobs); give 1 and let Slurm run more jobs at once")
        slurm_minutes(plan.slurm_time)  # sbatch's forms, or one line now rather than a refused submission later
        slurm_mem(plan.slurm_mem)
        slurm_extra(plan.slurm_extra)

    def check(self, plan) -> None:
        check_slurm()

    def run(self, plan, jobs, todo, done, work, pdir, log):
        return run_slurm(plan, jobs, todo, done, work, pdir, log)

    def detach(self, plan, jobs, todo, work, report, pdir, log):
        before = set(recorded_jobs(pdir).values())
        submitted = submit_slurm(plan, jobs, todo, work, pdir, log) if todo else {}
        ids = [h.job_id for h in submitted.values()]
        report_id = submit_after(plan, report, ids, pdir, REPORT_JOB, replace=bool(set(ids) - before))
        return [(j, h.job_id) for j, h in submitted.items()] + [(REPORT_JOB, report_id)]
