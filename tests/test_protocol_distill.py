"""``ticketctl protocol --distill-from SCHEME``: the distilled scheme (issue #34, docs/distillation.md "In the
protocol"): its job graph, its refusals, and an end-to-end run on the tiny model whose students are the finetunes
``finetune --teacher`` makes from the teacher the run wrote, reported beside their scheme's members."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig
from ticketctl.protocol.plan import build

from test_protocol import _env, _journal, _trained


def _plan(**options):
    return build({"task": "mrpc", "seeds": "1-4", "schemes": "dense,random", "size": "2", **options}, TrainConfig(),
                 DataOptions(), RunOptions())


def test_the_job_graph_adds_a_teacher_per_group_and_a_student_per_seed():
    jobs = _plan(groups=2, distill_from="random").jobs_graph()
    plain = _plan(groups=2).jobs_graph()
    assert [j for j in jobs if j in plain] == list(plain)  # every job of the plan without students, in its order
    assert {j: jobs[j].deps for j in jobs if j not in plain} == {
        "teacher:random:g1": ("finetune:random:s1", "finetune:random:s2"),
        "teacher:random:g2": ("finetune:random:s3", "finetune:random:s4"),
        **{f"finetune:student-random:s{s}": (f"search:random:s{s}", f"teacher:random:g{(s + 1) // 2}")
           for s in (1, 2, 3, 4)}}
    student = jobs["finetune:student-random:s3"]
    assert (student.kind, student.scheme, student.mask, student.teacher, student.trained_as) == (
        "finetune", "student-random", "search:random:s3", "teacher:random:g2", "random")
    assert [j for j in jobs if jobs[j].scores_train] == [f"finetune:random:s{s}" for s in (1, 2, 3, 4)]
    order = list(jobs)
    assert all(order.index(d) < order.index(j) for j in jobs for d in jobs[j].deps)
    # the teacher is the group's first k members, seeds ascending, whatever the order given
    jobs = _plan(seeds="6,2,9,4,1,3", size="2", distill_from="dense").jobs_graph()
    assert jobs["teacher:dense:g1"].deps == ("finetune:dense:s1", "finetune:dense:s2")
    assert jobs["finetune:student-dense:s9"].deps == ("teacher:dense:g1",)


@pytest.mark.parametrize("options, message", [
    ({"distill_from": "base"}, "--distill-from base: not a scheme of this plan (its schemes: dense, random)"),
    ({"distill_alpha": 0.2}, "--distill-alpha and --distill-temperature belong to --distill-from"),
    ({"distill_from": "dense", "distill_temperature": 0}, "--distill-temperature must be > 0"),
])
def test_a_distilled_scheme_that_does_not_fit_is_refused_in_one_line(options, message):
    with pytest.raises(UsageError) as e:
        _plan(**options)
    assert str(e.value) == message


def test_a_training_split_that_is_not_a_file_or_is_cut_short_is_refused():
    with pytest.raises(UsageError, match="needs the training data as a file .* not --dataset"):
        build({"task": "mine", "seeds": "1-2", "schemes": "dense", "size": "2", "distill_from": "dense"},
              TrainConfig(), DataOptions(dataset="some/dataset"), RunOptions())
    with pytest.raises(UsageError, match="--max-eval-samples would cut the teachers' outputs"):
        build({"task": "mrpc", "seeds": "1-2", "schemes": "dense", "size": "2", "distill_from": "dense"},
              TrainConfig(), DataOptions(max_eval_samples=8), RunOptions())


def test_a_plan_without_distill_from_writes_the_plan_it_wrote_before():
    keys = set(_plan().options_dict())
    assert "distill_from" in keys and not keys & {"distill_alpha", "distill_temperature"}
    assert {"distill_alpha", "distill_temperature"} <= set(_plan(distill_from="dense").options_dict())


def _cmd(tiny_model, glue_dir, *args) -> list[str]:
    return [sys.executable, "-m", "ticketctl", "protocol", "--task", "mrpc", "--model", str(tiny_model), "--data-dir",
            str(glue_dir), "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--seeds", "1-3",
            "--schemes", "dense", "--size", "2", "--resamples", "199", "--distill-from", "dense", "--out", "runs",
            "--report", "report", *map(str, args)]


def _check_distilled_run(tiny_model, glue_dir, tmp_path, *extra) -> None:
    """Run the distilled dense scheme (3 seeds, k = 2) and check its teacher, students, report and rerun."""
    from ticketctl.store.artifacts import read_artifact

    proc = subprocess.run(_cmd(tiny_model, glue_dir, *extra), cwd=tmp_path, capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    assert sorted(_trained(_journal(runs))) == sorted(
        [f"finetune:dense:s{s}" for s in (1, 2, 3)] + ["teacher:dense:g1"]
        + [f"finetune:student-dense:s{s}" for s in (1, 2, 3)])
    (teacher,) = runs.glob("mrpc-logits-train-ensemble-*.safetensors")
    t = read_artifact(teacher, "logits")
    members = {p["path"] for p in t.meta["parents"]}
    assert t.meta["combine"] == "probs" and len(members) == 2
    assert {int(read_artifact(tmp_path / p).meta["seed"]) for p in members} == {1, 2}  # the group's first k seeds
    students = sorted(runs.glob("mrpc-logits-dev-student-s*.safetensors"))
    assert len(students) == 3
    for path in students:
        meta = read_artifact(path, "logits").meta
        assert any(p["sha256"] == t.sha256 for p in meta["parents"]), meta["parents"]
        assert meta["config"]["distill_alpha"] == 0.5 and meta["config"]["teacher"] == t.sha256
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = [m for m in data["members"] if m["scheme"] == "student-dense"]
    assert sorted(m["seed"] for m in rows) == [1, 2, 3]
    assert [r for r in data["table1"] if r["group"] == "student-dense"][0].keys() == {
        "group", "members", "single_mean", "single_std"}  # single members only: no ensembles of students
    distill = data["distillation"]
    assert distill["scheme"] == "dense" and distill["k"] == 2
    for key in ("student_minus_member", "ensemble_minus_student", "ensemble_minus_member"):
        assert set(distill[key]) >= {"diff", "low", "high"}, distill
    assert (distill["share_kept"] is None) == (distill["share_reason"] is not None)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Distillation" in md and "student-dense" in md
    rerun = subprocess.run(_cmd(tiny_model, glue_dir, *extra), cwd=tmp_path, capture_output=True, text=True,
                           env=_env(), timeout=600)
    assert rerun.returncode == 0 and "0 to run" in rerun.stderr, rerun.stderr[-3000:]


@pytest.mark.slow
def test_local_run_trains_students_from_their_groups_teacher_and_reports_them(tiny_model, glue_dir, tmp_path):
    _check_distilled_run(tiny_model, glue_dir, tmp_path)


@pytest.mark.slow
def test_slurm_runs_the_distilled_scheme_as_dependent_jobs(tiny_model, glue_dir, tmp_path):
    from test_scale_out import _need_slurm

    _need_slurm()
    _check_distilled_run(tiny_model, glue_dir, tmp_path, "--executor", "slurm")

def test_the_students_options_reach_the_plan_from_the_command_line_and_from_a_plan_file(tmp_path):
    from ticketctl.protocol.plan import toml_text

    given = {"task": "mrpc", "seeds": "1-2", "schemes": "dense", "size": "2", "distill_from": "dense", "distill_alpha": "0.8",
             "distill_temperature": 4}
    (tmp_path / "p.toml").write_text(toml_text(given))
    for plan in (build(given, TrainConfig(), DataOptions(), RunOptions()),
                 build({}, TrainConfig(), DataOptions(), RunOptions(), tmp_path / "p.toml")):
        assert plan.distill("T.safetensors") == plan.distill("T.safetensors").__class__("T.safetensors", 0.8, 4.0)
        assert {k: plan.options_dict()[k] for k in ("distill_from", "distill_alpha", "distill_temperature")} == {
            "distill_from": "dense", "distill_alpha": 0.8, "distill_temperature": 4.0}


def test_scoring_the_training_file_leaves_every_planned_artifact_name_as_it_was(tiny_model, glue_dir, tmp_path):
    """The finetunes of --distill-from write one more split (its own artifact): their dev artifacts, and every other
    job's, keep the names of the plan without students (located without training)."""
    from ticketctl.protocol.runner import locate

    def located(**options):
        plan = build({"task": "mrpc", "seeds": "1-2", "schemes": "dense,bagging", "size": "2", **options},
                     TrainConfig(epochs=1, batch_size=8), DataOptions(data_dir=str(glue_dir)),
                     RunOptions(model=str(tiny_model), out=tmp_path / "runs", device="cpu"))
        return locate(plan).targets

    plain, distilled = located(), located(distill_from="bagging")
    assert all(distilled[j][0] == plain[j][0] for j in plain)  # every dev artifact keeps its name
    assert {j: distilled[j] for j in plain if not j.startswith("finetune:bagging")} == {
        j: t for j, t in plain.items() if not j.startswith("finetune:bagging")}  # the other schemes: nothing more
    for seed in (1, 2):
        bagging = distilled[f"finetune:bagging:s{seed}"]
        assert [p.name.split("-")[2] for p in bagging] == ["dev", "train"]
        assert f"finetune:student-bagging:s{seed}" not in distilled  # named once its teacher is finished


@pytest.mark.slow
def test_a_student_of_a_ticket_scheme_trains_under_its_seeds_mask(tiny_model, glue_dir, tmp_path):
    """--distill-from random: each student is its seed's RANDOM-LT ticket (the same mask) distilled from its
    group's teacher; the report has its row."""
    from ticketctl.store.artifacts import read_artifact

    cmd = [*_cmd(tiny_model, glue_dir, "--search-epochs", "1")]
    cmd[cmd.index("--schemes") + 1] = "random"
    cmd[cmd.index("--distill-from") + 1] = "random"
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "runs"
    for seed in (1, 2, 3):
        (member,) = runs.glob(f"mrpc-logits-dev-random-s{seed}-*.safetensors")
        (student,) = runs.glob(f"mrpc-logits-dev-student-random-s{seed}-*.safetensors")
        mask = read_artifact(member).meta["parents"][0]
        parents = read_artifact(student).meta["parents"]
        assert parents[0]["sha256"] == mask["sha256"] and len(parents) == 2  # its seed's mask, then the teacher
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["distillation"]["student"] == "student-random"
