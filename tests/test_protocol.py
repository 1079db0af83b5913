"""``ticketctl protocol``: the whole protocol in one command, on the tiny model (docs/protocol.md "The whole protocol in one
command"). The report's numbers are compared with the analysis commands run on the same artifacts, a protocol
member with the one ``search`` + ``finetune`` make, a killed run's rerun with an uninterrupted run."""

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

import numpy as np
import pytest

from ticketctl.errors import UsageError

SEEDS = "1-4"
ALL = "dense,bagging,base,active,random"


def _options(tiny_model, glue_dir) -> list[str]:
    return ["--task", "mrpc", "--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu"]


def _protocol(tiny_model, glue_dir, *args) -> list[str]:
    return [sys.executable, "-m", "ticketctl", "protocol", *_options(tiny_model, glue_dir), "--seeds", SEEDS,
            "--out", "runs", "--report", "report", "--resamples", "199", "--size", "2-3", *map(str, args)]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(cmd, cwd, check=True):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env())
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _journal(out: Path) -> list[dict]:
    path = out / "protocol" / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _trained(events: list[dict]) -> list[str]:
    return [e["job"] for e in events if e["event"] == "done" and e["ran"]]


def _tensors(path: Path) -> dict:
    from ticketctl.store.artifacts import read_artifact

    return read_artifact(path).tensors


def _artifacts(out: Path, schemes=None) -> dict[str, Path]:
    found = {p.name: p for p in out.glob("mrpc-*.safetensors")}
    if schemes is None:
        return found
    return {n: p for n, p in found.items() if re.match(rf"mrpc-(logits-dev|mask)-({'|'.join(schemes)})-", n)}


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    return set(ta) == set(tb) and all(np.array_equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def full_run(tiny_model, glue_dir, tmp_path_factory):
    """All five schemes for 4 seeds, 2 jobs x 1 thread: (folder, the run's process)."""
    folder = tmp_path_factory.mktemp("protocol")
    proc = _run(_protocol(tiny_model, glue_dir, "--schemes", ALL, "--jobs", 2, "--threads", 1), folder)
    return folder, proc


def _analysis_json(args: list[str]) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "ticketctl", *args, "--format", "json"], capture_output=True,
                          text=True, env=_env())
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.mark.slow
def test_local_run_writes_every_table_and_figure_as_the_analysis_commands_compute_them(full_run):
    folder, proc = full_run
    report = folder / "report"
    assert proc.stdout.strip() == "report/report.md"
    assert {p.name for p in report.iterdir()} == {"report.md", "report.json", "plan.toml", "mrpc-fig3-gain.png",
                                                   "mrpc-fig4-iou.png", "mrpc-reliability.png", "mrpc-frontier.png"}
    data = json.loads((report / "report.json").read_text())
    members = {m["scheme"]: [] for m in data["members"]}
    for m in data["members"]:
        members[m["scheme"]].append(str(folder / m["path"]))
    assert {s: len(p) for s, p in members.items()} == {s: 4 for s in ALL.split(",")}
    assert _trained(_journal(folder / "runs")).__len__() == 32  # 20 finetunes + 12 searches, each once
    assert data["run"]["members_trained"] == 20 and data["run"]["workers"] == "2 job(s) x 1 thread(s)"

    # Table 1: as `stats` computes it from the same artifacts (k = 3 of --size 2-3)
    logits = [p for s in ALL.split(",") for p in members[s]]
    expected = {r["group"]: r for r in _analysis_json(["stats", *logits, "--size", "3", "--resamples", "199"])}
    for row in data["table1"]:
        want = expected[row["group"]]
        for key in ("single_mean", "ensemble_mean", "ensemble_gain", "vs_ref", "diff_low", "diff_high", "p_value",
                    "p_single", "p_paper"):
            if want.get(key) is None:
                assert row.get(key) is None, (row["group"], key)
            else:
                assert row[key] == pytest.approx(want[key]), (row["group"], key)
    # probability calibration: stats --score's rows (8 dev examples: too few to cross-fit a temperature)
    assert data["calibration"]["metrics"] == ["nll", "brier", "ece"]
    assert data["calibration"]["skipped"] == ["ts_nll", "ts_ece"]
    for name in data["calibration"]["metrics"]:
        want = {r["group"]: r for r in _analysis_json(["stats", *logits, "--size", "3", "--resamples", "199",
                                                        "--score", name])}
        for row in (r for r in data["calibration"]["rows"] if r["metric"] == name):
            for key in ("single_mean", "ensemble_mean", "vs_ref", "diff_low", "diff_high", "p_value", "p_single"):
                expected = want[row["group"]].get(key)
                got = row.get(key)
                assert got is None if expected is None else got == pytest.approx(expected), (name, row["group"], key)
            assert row["verdict"] == want[row["group"]]["verdict"]
    assert set(data["calibration"]["reliability"]) == set(ALL.split(","))
    # the split of the difference: single part + ensembling part = vs_ref, single part's p is stats' p_single
    t1 = {r["group"]: r for r in data["table1"]}
    for part in data["parts"]:
        g = part["group"]
        assert part["single_diff"] == pytest.approx(t1[g]["single_mean"] - t1["dense"]["single_mean"])
        assert part["ensembling_diff"] == pytest.approx(t1[g]["ensemble_gain"] - t1["dense"]["ensemble_gain"])
        assert part["single_diff"] + part["ensembling_diff"] == pytest.approx(t1[g]["vs_ref"])
        assert part["p_single"] == pytest.approx(t1[g]["p_single"])
    # the cost frontier: `stats --by scheme --cost`'s rows (which show `on_frontier` only under --score)
    want = _analysis_json(["stats", *logits, "--by", "scheme", "--cost"])
    assert [{k: v for k, v in r.items() if v is not None and k != "on_frontier"}
            for r in data["frontier"]["rows"]] == [
        {k: (pytest.approx(v) if isinstance(v, float) else v) for k, v in r.items() if v is not None} for r in want]
    # Table 2: `diversity` of each scheme's members
    for scheme, rows in data["table2"].items():
        want = _analysis_json(["diversity", *members[scheme]])
        assert [(r["metric"], r["value"]) for r in rows] == [(r["metric"], pytest.approx(r["value"])) for r in want]
    # Figure 4: `iou` of the tickets' masks
    masks = [str(folder / p) for p in data["figure4"]["masks"]]
    assert len(masks) == 12
    want = _analysis_json(["iou", *masks])
    assert np.allclose(data["figure4"]["iou"], [[r[c] for c in data["figure4"]["labels"]] for r in want])
    md = (report / "report.md").read_text()
    for heading in ("Table 1", "Probability calibration", "Reliability diagram", "Table 2", "Figure 3", "Figure 4",
                    "Cost frontier", "Cost", "members per hour"):
        assert heading in md


@pytest.mark.slow
def test_regression_report_has_the_gaussian_calibration_section_and_no_reliability_diagram(tiny_model, glue_dir,
                                                                                            tmp_path):
    """STS-B (regression), BASELINE and BAGGING over 4 seeds: the report's calibration section is
    ``stats --score gaussian_nll`` and ``--score spread_error_corr`` on the same artifacts (8 dev examples: the
    noise variance is still cross-fitted, every fold fitted on the others), single members' spread_error_corr is
    n/a, and no reliability diagram is drawn."""
    cmd = [c if c != "mrpc" else "stsb" for c in _protocol(tiny_model, glue_dir, "--schemes", "dense,bagging")]
    _run(cmd, tmp_path)
    report = tmp_path / "report"
    assert not any(p.name.endswith("reliability.png") for p in report.iterdir())
    data = json.loads((report / "report.json").read_text())
    cal = data["calibration"]
    assert cal["metrics"] == ["gaussian_nll", "spread_error_corr"] and cal["reliability"] is None
    assert all(isinstance(r["ensemble_mean"], float) for r in cal["rows"])  # numbers, not NaN (null)
    logits = [str(tmp_path / m["path"]) for m in data["members"]]
    for name in cal["metrics"]:
        want = {r["group"]: r for r in _analysis_json(["stats", *logits, "--size", "3", "--resamples", "199",
                                                        "--score", name])}
        for row in (r for r in cal["rows"] if r["metric"] == name):
            for key in ("single_mean", "ensemble_mean", "vs_ref", "diff_low", "diff_high", "p_value", "p_single"):
                expected = want[row["group"]].get(key)
                got = row.get(key)
                assert got is None if expected is None else got == pytest.approx(expected), (name, row["group"], key)
            assert row["verdict"] == want[row["group"]]["verdict"]
            if name == "spread_error_corr":
                assert row["single_mean"] is None and row["p_single"] is None
    md = (report / "report.md").read_text()
    assert "## Probability calibration" in md and "No reliability diagram" in md and "![Reliability" not in md
    assert md.count("| spread_error_corr |") == 2 and "| n/a |" in md


@pytest.mark.slow
def test_a_protocol_member_is_the_one_search_and_finetune_make(full_run, tiny_model, glue_dir, tmp_path, cli,
                                                               monkeypatch):
    """The same tensors, names and metadata but for timings (train seconds, IMP rounds' seconds, and so the
    parents' file hashes, which cover them)."""
    folder, _ = full_run
    monkeypatch.chdir(tmp_path)  # the same relative --out: parents are recorded by the path given
    opts = [*_options(tiny_model, glue_dir), "--out", "runs", "--threads", "1", "--quiet"]
    code, first, _ = cli("search", *opts, "--policy", "active", "--prior", "none", "--seed", "1")
    code2, second, _ = cli("search", *opts, "--policy", "active", "--prior", first.strip(), "--seed", "2")
    code3, member, _ = cli("finetune", *opts, "--mask", second.strip(), "--seed", "2")
    code4, bagging, _ = cli("finetune", *opts, "--bagging", "0.9", "--seed", "3")
    assert code == code2 == code3 == code4 == 0
    from ticketctl.store.artifacts import read_artifact

    def stable(meta):
        volatile = {"train_seconds", "metrics", "versions"}  # mask metrics hold each round's seconds
        out = {k: v for k, v in meta.items() if k not in volatile}
        out["parents"] = [{k: v for k, v in p.items() if k != "sha256"} for p in out.get("parents") or []]
        return out

    for printed in (second, member, bagging):
        name = Path(printed.strip()).name
        mine, theirs = read_artifact(tmp_path / "runs" / name), read_artifact(folder / "runs" / name)
        assert _same_tensors(mine.path, theirs.path)
        assert stable(mine.meta) == stable(theirs.meta)
        if "rounds" in (mine.meta.get("metrics") or {}):
            drop = lambda rounds: [{k: v for k, v in r.items() if k != "seconds"} for r in rounds]  # noqa: E731
            assert drop(mine.meta["metrics"]["rounds"]) == drop(theirs.meta["metrics"]["rounds"])
        else:
            assert mine.meta["metrics"] == theirs.meta["metrics"]


@pytest.mark.slow
def test_dry_run_lists_exactly_the_missing_jobs_and_a_rerun_runs_only_them(full_run, tiny_model, glue_dir,
                                                                           tmp_path):
    folder, _ = full_run
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    (work / "runs" / "protocol" / "journal.jsonl").unlink()
    removed = [p for p in (work / "runs").glob("mrpc-logits-dev-*.safetensors")
               if re.search(r"-(dense-s2|random-s3)-", p.name)]
    assert len(removed) == 2
    for p in removed:
        p.unlink()
    cmd = _protocol(tiny_model, glue_dir, "--schemes", ALL, "--jobs", 2, "--threads", 1)
    dry = _run([*cmd, "--dry-run"], work)
    lines = dry.stdout.splitlines()
    assert lines[-1] == "2 to run, 30 done"
    todo = {line.split("\t")[0] for line in lines[:-1] if line.split("\t")[1] == "todo"}
    assert todo == {"finetune:dense:s2", "finetune:random:s3"}
    assert not _journal(work / "runs")  # a dry run runs nothing
    _run(cmd, work)
    assert sorted(_trained(_journal(work / "runs"))) == sorted(todo)
    for p in removed:
        assert _same_tensors(p, folder / "runs" / p.name)
    # the resolved plan beside the report is a plan: rerunning it has nothing to do
    again = _run([sys.executable, "-m", "ticketctl", "protocol", "--plan", "report/plan.toml", "--dry-run"], work)
    assert again.stdout.splitlines()[-1] == "0 to run, 32 done"


@pytest.mark.slow
def test_killed_run_leaves_no_workers_and_a_rerun_finishes_it_running_no_job_twice(full_run, tiny_model, glue_dir,
                                                                                   tmp_path):
    folder, _ = full_run
    schemes = ["dense", "active", "random"]
    cmd = _protocol(tiny_model, glue_dir, "--schemes", ",".join(schemes), "--jobs", 2, "--threads", 1)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 120
    while len(_trained(_journal(tmp_path / "runs"))) < 5 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _journal(tmp_path / "runs")
    done_first = _trained(first)
    assert 5 <= len(done_first) < 20, "the run was not interrupted mid-way"
    workers = {e["pid"] for e in first}
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "orphaned workers kept running"
    _run(cmd, tmp_path)
    second = _journal(tmp_path / "runs")[len(first):]
    again = _trained(second)
    assert not set(again) & set(done_first), "a finished job was run again"
    assert len(set(again)) == len(again) and len(set(done_first)) == len(done_first)
    mine, reference = _artifacts(tmp_path / "runs"), _artifacts(folder / "runs", schemes)
    assert set(mine) == set(reference)
    assert all(_same_tensors(mine[n], reference[n]) for n in mine)
    assert not list((tmp_path / "runs").glob("mrpc-*.tmp"))


@pytest.mark.slow
def test_sigterm_ends_the_run_and_its_workers_in_one_line(tiny_model, glue_dir, tmp_path):
    cmd = _protocol(tiny_model, glue_dir, "--schemes", "dense,random", "--jobs", 2, "--threads", 1)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 60
    while len(_journal(tmp_path / "runs")) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and out == ""
    assert [line for line in err.splitlines() if line.startswith("ticketctl:")] == ["ticketctl: error: terminated"]
    workers = {e["pid"] for e in _journal(tmp_path / "runs")}
    assert workers and not [pid for pid in workers if _alive(pid)]  # ended before the parent exited
    for p in (tmp_path / "runs").glob("mrpc-*"):  # whatever looks finished is: it reads as an artifact
        assert p.suffix == ".safetensors" and _tensors(p)


@pytest.mark.slow
def test_two_runs_on_one_out_never_train_a_member_twice(tiny_model, glue_dir, tmp_path):
    """Each job holds a lock on its artifact's identity: the second run waits, then reuses what the first made."""
    cmd = [*_protocol(tiny_model, glue_dir, "--schemes", "dense,random", "--jobs", 1, "--threads", 1), "--seeds",
           "1-2", "--size", "2"]
    procs = [subprocess.Popen([*cmd, "--report", f"report{i}"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for i in (1, 2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    events = _journal(tmp_path / "runs")
    trained = _trained(events)
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 6  # 2 dense, 2 searches, 2 tickets: once
    assert len({e["pid"] for e in events}) == 2  # both runs' workers took part (one waited and reused)
    reports = [json.loads((tmp_path / f"report{i}" / "report.json").read_text()) for i in (1, 2)]
    assert reports[0]["table1"] == reports[1]["table1"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_failing_job_is_reported_with_its_log_and_the_others_finish(tiny_model, glue_dir, tmp_path):
    cmd = _protocol(tiny_model, glue_dir, "--schemes", "dense,random", "--jobs", 2, "--threads", 1)
    dry = _run([*cmd, "--dry-run"], tmp_path).stdout.splitlines()
    target = next(line.split("\t")[3] for line in dry if line.startswith("search:random:s2\t"))
    (tmp_path / target).mkdir(parents=True)  # the mask cannot be written: the search fails after training
    proc = _run(cmd, tmp_path, check=False)
    assert proc.returncode == 4 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ticketctl: error:")]
    assert errors[0].startswith("ticketctl: error: search:random:s2 failed:")
    assert "runs/protocol/logs/mrpc-search-random-s2.log" in errors[0]
    assert errors[1] == "ticketctl: error: finetune:random:s2 failed: not run: a job it depends on failed"
    assert "2 of 12 jobs failed" in errors[2] and len(errors) == 3
    log = (tmp_path / "runs" / "protocol" / "logs" / "mrpc-search-random-s2.log").read_text()
    assert "Is a directory" in log.splitlines()[-1]
    assert len(_trained(_journal(tmp_path / "runs"))) == 10  # every other job finished
    (tmp_path / target).rmdir()
    _run(cmd, tmp_path)
    assert sorted(_trained(_journal(tmp_path / "runs"))[10:]) == ["finetune:random:s2", "search:random:s2"]


@pytest.mark.parametrize("args, message", [
    (["--schemes", "dense,lottery"], "--schemes: unknown scheme 'lottery'"),
    (["--seeds", "1-5", "--groups", "2"], "--seeds: 5 seeds do not split into --groups 2 equal groups"),
    (["--seeds", "1-4", "--groups", "2", "--size", "2-3"], "--size 3: a seed group has only 2 members"),
    (["--slurm-partition", "gpu"], "--slurm-partition belongs to --executor slurm"),
    (["--jobs", "2", "--threads", "2"], "exceeds the"),
    (["--seeds", "3-1"], "--seeds '3-1': 3-1 is an empty range"),
])
def test_bad_plans_are_one_line_before_training(cli, tiny_args, tmp_path, args, message):
    cores = len(os.sched_getaffinity(0))
    if args[:2] == ["--jobs", "2"] and cores >= 4:
        args = ["--jobs", str(cores), "--threads", "2"]
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--out", tmp_path / "runs", *args)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.safetensors"))


def test_plan_file_fills_options_and_unknown_keys_are_refused(cli, tiny_args, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('seeds = "1-2"\nschemes = ["dense", "random"]\nepochs = 1\n')
    code, out, _ = cli("protocol", *tiny_args, "--task", "mrpc", "--out", tmp_path / "runs", "--plan", plan,
                       "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "6 to run, 0 done"
    plan.write_text('seeds = "1-2"\nlottery = 3\n')
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--plan", plan, "--dry-run")
    assert code == 2 and out == "" and err.strip() == f"ticketctl: error: --plan {plan}: unknown option 'lottery'"


def test_quick_preset_and_several_tasks(cli, tiny_args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("protocol", *tiny_args, "--plan", "quick", "--dry-run")
    lines = out.splitlines()
    assert code == 0 and lines[-1] == "9 to run, 0 done"  # 3 seeds x (dense + random search + its finetune)
    assert lines[0].startswith("finetune:dense:s1\ttodo\t-\truns-quick/mrpc-logits-dev-dense-s1-")
    code, out, _ = cli("protocol", *tiny_args, "--task", "mrpc", "--task", "rte", "--seeds", "1-2", "--schemes",
                       "dense", "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "4 to run, 0 done"
    assert sorted(line.split("\t")[3].split("-logits")[0] for line in out.splitlines()[:-1]) == \
        ["runs/mrpc", "runs/mrpc", "runs/rte", "runs/rte"]


def test_active_chain_runs_within_each_seed_group_unless_asked_for_one_chain():
    from ticketctl.protocol.plan import build
    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig

    def priors(**options):
        plan = build({"seeds": "4,1,3,2", "schemes": "active", "groups": 2, "size": "2", **options},
                     TrainConfig(), DataOptions(), RunOptions())
        return {j.seed: (j.priors, j.deps) for j in plan.jobs_graph().values() if j.kind == "search"}

    # groups are the seeds in ascending order cut in two ({1, 2}, {3, 4}); each chain follows the order given
    assert priors() == {4: ((), ()), 1: ((), ()), 3: (("search:active:s4",), ("search:active:s4",)),
                        2: (("search:active:s1",), ("search:active:s1",))}
    chain = priors(active_chain="all")
    assert chain[2] == (("search:active:s4", "search:active:s1", "search:active:s3"), ("search:active:s3",))
    with pytest.raises(UsageError, match="--active-chain must be one of group, all"):
        priors(active_chain="seed")


def test_every_declared_option_reaches_the_plan_from_the_command_line_and_from_a_plan_file(tmp_path):
    """The protocol's options are declared once (ProtocolOptions, each executor's Options): the command takes
    exactly those, each one given (as typed, or in a plan file) lands in the plan under its name, and an executor's
    option given with another executor is refused."""
    import dataclasses

    from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
    from ticketctl.protocol import executors
    from ticketctl.protocol.plan import DISTILL_FIELDS, CommandOptions, ProtocolOptions, build, toml_text

    declared = [f.name for f in dataclasses.fields(ProtocolOptions)] + list(DISTILL_FIELDS) + [
        f.name for e in executors.EXECUTORS.values() for f in dataclasses.fields(e.Options)]
    assert [f.name for f in dataclasses.fields(CommandOptions)] == declared
    values = {"jobs": "2", "jobs_per_gpu": 1, "slurm_partition": "gpu", "slurm_gpus_per_job": "1",
              "slurm_time": "1:30", "slurm_mem": "16G", "slurm_array_parallelism": 3,
              "slurm_extra": "--qos=high", "slurm_max_requeues": "2"}
    assert set(values) == {n for e in executors.EXECUTORS.values() for n in e.options}  # a new one: add it here
    for e in executors.EXECUTORS.values():
        mine = {n: values[n] for n in e.options}
        for source in ("command", "file"):
            if source == "command":
                plan = build({"executor": e.name, "seeds": "1-2", "schemes": "dense", **mine}, TrainConfig(),
                             DataOptions(), RunOptions())
            else:
                (tmp_path / "p.toml").write_text(toml_text({"executor": e.name, "seeds": "1-2",
                                                            "schemes": "dense", **mine}))
                plan = build({}, TrainConfig(), DataOptions(), RunOptions(), tmp_path / "p.toml")
            assert plan.executor == e.name and plan.seeds == [1, 2]
            assert {n: getattr(plan, n) for n in mine} == {
                n: int(v) if n in ("jobs", "jobs_per_gpu", "slurm_gpus_per_job", "slurm_array_parallelism",
                                  "slurm_max_requeues")
                else v for n, v in mine.items()}
            assert plan.options_dict()["executor"] == e.name and all(plan.options_dict()[n] is not None
                                                                     for n in mine)
        other = next(x for x in executors.EXECUTORS.values() if x is not e)
        name = e.options[0]
        with pytest.raises(UsageError, match=f"--{name.replace('_', '-')} belongs to --executor {e.name}"):
            build({"executor": other.name, name: values[name]}, TrainConfig(), DataOptions(), RunOptions())
    with pytest.raises(UsageError, match="unknown protocol option"):
        build({"slurm_qos": "high"}, TrainConfig(), DataOptions(), RunOptions())
    with pytest.raises(UsageError, match="--jobs 'two': give an integer"):
        build({"jobs": "two"}, TrainConfig(), DataOptions(), RunOptions())


def test_local_layout_keeps_jobs_times_threads_within_the_cores():
    from ticketctl.protocol.executors import local_layout

    assert local_layout(None, None, None, 8, 0) == (8, 1, [])  # one job per core: the faster layout measured
    assert local_layout(None, None, None, 8, 0, max_jobs=3) == (3, 2, [])  # as many as memory holds
    assert local_layout(4, None, None, 8, 0) == (4, 2, [])
    assert local_layout(None, 2, None, 8, 0) == (4, 2, [])
    assert local_layout(1, None, None, 8, 0) == (1, 8, [])
    assert local_layout(None, None, 2, 8, 2) == (4, 2, ["0", "0", "1", "1"])
    assert local_layout(None, None, 2, 8, 0) == (8, 1, [])  # no GPU: --jobs-per-gpu has nothing to pin
    assert local_layout(None, None, None, 8, 2) == (2, 4, ["0", "1"])  # GPUs: one job per GPU by default


# ---------------------------------------------------------------------------------------------- Slurm


def _slurm_ready() -> str | None:
    """None when a Slurm cluster answers with an idle node, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "Slurm is not installed (run .ci/slurm-up as root)"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install 'ticketctl[slurm]')"
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if state.returncode != 0 or "idle" not in state.stdout.split():
        return f"no idle Slurm node (sinfo: {state.stdout.strip() or state.stderr.strip()}; run .ci/slurm-up)"
    return None


def _jobcomp(path=Path("/var/log/slurm/jobcomp.log")) -> dict[str, dict]:
    """Slurm's job completion records (JobCompType=jobcomp/filetxt), keyed by job id (array tasks ID_TASK)."""
    records = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        key = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if fields.get("ArrayTaskId") not in (None, "")
               else fields.get("JobId"))
        records[key] = fields
    return records


@pytest.mark.slow
def test_slurm_runs_the_protocol_with_the_active_chain_as_dependencies(full_run, tiny_model, glue_dir, tmp_path):
    why = _slurm_ready()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Slurm is not usable: {why}")
        pytest.skip(why)
    folder, _ = full_run
    schemes = ["dense", "active", "random"]
    proc = _run(_protocol(tiny_model, glue_dir, "--schemes", ",".join(schemes), "--threads", 1, "--executor",
                          "slurm", "--slurm-time", "30"), tmp_path)
    assert proc.stdout.strip() == "report/report.md"
    # the same members, bit for bit, as the local run's
    mine, reference = _artifacts(tmp_path / "runs"), _artifacts(folder / "runs", schemes)
    assert set(mine) == set(reference) and all(_same_tensors(mine[n], reference[n]) for n in mine)
    # the same report numbers (the local run has more schemes: compare these schemes' rows)
    slurm = json.loads((tmp_path / "report" / "report.json").read_text())
    local = json.loads((folder / "report" / "report.json").read_text())
    assert slurm["table1"] == [r for r in local["table1"] if r["group"] in schemes]
    assert slurm["parts"] == [r for r in local["parts"] if r["group"] in schemes]
    assert slurm["table2"] == {g: v for g, v in local["table2"].items() if g in schemes}
    assert slurm["figure3"] == {g: v for g, v in local["figure3"].items() if g in schemes}
    assert [{**m, "path": None} for m in slurm["members"]] == \
           [{**m, "path": None} for m in local["members"] if m["scheme"] in schemes]
    assert slurm["run"]["executor"] == "slurm" and slurm["run"]["members_trained"] == 12
    # ACTIVE-LT: each search started only after its predecessor ended (Slurm's records and the jobs' own journal)
    from ticketctl.protocol.executors import recorded_jobs

    ids = recorded_jobs(tmp_path / "runs" / "protocol", "mrpc")  # slurm-jobs.tsv's rows of this task
    records = _jobcomp()
    events = {(e["job"], e["event"]): e["time"] for e in _journal(tmp_path / "runs")}
    for seed in (2, 3, 4):
        before, after = f"search:active:s{seed - 1}", f"search:active:s{seed}"
        assert records[ids[after]]["StartTime"] >= records[ids[before]]["EndTime"]
        assert events[(after, "start")] > events[(before, "done")]
        assert ids[after] != ids[before]
    for seed in (1, 2, 3, 4):
        search, ticket = f"search:active:s{seed}", f"finetune:active:s{seed}"
        assert records[ids[ticket]]["StartTime"] >= records[ids[search]]["EndTime"]
        assert all(records[ids[j]]["JobState"] == "COMPLETED" for j in (search, ticket))
    # the independent jobs went as one array
    arrays = {ids[j].split("_")[0] for j in ("finetune:dense:s1", "finetune:dense:s4", "search:random:s3",
                                              "search:active:s1")}
    assert len(arrays) == 1 and "_" in ids["finetune:dense:s1"]


def test_slurm_missing_is_one_line(cli, tiny_args, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on this PATH
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--out", tmp_path / "runs", "--seeds", "1-2",
                         "--schemes", "dense", "--executor", "slurm")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "--executor slurm: Slurm's sbatch/squeue are not installed here" in err


def test_slurm_refusing_a_job_is_one_line(cli, tiny_args, tmp_path):
    why = _slurm_ready()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Slurm is not usable: {why}")
        pytest.skip(why)
    code, out, err = cli("protocol", *tiny_args, "--task", "mrpc", "--out", tmp_path / "runs", "--seeds", "1-2",
                         "--schemes", "dense", "--executor", "slurm", "--slurm-partition", "no-such-partition")
    ours = [line for line in err.splitlines() if line.startswith("ticketctl: error:")]
    assert code == 3 and out == "" and len(ours) == 1
    assert ours[0].startswith("ticketctl: error: --executor slurm: the submission was refused:")
    assert "Invalid partition name" in ours[0]
    assert not list((tmp_path / "runs").glob("*.safetensors"))


def test_own_data_without_labels_is_a_bad_plan(cli, tiny_args, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence\nthe cat sat\na dog ran\nthe bird flew\n")
    args = [a for a in tiny_args if a not in ("--data-dir", tiny_args[tiny_args.index("--data-dir") + 1])]
    code, out, err = cli("protocol", *args, "--task", "mine", "--train-file", train, "--validation-file", train,
                         "--out", tmp_path / "runs", "--seeds", "1-2", "--schemes", "dense")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert "no label column 'label'" in err, err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.safetensors"))
    dev = tmp_path / "dev.csv"  # labelled training data, an unlabelled validation split: nothing to report on
    train.write_text("sentence,label\nthe cat sat,a\na dog ran,b\nthe bird flew,a\n")
    dev.write_text("sentence\nthe cat ran\na bird sat\n")
    code, out, err = cli("protocol", *args, "--task", "mine", "--train-file", train, "--validation-file", dev,
                         "--out", tmp_path / "runs", "--seeds", "1-2", "--schemes", "dense")
    assert code == 2 and out == "" and err.count("\n") == 1 and "split has no labels" in err, err
    # other input errors stay what they are for every command: exit 3 (here an unreadable training file)
    code, out, err = cli("protocol", *args, "--task", "mine", "--train-file", tmp_path / "missing.csv",
                         "--validation-file", dev, "--out", tmp_path / "runs", "--seeds", "1-2", "--schemes", "dense")
    assert code == 3 and out == "" and err.count("\n") == 1, err


def test_structured_scheme_runs_super_tickets_per_level_as_the_single_commands_make_them(tiny_model, glue_dir,
                                                                                          tmp_path, cli):
    cmd = _protocol(tiny_model, glue_dir, "--schemes", "dense,structured", "--structured-levels", "0.25,0.5",
                    "--size", "2", "--jobs", 1, "--threads", 1)
    proc = _run(cmd, tmp_path)
    assert proc.stdout.strip() == "report/report.md"
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["group"] for r in data["table1"]] == ["dense", "winning-25%", "winning-50%"]
    assert sorted({m["scheme"] for m in data["members"]}) == ["dense", "structured-25", "structured-50"]
    # the importance scores came from the dense finetune of the same seed: one scoring pass, no second finetune
    log = (tmp_path / "runs" / "protocol" / "logs" / "mrpc-search-structured-s1.log").read_text()
    assert "reusing the dense finetune of seed 1" in log
    # the members are the ones `search --method structured` + `finetune --mask` make
    opts = ["--model", tiny_model, "--data-dir", glue_dir, "--task", "mrpc", "--epochs", 1, "--batch-size", 8,
            "--device", "cpu", "--threads", 1, "--out", tmp_path / "single", "--quiet"]
    code, masks, err = cli("search", *opts, "--method", "structured", "--sparsity", "0.25,0.5", "--seed", 3)
    assert code == 0, err
    for mask in masks.split():
        code, logits, _ = cli("finetune", *opts, "--mask", mask, "--seed", 3)
        assert code == 0
        logits = Path(logits.split()[0])
        assert _same_tensors(tmp_path / "runs" / Path(mask).name, Path(mask))
        assert _same_tensors(tmp_path / "runs" / logits.name, logits)
    # the structured masks' IoU is its own matrix (weight masks and unit masks are not comparable)
    assert data["figure4"] is None and len(data["figure4_structured"]["masks"]) == 8
    again = _run([*cmd, "--dry-run"], tmp_path)
    assert again.stdout.splitlines()[-1] == "0 to run, 16 done"  # 4 x (dense + search + 2 ticket finetunes)
