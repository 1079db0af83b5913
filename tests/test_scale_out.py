"""The protocol on a real cluster (#31): a plan that any machine makes the same, a local executor that survives its
workers, GPU slots from CUDA_VISIBLE_DEVICES, the memory budget from the cgroup, and Slurm as clusters run it
(sbatch's --time forms, states named, a pending-forever job cancelled, re-attaching after a lost planner).

The Slurm tests talk to the real single-node Slurm that ``.ci/slurm-up`` starts (never a mock): they fail where CI
is set and Slurm is not usable, and are skipped elsewhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ticketctl.errors import UsageError
from ticketctl.protocol import executors
from ticketctl.protocol.hardware import variants


def _env(**more) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **more}


def _journal(out: Path) -> list[dict]:
    path = out / "protocol" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _trained(events: list[dict]) -> list[str]:
    return [e["job"] for e in events if e["event"] == "done" and e["ran"]]


def _need_slurm() -> None:
    why = None
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        why = "Slurm is not installed (run .ci/slurm-up as root)"
    else:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
        if state.returncode != 0 or not {"idle", "mix", "alloc"} & set(state.stdout.split()):
            why = f"no usable Slurm node (sinfo: {state.stdout.strip() or state.stderr.strip()})"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Slurm is not usable: {why}")
        pytest.skip(why)


# ---------------------------------------------------------------------------------------------- any machine


def test_variants_are_fixed_by_the_options_not_the_machine():
    assert variants("cpu", "auto", 0.1) == [("fp32", "ticketctl-cpu"), ("bf16", "ticketctl-cpu")]
    assert variants("cpu", "fp32", 0.1) == [("fp32", "ticketctl-cpu")]
    assert variants("cuda:1", "auto", 0.1) == [("fp32", "torch-cuda"), ("bf16", "torch-cuda")]
    assert variants("auto", "auto", 0.1) == [("fp32", "ticketctl-cpu"), ("bf16", "ticketctl-cpu"),
                                             ("fp32", "torch-cuda"), ("bf16", "torch-cuda"), ("fp32", "torch-mps")]
    assert variants("auto", "bf16", 0.0) == [("bf16", "ticketctl-cpu")]  # no dropout: nothing drawn, one stream


@pytest.mark.parametrize("planner_amx, worker_amx", [(False, "1"), (True, "0")])
def test_planner_on_other_hardware_finds_every_member_and_a_rerun_runs_nothing(cli, tiny_args, tmp_path,
                                                                               monkeypatch, planner_amx,
                                                                               worker_amx):
    """The workers (spawned processes: the environment switch of #30) resolve --precision auto one way, the planner
    (faked in its process alone) the other: every member is still found, the report written, a rerun runs 0 jobs."""
    from ticketctl.train import device

    monkeypatch.setenv("TICKETCTL_CPU_AMX", worker_amx)
    monkeypatch.setattr(device, "cpu_has_amx", lambda: planner_amx)
    args = ["protocol", *tiny_args, "--task", "mrpc", "--seeds", "1-2", "--schemes", "dense,random", "--size", "2",
            "--jobs", "1", "--threads", "1", "--resamples", "199", "--out", tmp_path / "runs", "--report",
            tmp_path / "report"]
    code, out, err = cli(*args)
    assert code == 0, err
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(m["scheme"] for m in data["members"]) == ["dense", "dense", "random", "random"]
    want = "bf16" if worker_amx == "1" else "fp32"
    events = [e for e in _journal(tmp_path / "runs") if e["event"] == "done"]
    assert len(events) == 6 and {e["precision"] for e in events} == {want}
    code, out, err = cli(*args, "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "0 to run, 6 done", out
    code, out, err = cli(*args)
    assert code == 0 and len(_trained(_journal(tmp_path / "runs"))) == 6  # the rerun trained nothing
    # the report's run section over every invocation, from the members' own records (this one trained nothing)
    record = json.loads((tmp_path / "report" / "report.json").read_text())["members_record"]
    assert record["made_on"] == {f"cpu {want} ticketctl-cpu": 4} and record["also_present"] == {}
    assert record["job_seconds"] == pytest.approx(sum(t["finetune_seconds"] + t["search_seconds"] for t in
                                                      json.loads((tmp_path / "report" / "report.json").read_text())
                                                      ["run"]["member_times"]), abs=0.11)
    if planner_amx:
        return
    # the same member made on other hardware too (here fp32 by `finetune`): found, and the report says which it used
    code, out, err = cli("finetune", *tiny_args, "--task", "mrpc", "--seed", "1", "--out", tmp_path / "runs")
    assert code == 0 and out.split()[0].startswith(str(tmp_path / "runs" / "mrpc-logits-dev-dense-s1-")), err
    code, out, err = cli(*args)
    assert code == 0 and len(_trained(_journal(tmp_path / "runs"))) == 6, err
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["members_record"]["also_present"] == {"finetune:dense:s1": ["bf16 ticketctl-cpu"]}
    assert data["members_record"]["made_on"] == {"cpu bf16 ticketctl-cpu": 3, "cpu fp32 ticketctl-cpu": 1}
    assert "finetune:dense:s1: also bf16 ticketctl-cpu" in (tmp_path / "report" / "report.md").read_text()


# ---------------------------------------------------------------------------------------------- local executor


def _echo_gpu(plan, job_id, threads):
    """A stand-in job (module level: it pickles): which GPU its worker was given."""
    return {"job": job_id, "seconds": 0.0, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}


def _dies_on_s1(plan, job_id, threads):
    """A stand-in job whose worker is killed mid-job (as the out-of-memory killer does) for seed 1."""
    if job_id.endswith(":s1"):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"job": job_id, "seconds": 0.0, "pid": os.getpid()}


class _Log:
    def __init__(self):
        self.lines = []

    def info(self, text):
        self.lines.append(text)


def _plan(**run):
    from dataclasses import replace

    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol.plan import build

    plan = build({"seeds": "1-4", "schemes": "dense", "size": "2"}, TrainConfig(), DataOptions(),
                 RunOptions())
    return replace(plan, run=replace(plan.run, **run))


def test_inherited_cuda_visible_devices_pin_the_workers(monkeypatch, tmp_path):
    assert executors.gpu_ids(2, {"CUDA_VISIBLE_DEVICES": "4,5"}) == ["4", "5"]
    assert executors.gpu_ids(2, {"CUDA_VISIBLE_DEVICES": "GPU-8f2c,MIG-1a2b"}) == ["GPU-8f2c", "MIG-1a2b"]
    assert executors.gpu_ids(3, {}) == ["0", "1", "2"]
    monkeypatch.setattr(executors, "gpu_count", lambda: 2)  # the GPU count faked: CUDA is not needed here
    monkeypatch.setattr(executors, "cores", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    plan = _plan(device="auto")
    jobs = plan.jobs_graph()
    results, failures, workers = executors.run_local(plan, jobs, list(jobs), set(), _echo_gpu, tmp_path, _Log())
    assert not failures and {r["gpu"] for r in results.values()} == {"4", "5"} and "on GPU(s) 4,5" in workers
    # --device cuda:1: every job on the second GPU given (5), which its worker sees as its only one
    results, failures, _ = executors.run_local(_plan(device="cuda:1"), jobs, list(jobs), set(), _echo_gpu, tmp_path,
                                               _Log())
    assert not failures and {r["gpu"] for r in results.values()} == {"5"}
    with pytest.raises(UsageError, match=r"--device cuda:2: only 2 GPU\(s\) \(cuda:0..cuda:1\)"):
        executors.check_local_device("cuda:2")
    monkeypatch.setattr(executors, "gpu_count", lambda: 0)
    with pytest.raises(UsageError, match="--device cuda: no CUDA device is available"):
        executors.check_local_device("cuda")


def test_a_killed_worker_fails_only_its_job(tmp_path):
    plan = _plan(device="cpu")
    jobs = plan.jobs_graph()
    log = _Log()
    results, failures, _ = executors.run_local(plan, jobs, list(jobs), set(), _dies_on_s1, tmp_path, log)
    assert sorted(results) == ["finetune:dense:s2", "finetune:dense:s3", "finetune:dense:s4"]
    assert list(failures) == ["finetune:dense:s1"]
    assert failures["finetune:dense:s1"].startswith("its worker was killed by signal 9 (SIGKILL; the out-of-memory "
                                                    "killer sends it: likely out of memory) (log: ")


def test_kill_9_of_a_worker_mid_job_exit_4_no_traceback_and_a_rerun_runs_only_that_job(tiny_model, glue_dir,
                                                                                      tmp_path):
    cmd = [sys.executable, "-m", "ticketctl", "protocol", "--task", "mrpc", "--model", str(tiny_model), "--data-dir",
           str(glue_dir), "--epochs", "3", "--batch-size", "4", "--device", "cpu", "--seeds", "1-2", "--schemes",
           "dense", "--size", "2", "--jobs", "1", "--threads", "1", "--resamples", "199", "--out", "runs"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    deadline = time.time() + 120
    while time.time() < deadline and not _journal(tmp_path / "runs") and proc.poll() is None:
        time.sleep(0.05)
    first = _journal(tmp_path / "runs")[0]
    os.kill(first["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    events = _journal(tmp_path / "runs")
    assert not [e for e in events if e["job"] == first["job"] and e["event"] == "done"], "finished before the kill"
    assert proc.returncode == 4 and out == "" and "Traceback" not in err, err
    mine = [line for line in err.splitlines() if line.startswith(f"ticketctl: error: {first['job']} failed:")]
    assert len(mine) == 1 and "killed by signal 9 (SIGKILL" in mine[0]
    assert f"runs/protocol/logs/mrpc-{first['job'].replace(':', '-')}.log" in mine[0]
    assert len(_trained(events)) == 1  # the other job finished
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    assert _trained(_journal(tmp_path / "runs")[len(events):]) == [first["job"]]


def test_several_tasks_run_in_one_pool_each_with_its_report(cli, tiny_args, tmp_path):
    """--task mrpc --task rte on 2 workers: rte's first job starts while mrpc's jobs still run (one pool over every
    task's jobs; they ran one task after another), each job's log names its task, and each task gets its report."""
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--task", "rte", "--seeds", "1-3", "--schemes",
                         "dense", "--size", "2", "--jobs", "2", "--threads", "1", "--resamples", "199", "--out",
                         tmp_path / "runs", "--report", tmp_path / "report")
    assert code == 0, err
    assert out.splitlines() == [str(tmp_path / "report" / t / "report.md") for t in ("mrpc", "rte")]
    events = _journal(tmp_path / "runs")
    assert sorted((e["task"], e["job"]) for e in events if e["event"] == "done" and e["ran"]) == \
        [(t, f"finetune:dense:s{s}") for t in ("mrpc", "rte") for s in (1, 2, 3)]
    first_rte = min(e["time"] for e in events if e["task"] == "rte" and e["event"] == "start")
    assert first_rte < max(e["time"] for e in events if e["task"] == "mrpc" and e["event"] == "done")
    assert sorted(p.name for p in (tmp_path / "runs" / "protocol" / "logs").iterdir()) == \
        [f"{t}-finetune-dense-s{s}.log" for t in ("mrpc", "rte") for s in (1, 2, 3)]


def test_memory_budget_reads_the_cgroup_limit_and_the_model(tmp_path):
    (tmp_path / "cg" / "user.slice" / "job").mkdir(parents=True)
    (tmp_path / "cg" / "user.slice" / "job" / "memory.max").write_text("max\n")
    (tmp_path / "cg" / "user.slice" / "memory.max").write_text(str(7 * 2**30) + "\n")
    (tmp_path / "self").write_text("0::/user.slice/job\n")
    assert executors.cgroup_memory_limit(tmp_path / "self", tmp_path / "cg") == 7 * 2**30  # a parent's limit holds
    (tmp_path / "v1" / "memory" / "slurm").mkdir(parents=True)
    (tmp_path / "v1" / "memory" / "slurm" / "memory.limit_in_bytes").write_text(str(5 * 2**30))
    (tmp_path / "self1").write_text("12:cpu,cpuacct:/slurm\n9:memory:/slurm\n")
    assert executors.cgroup_memory_limit(tmp_path / "self1", tmp_path / "v1") == 5 * 2**30
    assert executors.cgroup_memory_limit(tmp_path / "missing", tmp_path / "cg") is None
    assert executors.memory_jobs(2.5, cgroup_limit=7 * 2**30) == 2  # 7 GB hold two 2.5 GB jobs, whatever the RAM
    model = tmp_path / "bert-base"
    model.mkdir()
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(440 * 2**20)  # BERT-base's size (sparse: no disk used)
    assert executors.job_memory_gb(model) == pytest.approx(1.5 + 8 * 440 / 1024)
    assert executors.job_memory_gb(tmp_path / "nothing-here") == executors.JOB_MEMORY_GB


# ---------------------------------------------------------------------------------------------- Slurm


TIME_SPELLINGS = ["30", "30:00", "1:30", "0:59", "1:00:00", "2-12", "2-12:30", "1-2:03:04", "90"]


def test_slurm_time_is_read_as_sbatch_reads_it():
    """Every spelling of sbatch --time, submitted to the real Slurm and read back from `scontrol show job`."""
    assert [executors.slurm_minutes(t) for t in ("30:00", "2-12", "90", "1:30")] == [30, 3600, 90, 2]
    for bad in ("1h", "UNLIMITED", "0", "1:2:3:4"):
        with pytest.raises(UsageError, match="--slurm-time"):
            executors.slurm_minutes(bad)
    _need_slurm()
    for spec in TIME_SPELLINGS:
        sub = subprocess.run(["sbatch", "--parsable", "--hold", "-J", "ticketctl-time-test", f"--time={spec}",
                              "--wrap", "true", "-o", "/dev/null"], capture_output=True, text=True)
        assert sub.returncode == 0, sub.stderr
        slurm_id = sub.stdout.strip().split(";")[0]
        try:
            shown = executors.parse_scontrol_job(subprocess.run(["scontrol", "show", "job", slurm_id],
                                                                capture_output=True, text=True).stdout)
        finally:
            subprocess.run(["scancel", slurm_id])
        limit = shown["TimeLimit"]  # [D-]HH:MM:SS
        days, _, hms = limit.rpartition("-")
        h, m, s = (int(x) for x in hms.split(":"))
        minutes = int(days or 0) * 1440 + h * 60 + m + (s > 0)
        assert executors.slurm_minutes(spec) == minutes, (spec, limit)


RECORDED_SCONTROL_OOM = """JobId=4242 JobName=ticketctl:mrpc:finetune:dense:s3
   UserId=ana(1000) GroupId=ana(1000) MCS_label=N/A
   Priority=1 Nice=0 Account=lab QOS=normal
   JobState=OUT_OF_MEMORY Reason=OutOfMemory Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:125
   RunTime=00:03:12 TimeLimit=1-00:00:00 TimeMin=N/A
"""
RECORDED_SACCT_PREEMPTED = """4243|PREEMPTED|0:0
4243.batch|CANCELLED|0:15
4243.extern|COMPLETED|0:0
4244_3|CANCELLED by 1000|0:0
"""


def test_states_clusters_report_are_named_from_recorded_output():
    """OUT_OF_MEMORY and PREEMPTED cannot happen on CI's Slurm: read from output recorded on clusters."""
    fields = executors.parse_scontrol_job(RECORDED_SCONTROL_OOM)
    assert (fields["JobState"], fields["ExitCode"]) == ("OUT_OF_MEMORY", "0:125")
    assert executors.describe_end("OUT_OF_MEMORY", "0:125") == \
        "OUT_OF_MEMORY: it ran out of memory (give more with --slurm-mem), killed by signal 125"
    rows = executors.parse_sacct(RECORDED_SACCT_PREEMPTED)
    assert rows == {"4243": ("PREEMPTED", "0:0"), "4244_3": ("CANCELLED", "0:0")}
    assert executors.describe_end(*rows["4243"]) == "PREEMPTED: it was preempted"
    assert executors.describe_end("TIMEOUT", "0:0") == "TIMEOUT: it reached its time limit (give more with " \
                                                       "--slurm-time)"
    assert executors.describe_end("FAILED", "0:9") == "FAILED: it failed, killed by signal 9"


def test_a_failed_slurm_job_is_named_by_what_it_raised_and_the_warning_fits_short_limits():
    """submitit's FailedJobError carries the job's traceback, then log paths: the line reported is the exception."""
    from submitit.core.utils import FailedJobError

    def failed(last: str) -> FailedJobError:  # the message submitit's Job.exception() builds
        trace = f"Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n{last}"
        return FailedJobError(f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
                              f"----------------------\nYou can check full logs with 'job.stderr(0)' and "
                              f"'job.stdout(0)'or at paths:\n  - /o/7_0_log.err\n  - /o/7_0_log.out")

    assert executors.job_failure(failed("ticketctl.errors.InputError: runs/x: not a mask"), "7", 3) == \
        "InputError: runs/x: not a mask"
    assert executors.job_failure(RuntimeError("boom"), "7", 3) == "RuntimeError: boom"
    # Slurm signals up to 30 s before the time asked: a short limit gets a sixth of it, so the job runs first
    assert [executors.warning_seconds(m) for m in (1, 2, 5, 9, 1440)] == [10, 20, 50, 90, 90]


@pytest.mark.parametrize("args, message", [
    (["--slurm-max-requeues", "-1"], "--slurm-max-requeues must be >= 0"),
    (["--slurm-time", "1h"], "--slurm-time '1h': give sbatch's --time forms"),
    (["--slurm-mem", "lots"], "--slurm-mem 'lots': give memory per job as sbatch --mem takes it"),
    (["--slurm-gpus-per-job", "2"], "--slurm-gpus-per-job 2: a protocol job trains one process on one GPU"),
    (["--executor", "local", "--report", "FILE/report"], "/FILE is not a folder, so the report cannot be written"),
    (["--executor", "local", "--detach"], "--detach belongs to an executor whose jobs outlive the command "
                                          "(--executor slurm)"),
])
def test_slurm_options_that_cannot_apply_are_one_line(cli, tiny_args, tmp_path, args, message):
    (tmp_path / "FILE").write_text("a file where the report's folder would go\n")
    args = [str(tmp_path / a) if a.startswith("FILE") else a for a in args]
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--out", tmp_path / "runs", "--seeds", "1-2",
                         "--schemes", "dense", "--executor", "slurm", *args)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.rglob("*.safetensors"))


def _slurm_cmd(tiny_model, glue_dir, *args) -> list[str]:
    return [sys.executable, "-m", "ticketctl", "protocol", "--task", "mrpc", "--model", str(tiny_model), "--data-dir",
            str(glue_dir), "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--seeds",
            "1-2", "--schemes", "dense", "--size", "2", "--resamples", "199", "--out", "runs", "--report", "report",
            "--executor", "slurm", *map(str, args)]


def test_slurm_job_pending_for_a_partition_limit_is_reported_and_cancelled(tiny_model, glue_dir, tmp_path):
    _need_slurm()
    part = f"tctl-short-{os.getpid()}"
    made = subprocess.run(["scontrol", "create", f"PartitionName={part}", "Nodes=ALL", "MaxTime=1", "State=UP"],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    try:
        proc = subprocess.run(_slurm_cmd(tiny_model, glue_dir, "--slurm-partition", part, "--slurm-time", "5"),
                              cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
        ids = executors.recorded_jobs(tmp_path / "runs" / "protocol")
        assert proc.returncode == 4 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ticketctl: error: finetune")]
        # Slurm names it PartitionTimeLimit (a single job) or PartitionConfig (this array's tasks)
        assert len(errors) == 2 and all(re.search(r"was pending with reason Partition(TimeLimit|Config), which never "
                                                  r"clears \(partition tctl-short-\d+'s MaxTime is 00:01:00\).*; "
                                                  r"cancelled", e) for e in errors), proc.stderr
        assert executors.queue_states(list(ids.values())) == {}  # cancelled: nothing of this run left in Slurm
    finally:
        subprocess.run(["scontrol", "delete", f"PartitionName={part}"], capture_output=True)


def test_slurm_detach_exits_at_once_and_the_report_job_writes_the_report(tiny_model, glue_dir, tmp_path):
    """--detach submits the jobs and the report as a job that runs after them (afterany), prints their ids and exits
    0 while they are still queued (they begin 60 s after submission); --status shows them, a rerun re-attaches and
    submits nothing twice; the report appears when the report job has run."""
    _need_slurm()
    cmd = _slurm_cmd(tiny_model, glue_dir, "--slurm-time", "10", "--slurm-extra", "--begin=now+60")
    proc = subprocess.run([*cmd, "--detach"], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    queue = executors.queue_states([r[-1] for r in rows])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert [r[0] for r in rows] == ["finetune:dense:s1", "finetune:dense:s2", "report"], proc.stdout
    assert {i: s for i, (s, _) in queue.items()} == {r[1]: "PENDING" for r in rows}  # it did not wait for them
    assert not (tmp_path / "report").exists()
    report_id = rows[-1][1]
    fields = executors.parse_scontrol_job(subprocess.run(["scontrol", "show", "job", report_id], capture_output=True,
                                                         text=True).stdout)
    assert all(f"afterany:{r[1]}" in fields["Dependency"] for r in rows[:-1]), fields.get("Dependency")
    _await_reasons({report_id: "Dependency"})
    status = subprocess.run([*cmd, "--status"], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-2:] == [f"report\tPENDING (Dependency)\t{report_id}",
                                               "0 done, 2 in Slurm, 0 to run"]
    again = subprocess.run([*cmd, "--detach"], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr
    assert "re-attached to 2 Slurm job(s)" in again.stderr
    pdir = tmp_path / "runs" / "protocol"
    assert len((pdir / executors.JOBS_TSV).read_text().splitlines()) == 3  # nothing submitted twice
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "report" / "report.md").exists():
        time.sleep(1)
    assert (tmp_path / "report" / "report.md").exists(), list((pdir / "slurm").rglob("*.err"))
    assert sorted(_trained(_journal(tmp_path / "runs"))) == ["finetune:dense:s1", "finetune:dense:s2"]
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    assert rerun.returncode == 0 and "0 to run" in rerun.stderr, rerun.stderr


def _await_reasons(wanted: dict[str, str], seconds: float = 30) -> None:
    """Wait (at most ``seconds``) until squeue shows each job of ``wanted`` pending for its reason: a new job's
    reason reads None until the scheduler's first pass over it, later on a loaded machine."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        queue = executors.queue_states(list(wanted)) or {}
        if all(queue.get(i) == ("PENDING", r) for i, r in wanted.items()):
            return
        time.sleep(0.2)


def _submit_and_lose_the_planner(cmd, cwd, pdir, jobs: int = 2) -> dict:
    """Start the protocol command, kill it (a lost login session) once ``slurm-jobs.tsv`` records ``jobs``
    submitted jobs (at most 60 s), and return what it recorded."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 60
    while time.time() < deadline and len(executors.recorded_jobs(pdir, "mrpc")) < jobs:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    return executors.recorded_jobs(pdir, "mrpc")


def test_slurm_planner_killed_after_submission_rerun_reattaches_never_submitting_twice(tiny_model, glue_dir,
                                                                                     tmp_path):
    """The jobs wait 15 s to start (sbatch --begin), so the rerun finds them queued: it re-attaches to them, and
    Slurm's own completion records hold one job per protocol job."""
    _need_slurm()
    cmd = _slurm_cmd(tiny_model, glue_dir, "--slurm-time", "10", "--slurm-extra", "--begin=now+15")
    pdir = tmp_path / "runs" / "protocol"
    first = _submit_and_lose_the_planner(cmd, tmp_path, pdir)
    assert len(first) == 2, "the planner was not killed after submitting"
    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=240)
    assert again.returncode == 0, again.stderr
    assert "re-attached to 2 Slurm job(s)" in again.stderr, again.stderr
    assert executors.recorded_jobs(pdir, "mrpc") == first
    assert len((pdir / executors.JOBS_TSV).read_text().splitlines()) == 2
    assert sorted(_trained(_journal(tmp_path / "runs"))) == ["finetune:dense:s1", "finetune:dense:s2"]
    assert (tmp_path / "report" / "report.md").exists()
    deadline = time.time() + 30  # Slurm's completion records: jobs that ran in this folder
    records: list[str] = []
    while time.time() < deadline and len(records) < 2:
        log = Path("/var/log/slurm/jobcomp.log")
        records = [r for r in (log.read_text().splitlines() if log.exists() else []) if f"WorkDir={tmp_path} " in r]
        time.sleep(0.5)
    assert len(records) == 2, records


def test_slurm_job_killed_is_failed_with_its_signal_and_one_cancelled_is_cancelled(tiny_model, glue_dir, tmp_path):
    """Three finetunes, two at a time: the first one's process gets kill -9 mid-job, the third is scancel'ed while
    it waits; the second finishes. Each failure is named by Slurm's state, with its log."""
    _need_slurm()
    cmd = [*_slurm_cmd(tiny_model, glue_dir, "--slurm-time", "10", "--slurm-array-parallelism", "2"), "--seeds",
           "1-3", "--epochs", "40"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())
    pdir = tmp_path / "runs" / "protocol"
    deadline = time.time() + 60
    while time.time() < deadline and len(executors.recorded_jobs(pdir, "mrpc")) < 3:
        time.sleep(0.1)
    ids = executors.recorded_jobs(pdir, "mrpc")
    subprocess.run(["scancel", ids["finetune:dense:s3"]], check=True)
    started = []
    while time.time() < deadline and not started:
        started = [e for e in _journal(tmp_path / "runs") if e["event"] == "start" and e["job"] == "finetune:dense:s1"]
        time.sleep(0.05)
    assert started, "finetune:dense:s1 never started"
    time.sleep(1)
    os.kill(started[0]["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 4 and "Traceback" not in err, err
    errors = {line.split(" failed: ")[0].split()[-1]: line.split(" failed: ")[1] for line in err.splitlines()
              if line.startswith("ticketctl: error: finetune")}
    assert sorted(errors) == ["finetune:dense:s1", "finetune:dense:s3"], err
    assert errors["finetune:dense:s1"].startswith(f"Slurm job {ids['finetune:dense:s1']} FAILED: it failed"), err
    assert "signal 9" in errors["finetune:dense:s1"]
    assert "log: runs/protocol/logs/mrpc-finetune-dense-s1.log" in errors["finetune:dense:s1"]
    assert errors["finetune:dense:s3"].startswith(f"Slurm job {ids['finetune:dense:s3']} CANCELLED: it was "
                                                  f"cancelled"), err
    assert _trained(_journal(tmp_path / "runs")) == ["finetune:dense:s2"]


def test_slurm_search_signalled_near_its_limit_is_requeued_and_resumes_from_its_last_round(tiny_model, glue_dir,
                                                                                           tmp_path):
    """``scancel --signal=USR2`` after the first IMP round, as Slurm signals a job 90 s before its limit or on
    preemption: the job is requeued under its id, resumes from its round-1 checkpoint, and the mask and the ticket's
    logits are those of an uninterrupted run. (Slurm holds a requeued job about 2 minutes before it may start
    again; the test lets it start 1.5 s later with ``scontrol update StartTime=now``.)"""
    _need_slurm()
    opts = ["--schemes", "random", "--seeds", "1", "--size", "1", "--search-epochs", "300"]
    local = tmp_path / "local"
    local.mkdir()
    cmd = _slurm_cmd(tiny_model, glue_dir, "--slurm-time", "10")
    proc = subprocess.run([*cmd[:cmd.index("--executor")], *opts], cwd=local, capture_output=True, text=True,
                          env=_env())
    assert proc.returncode == 0, proc.stderr
    run = subprocess.Popen([*cmd, *opts], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=_env())
    pdir = tmp_path / "runs" / "protocol"
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "runs" / "cache").glob("mrpc-round1-random-s1-*")):
        time.sleep(0.1)
    slurm_id = executors.recorded_jobs(pdir, "mrpc")["search:random:s1"]
    assert not list((tmp_path / "runs").glob("mrpc-mask-random-*-s1-*")), "the search ended before the signal"
    subprocess.run(["scancel", "--signal=USR2", slurm_id], check=True)
    while time.time() < deadline:  # requeued: pending again under its id; let it start, but not within the
        # second of the requeue: slurmd revokes the old launch credential by the second and kills a start inside it
        state = executors.queue_states([slurm_id]).get(slurm_id, ("", ""))
        if state == ("PENDING", "BeginTime"):
            time.sleep(1.5)
            subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)
            break
        time.sleep(0.2)
    out, err = run.communicate(timeout=180)
    assert run.returncode == 0, err
    fields = executors.parse_scontrol_job(subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True,
                                                         text=True).stdout)
    assert fields["Restarts"] == "1" and fields["JobState"] == "COMPLETED"
    log = (pdir / "logs" / "mrpc-search-random-s1.log").read_text()
    assert "round 1/3: finished already, resuming from" in log
    from ticketctl.store.artifacts import read_artifact

    for pattern in ("mrpc-mask-random-*-s1-*", "mrpc-logits-dev-random-s1-*"):
        mine, theirs = list((tmp_path / "runs").glob(pattern)), list((local / "runs").glob(pattern))
        assert len(mine) == len(theirs) == 1 and mine[0].name == theirs[0].name
        a, b = read_artifact(mine[0]).tensors, read_artifact(theirs[0]).tensors
        assert set(a) == set(b) and all((a[k] == b[k]).all() for k in a)


def test_slurm_every_tasks_jobs_are_submitted_together_and_one_tasks_failure_stops_only_it(tiny_model, glue_dir,
                                                                                          tmp_path):
    """--task mrpc --task rte: both tasks' jobs are in Slurm's queue at once (held 20 s by --begin), named and
    recorded by their task; rte's job cancelled while it waits fails rte alone: mrpc's report is written, exit 4;
    the rerun runs only rte's job and writes rte's report."""
    _need_slurm()
    cmd = [*_slurm_cmd(tiny_model, glue_dir, "--slurm-time", "10"), "--task", "rte", "--seeds", "1", "--size", "1"]
    pdir = tmp_path / "runs" / "protocol"
    proc = subprocess.Popen([*cmd, "--slurm-extra", "--begin=now+20"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 60
    while time.time() < deadline and len(executors.recorded_jobs(pdir)) < 2 and proc.poll() is None:
        time.sleep(0.1)
    ids = executors.recorded_jobs(pdir)
    queue = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(ids.values()), "-o", "%i|%T|%j"],
                           capture_output=True, text=True).stdout.split()
    assert sorted(ids) == ["mrpc:finetune:dense:s1", "rte:finetune:dense:s1"], ids
    assert sorted(queue) == sorted(f"{i}|PENDING|ticketctl:mrpc+rte:wave1-2-jobs" for i in ids.values()), queue
    subprocess.run(["scancel", ids["rte:finetune:dense:s1"]], check=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 4 and "Traceback" not in err, err
    assert out.splitlines() == ["report/mrpc/report.md"], out
    errors = [line for line in err.splitlines() if line.startswith("ticketctl: error: rte finetune:dense:s1 failed: ")]
    assert len(errors) == 1 and "CANCELLED" in errors[0] and "runs/protocol/logs/rte-finetune-dense-s1.log" in errors[0]
    rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.splitlines() == ["report/mrpc/report.md", "report/rte/report.md"]
    assert sorted((e["task"], e["job"]) for e in _journal(tmp_path / "runs") if e["event"] == "done" and e["ran"]) == \
        [("mrpc", "finetune:dense:s1"), ("rte", "finetune:dense:s1")]


def _scontrol(slurm_id: str) -> dict[str, str]:
    return executors.parse_scontrol_job(subprocess.run(["scontrol", "show", "job", slurm_id], capture_output=True,
                                                       text=True).stdout)


def test_slurm_real_timeout_is_requeued_up_to_its_bound_then_reported(tiny_model, glue_dir, tmp_path):
    """A real time limit: the job waits without CPU on its own identity's lock, which the test holds, under
    ``--slurm-time 1``. Slurm signals it 10 s before its limit (``executors.warning_seconds``; its controller looks
    every 30 s, so 20-50 s after the start); submitit requeues it, once (``--slurm-max-requeues 1``; the test lets
    the requeued job start 1.5 s after its requeue instead of Slurm's 2 minutes: a start within the same second is
    refused); signalled again, it is reported TIMEOUT in one line with the times it was requeued, exit 4."""
    _need_slurm()
    from filelock import FileLock

    cmd = [*_slurm_cmd(tiny_model, glue_dir, "--slurm-time", "1", "--slurm-max-requeues", "1"), "--seeds", "1",
           "--size", "1", "--precision", "fp32"]
    dry = subprocess.run([*cmd, "--dry-run"], cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    assert dry.returncode == 0 and dry.stdout.splitlines()[-1] == "1 to run, 0 done", dry.stderr
    artifact = Path(dry.stdout.splitlines()[0].split("\t")[3]).name  # the identity the job locks (fp32: one variant)
    pdir = tmp_path / "runs" / "protocol"
    (pdir / "locks").mkdir(parents=True)
    lock = FileLock(str(pdir / "locks" / f"{artifact}.lock"))
    lock.acquire(timeout=5)
    try:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env())
        deadline = time.time() + 240
        while time.time() < deadline and "finetune:dense:s1" not in executors.recorded_jobs(pdir, "mrpc"):
            time.sleep(0.1)
        slurm_id = executors.recorded_jobs(pdir, "mrpc")["finetune:dense:s1"]
        released = 0
        while proc.poll() is None and time.time() < deadline:
            fields = _scontrol(slurm_id)
            if (fields.get("JobState"), fields.get("Reason"), fields.get("Restarts")) == ("PENDING", "BeginTime",
                                                                                          str(released + 1)):
                time.sleep(1.5)  # not within the second of the requeue: slurmd refuses that start
                subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"], check=True)
                released += 1
            time.sleep(0.2)
        out, err = proc.communicate(timeout=30)
    finally:
        lock.release()
    assert proc.returncode == 4 and out == "" and "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("ticketctl: error: ")]
    assert errors[0].startswith(f"ticketctl: error: finetune:dense:s1 failed: Slurm job {slurm_id} TIMEOUT: "
                                f"requeued 1 time(s) (--slurm-max-requeues 1) and still unfinished at its time limit: "
                                f"give a longer --slurm-time (log: runs/protocol/logs/mrpc-finetune-dense-s1.log; "
                                f"Slurm: "), err
    assert len(errors) == 2 and errors[1].startswith("ticketctl: error: 1 of 1 jobs failed"), err
    assert released == 1 and _scontrol(slurm_id)["Restarts"] == "1"
    events = _journal(tmp_path / "runs")
    assert [e["event"] for e in events] == ["start", "start"]  # two starts, never done: it waited on the lock
    log = (pdir / "logs" / "mrpc-finetune-dense-s1.log").read_text()
    assert log.count("stopped by Slurm's signal (requeued") == 1 and "timed-out too many times" in log, log
    signalled = (pdir / "slurm" / slurm_id / f"{slurm_id}_0_log.out").read_text()  # Slurm's signals, not the test's
    assert signalled.count("Caught signal SIGUSR2") == 2 and signalled.count("this job is timed-out") == 2, signalled


def test_slurm_status_and_cancel_after_the_planner_is_gone(tiny_model, glue_dir, tmp_path):
    _need_slurm()
    cmd = _slurm_cmd(tiny_model, glue_dir, "--slurm-time", "10", "--slurm-extra", "--begin=now+300")
    pdir = tmp_path / "runs" / "protocol"
    ids = _submit_and_lose_the_planner(cmd, tmp_path, pdir)
    try:
        _await_reasons({i: "BeginTime" for i in ids.values()})
        shown = subprocess.run([*cmd, "--status"], cwd=tmp_path, capture_output=True, text=True, env=_env())
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines() == [f"finetune:dense:s1\tPENDING (BeginTime)\t{ids['finetune:dense:s1']}",
                                             f"finetune:dense:s2\tPENDING (BeginTime)\t{ids['finetune:dense:s2']}",
                                             "0 done, 2 in Slurm, 0 to run"]
        cancelled = subprocess.run([*cmd, "--cancel"], cwd=tmp_path, capture_output=True, text=True, env=_env())
        assert cancelled.returncode == 0 and cancelled.stderr.startswith("cancelled 2 Slurm job(s): "), cancelled.stderr
        assert executors.queue_states(list(ids.values())) == {}
        shown = subprocess.run([*cmd, "--status"], cwd=tmp_path, capture_output=True, text=True, env=_env())
        assert shown.stdout.splitlines()[-1] == "0 done, 0 in Slurm, 2 to run"
    finally:
        subprocess.run(["scancel", *ids.values()])


# ---------------------------------------------------------------------------------------------- shared file systems


def test_job_lock_on_a_file_system_without_flock_and_a_stale_lock_of_a_dead_process(tmp_path, monkeypatch):
    import errno
    import fcntl
    import socket

    from ticketctl.protocol.runner import job_lock

    def no_flock(*args, **kwargs):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)  # NFS without lockd, Lustre without flock (faked)
    path = tmp_path / "job.lock"
    with job_lock(path, timeout=5):
        with pytest.raises(TimeoutError):  # still exclusive
            with job_lock(path, timeout=0.5, poll=0.1):
                pass
    with job_lock(path, timeout=5):  # released
        pass
    # a lock left by a killed job: its process is gone; the next job takes it instead of waiting for ever
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = job_lock(path, timeout=5, poll=0.1)
    lock.owner.write_text(f"{socket.gethostname()} {dead.pid}\n")
    lock._acquire_owner_file()
    assert lock.owner.read_text().split()[1] == str(os.getpid())
    lock.__exit__(None, None, None)
    # a live owner on another node is waited for (here: until the timeout)
    lock.owner.write_text("another-node 1\n")
    with pytest.raises(TimeoutError, match="held by another-node 1"):
        job_lock(path, timeout=0.3, poll=0.1)._acquire_owner_file()
    lock.owner.unlink()
