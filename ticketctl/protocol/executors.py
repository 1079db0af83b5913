"""Where a protocol's jobs run: a local process pool (``--executor local``) or Slurm through submitit
(``--executor slurm``). Both take the job graph, the ids to run and ``work(plan, job_id, threads) -> dict`` (a
module-level function, so it pickles), and return ``(results, failures, workers)``: each finished job's result, one
line per failed job naming its log, and how the work was spread.

A job whose dependency failed is not run; it is listed as failed ("dependency failed"). The others go on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ticketctl.errors import TicketError, UsageError


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


def memory_jobs() -> int:
    """How many jobs this machine's memory holds at :data:`JOB_MEMORY_GB` each (at least 1)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1
    return max(1, int(total // JOB_MEMORY_GB))


def local_layout(jobs: int | None, threads: int | None, jobs_per_gpu: int | None, n_cores: int,
                 n_gpus: int, max_jobs: int | None = None) -> tuple[int, int, list[str]]:
    """(parallel jobs, threads per job, GPU index of each worker slot or [] on CPU) such that jobs x threads <=
    cores. Default: one job per core with one thread each (measured faster than one job with every core: 126 vs
    115 members/hour on 2 cores, benchmarks/README.md), at most ``max_jobs`` (what memory holds); where there are
    GPUs, one job per GPU. ``--jobs-per-gpu N`` runs N jobs on each GPU. Raises UsageError for a layout that
    oversubscribes the cores."""
    gpus: list[str] = []
    if jobs_per_gpu is None and jobs is None and n_gpus:
        jobs_per_gpu = 1  # on a GPU machine: one job per visible GPU unless told otherwise
    if jobs_per_gpu is not None and n_gpus:
        if jobs is not None:
            raise UsageError("give --jobs or --jobs-per-gpu, not both")
        gpus = [str(g) for g in range(n_gpus) for _ in range(jobs_per_gpu)]
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


def _init_worker(slots) -> None:
    """A pool worker: die with the parent (Linux: a SIGKILLed protocol leaves no worker training on), and take a GPU
    slot (CUDA_VISIBLE_DEVICES, before torch is imported) where there are GPUs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    if slots is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slots.get()


def run_local(plan, jobs: dict, todo: list[str], done: set[str], work, pdir: Path, log):
    """Run ``todo`` on a process pool (spawned workers), each job as soon as its dependencies are finished."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n_gpus = gpu_count() if not plan.run.device.startswith(("cpu", "mps")) else 0
    n_jobs, threads, gpus = local_layout(plan.jobs, plan.run.threads, plan.jobs_per_gpu, cores(), n_gpus,
                                         memory_jobs())
    workers = f"{n_jobs} job(s) x {threads} thread(s)" + (f" on {n_gpus} GPU(s)" if gpus else "")
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    if not todo:
        return results, failures, workers
    log.info(f"protocol: running {len(todo)} job(s), {workers}; logs in {pdir / 'logs'}")
    context = multiprocessing.get_context("spawn")
    slots = None
    if gpus:
        slots = context.Queue()
        for g in gpus:
            slots.put(g)
    pool = ProcessPoolExecutor(max_workers=min(n_jobs, len(todo)), mp_context=context, initializer=_init_worker,
                               initargs=(slots,))
    finished, failed = set(done), set()
    pending = list(todo)
    running = {}
    try:
        while pending or running:
            for j in _blocked(jobs, pending, failed):
                pending.remove(j)
                failed.add(j)
                failures[j] = "not run: a job it depends on failed"
            for j in _ready(jobs, pending, finished):
                if len(running) >= n_jobs:
                    break
                pending.remove(j)
                running[pool.submit(work, plan, j, threads)] = j
                log.info(f"protocol: started {j}")
            if not running:
                continue
            complete, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in complete:
                j = running.pop(fut)
                try:
                    results[j] = fut.result()
                    finished.add(j)
                    log.info(f"protocol: finished {j} ({results[j]['seconds']:.1f} s)")
                except Exception as e:  # a job's failure is reported; the others go on
                    failed.add(j)
                    failures[j] = f"{_reason(e)} (log: {job_log(pdir, jobs[j])})"
                    log.info(f"protocol: FAILED {j}: {failures[j]}")
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return results, failures, workers


def _stop(pool) -> None:
    """Interrupted: end the workers now (their jobs' temporary files are never read) and leave no orphans. Never
    raises: the interruption that called it is what the command reports."""
    if hasattr(signal, "SIGPIPE"):  # writing to a stopped worker's pipe must not kill us (the CLI restores SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for p in processes:
        try:
            p.terminate()
        except (OSError, ValueError):
            pass
    for p in processes:
        try:
            p.join(timeout=10)
        except (OSError, ValueError, AssertionError):
            pass
    try:
        pool.shutdown(wait=False, cancel_futures=True)
    except (OSError, RuntimeError):
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


def slurm_minutes(text: str | None) -> int | None:
    """``--slurm-time`` as minutes: ``90``, ``1:30:00`` (h:m:s), ``2-00:00:00`` (days-h:m:s). UsageError otherwise."""
    if text is None:
        return None
    try:
        days, _, rest = text.rpartition("-")
        parts = [int(x) for x in rest.split(":")]
        if len(parts) == 1:
            minutes = parts[0]
        elif len(parts) == 2:
            minutes = parts[0] * 60 + parts[1]
        else:
            minutes = parts[0] * 60 + parts[1] + (parts[2] > 0)
        minutes += int(days or 0) * 24 * 60
    except ValueError:
        raise UsageError(f"--slurm-time {text!r}: give minutes, h:m:s or d-h:m:s") from None
    if minutes <= 0:
        raise UsageError(f"--slurm-time {text!r}: must be positive")
    return minutes


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


def run_slurm(plan, jobs: dict, todo: list[str], done: set[str], work, pdir: Path, log):
    """Submit ``todo`` through submitit: the jobs without unfinished dependencies as one job array, each other job
    on its own with ``afterok`` dependencies on its dependencies' Slurm jobs (``--kill-on-invalid-dep``, so a failed
    prior ends its chain instead of leaving it pending), then wait for all of them."""
    check_slurm()
    import submitit

    threads = plan.run.threads or 1
    workers = f"Slurm, {threads} CPU(s) per job" + (f", {plan.slurm_gpus_per_job} GPU(s) per job"
                                                    if plan.slurm_gpus_per_job else "")
    results: dict[str, dict] = {}
    failures: dict[str, str] = {}
    if not todo:
        return results, failures, workers
    executor = submitit.AutoExecutor(folder=str(pdir / "slurm" / "%j"), cluster="slurm")
    extra = {"kill_on_invalid_dep": "yes", **slurm_extra(plan.slurm_extra)}
    params = {"cpus_per_task": threads, "tasks_per_node": 1, "nodes": 1, "name": "ticketctl-protocol"}
    if plan.slurm_partition:
        params["slurm_partition"] = plan.slurm_partition
    if plan.slurm_gpus_per_job:
        params["gpus_per_node"] = plan.slurm_gpus_per_job
    params["timeout_min"] = slurm_minutes(plan.slurm_time) if plan.slurm_time else DEFAULT_SLURM_MINUTES
    if plan.slurm_array_parallelism:
        params["slurm_array_parallelism"] = plan.slurm_array_parallelism
    executor.update_parameters(**params, slurm_additional_parameters=extra)
    submitted: dict[str, object] = {}
    first = [j for j in todo if not any(d in todo for d in jobs[j].deps)]
    try:
        with executor.batch():
            handles = [executor.submit(work, plan, j, threads) for j in first]
        submitted.update(zip(first, handles))
        for j in todo:
            if j in submitted:
                continue
            after = [submitted[d].job_id for d in jobs[j].deps if d in submitted]
            executor.update_parameters(slurm_additional_parameters={**extra,
                                                                    "dependency": "afterok:" + ":".join(after)})
            submitted[j] = executor.submit(work, plan, j, threads)
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
        for job in submitted.values():
            job.cancel(check=False)
        raise TicketError(f"--executor slurm: the submission was refused: {_reason(e)}") from None
    log.info(f"protocol: submitted {len(submitted)} Slurm job(s): " + " ".join(
        f"{j}={h.job_id}" for j, h in submitted.items()))
    with open(pdir / "slurm-jobs.tsv", "a", encoding="utf-8") as f:  # which Slurm job ran which protocol job
        for j, h in submitted.items():
            f.write(f"{j}\t{h.job_id}\n")
    _wait_slurm(submitted, jobs, results, failures, pdir, log)
    return results, failures, workers


def _in_queue() -> set[str] | None:
    """Job ids Slurm still holds (pending or running; array tasks as ``ID_TASK``); None if squeue failed."""
    q = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
    if q.returncode != 0:
        return None
    return {line.strip() for line in q.stdout.splitlines() if line.strip()}


def _wait_slurm(submitted: dict, jobs: dict, results: dict, failures: dict, pdir: Path, log,
                poll: float = 2.0) -> None:
    """Wait until every submitted job has a result or has left Slurm's queue without one (killed, refused, or
    cancelled because a dependency failed). Reads submitit's result files and squeue: no accounting (sacct) needed."""
    open_jobs = dict(submitted)
    gone_since: dict[str, float] = {}
    while open_jobs:
        queue = _in_queue()
        for j, handle in list(open_jobs.items()):
            if handle.paths.result_pickle.exists():
                del open_jobs[j]
                try:
                    results[j] = handle.result()
                    log.info(f"protocol: finished {j} ({results[j]['seconds']:.1f} s, Slurm job {handle.job_id})")
                except Exception as e:
                    failures[j] = f"{_reason(e)} (log: {job_log(pdir, jobs[j])}; Slurm: {handle.paths.stderr})"
                    log.info(f"protocol: FAILED {j}: {failures[j]}")
                continue
            if queue is not None and handle.job_id not in queue:
                # left the queue: give the result file a moment to appear on a shared file system
                gone_since.setdefault(j, time.time())
                if time.time() - gone_since[j] > 10:
                    del open_jobs[j]
                    deps_failed = any(d in failures for d in jobs[j].deps)
                    failures[j] = ("not run: a job it depends on failed" if deps_failed else
                                   f"Slurm job {handle.job_id} ended without a result (log: {job_log(pdir, jobs[j])}; "
                                   f"Slurm: {handle.paths.stderr})")
                    log.info(f"protocol: FAILED {j}: {failures[j]}")
        if open_jobs:
            time.sleep(poll)
