"""``ticketctl protocol --distill-from SCHEME``: the distilled scheme (issue #34, docs/distillation.md "In the
protocol"): its job graph, its refusals, and an end-to-end run on the tiny model whose students are the finetunes
``finetune --teacher`` makes from the teacher the run wrote, reported beside their scheme's members."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert (distill["unit"], distill["groups"], distill["student_minus_member"]["p"]) == ("seed group", 1, None)
    # the cost frontier holds the students: k = 1 at the cost their artifacts record, at every budget
    recorded = {read_artifact(p, "logits").meta["cost"]["relative_flops"] for p in students}
    front = data["frontier"]
    points = [r for r in front["rows"] if r["group"] == "student-dense"]
    assert len(recorded) == 1 and [r["budget"] for r in points] == sorted({r["budget"] for r in front["rows"]})
    cost = recorded.pop()
    student_mean = [r for r in data["table1"] if r["group"] == "student-dense"][0]["single_mean"]
    assert {(r["k"], r["cost"], r["mean"]) for r in points} == {(1, round(cost, 4), student_mean)}
    assert front["curves"]["student-dense"] == [[cost, student_mean]] and front["member_costs"]["student-dense"] == cost
    assert (tmp_path / "report" / "mrpc-frontier.png").stat().st_size > 0
    # the calibration section holds them as single members, no ensemble of students
    cal = data["calibration"]
    assert "student-dense" not in {r["group"] for r in cal["rows"]}
    assert [r["metric"] for r in cal["students"]] == cal["metrics"]
    for row in cal["students"]:
        assert row["group"] == "student-dense" and row["ensemble_mean"] is None and row["single_mean"] > 0
        assert row["p_ref"] is None and row["verdict_ref"] == "no test: one seed group"  # one group, one teacher
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Distillation" in md and "student-dense" in md and "Unit: the seed group (1 group(s)" in md
    assert "## Cost frontier" in md and "Students (`student-dense`) as single members" in md
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


# ---------------------------------------------------------------------------------------------- the seed group as unit


def _synthetic(tmp_path, groups: int, n: int = 80):
    """Dense (the reference) and random members and student-random students for seeds 1-6, as dev logits artifacts
    with cost records (a student costs 0.75 of a dense member). The students of a group share a teacher effect:
    group 1's are better than their members, group 2's worse, as one good and one poor teacher would make them."""
    import numpy as np

    from test_analysis import logits_file

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, n)
    sign = 2 * labels - 1
    teacher = np.where(np.arange(n) % 2, 1.2, 0.3)  # the teacher's pull toward the label, per example
    members: dict[str, list] = {"dense": [], "random": [], "student-random": []}
    margins = {}
    for s in range(1, 7):
        seed_effect = rng.normal(0, 1.0, n)
        good = (s - 1) // 3 == 0 if groups == 2 else s % 2 == 1
        for policy, signal in (("dense", 0.4), ("random", 0.5), ("student-random", None)):
            if signal is None:
                m = margins["random", s] + sign * teacher * (1.0 if good else -0.8) + rng.normal(0, 0.3, n)
            else:
                m = sign * signal + seed_effect + rng.normal(0, 0.7, n)
            margins[policy, s] = m
            cost = {"relative_flops": 0.75 if signal is None else 1.0, "flops_per_example": 1e9}
            members[policy].append(Path(logits_file(tmp_path / f"{policy}-s{s}.safetensors",
                                                    np.stack([-m / 2, m / 2], -1), labels, policy=policy, seed=str(s),
                                                    cost=cost)))
    return members, margins, labels


def _hand(values_per_group):
    """Float64 by hand: mean, Student's t interval over groups, exact two-sided sign-flip p over all patterns."""
    import itertools

    import numpy as np
    from scipy import stats as st

    d = np.asarray(values_per_group, dtype=np.float64)
    g = len(d)
    half = st.t.ppf(0.975, g - 1) * d.std(ddof=1) / np.sqrt(g)
    flips = [abs(np.dot(signs, d) / g) for signs in itertools.product((1, -1), repeat=g)]
    return d.mean(), d.mean() - half, d.mean() + half, np.mean([f >= abs(d.mean()) - 1e-12 for f in flips])


def test_students_are_compared_over_seed_groups_on_the_frontier_and_in_calibration(tmp_path):
    """With two seed groups, every comparison with a student is the mean of the two groups' differences with
    Student's t over groups and the exact sign-flip p (a float64 hand computation from the margins); the frontier
    holds the students at k = 1 and the cost their artifacts record at every budget; the calibration section holds
    them as single members; the member schemes' frontier is ``stats --cost``'s."""
    import itertools

    import numpy as np

    from ticketctl.analysis import stats
    from ticketctl.analysis.significance import compare
    from ticketctl.protocol import report

    members, margins, labels = _synthetic(tmp_path, groups=2)
    plan = _plan(seeds="1-6", groups=2, distill_from="random", resamples=99)
    data = report.analyse(plan, members, {})
    report._add_students(plan, data, members)
    acc = {key: float(np.mean((m > 0) == (labels == 1))) for key, m in margins.items()}
    prob = {key: 1 / (1 + np.exp(-m)) for key, m in margins.items()}  # softmax of [-m/2, m/2]: class 1's
    groups = [(1, 2, 3), (4, 5, 6)]

    def ens(policy, seeds, k):  # the protocol mean of k-member ensembles (mean probabilities) within a group
        return np.mean([np.mean((np.mean([prob[policy, s] for s in c], 0) > 0.5) == (labels == 1))
                        for c in itertools.combinations(seeds, k)])

    student = [np.mean([acc["student-random", s] for s in g]) for g in groups]
    d = data["distillation"]
    for key, per_group in (("student_minus_member", [st - np.mean([acc["random", s] for s in g])
                                                     for st, g in zip(student, groups)]),
                           ("ensemble_minus_student", [ens("random", g, 2) - st for st, g in zip(student, groups)])):
        diff, low, high, p = _hand(per_group)
        assert np.allclose([d[key]["diff"], d[key]["low"], d[key]["high"]], [diff, low, high], atol=1e-12), key
        assert d[key]["unit"] == "seed group" and d[key]["groups"] == 2
        assert d[key].get("p", p) == p  # ensemble minus student: an interval only
    assert d["student_minus_member"]["p"] in (0.5, 1.0)  # two groups: 4 sign patterns, the observed one and its mirror
    # the seed as the unit would be far narrower here: the students of a group move together
    loaded, idx = report.load_schemes([str(x) for x in members["random"] + members["student-random"]])
    seed_level = compare(report.stats.scorer_of(loaded, "probs"), idx["student-random"], idx["random"], 1, 1,
                         True, 99, limit=None)
    kept = d["student_minus_member"]
    assert kept["high"] - kept["low"] > 3 * (seed_level.high - seed_level.low)

    front = data["frontier"]
    rows = [r for r in front["rows"] if r["group"] == "student-random"]
    assert [r["budget"] for r in rows] == [1, 2, 3] and {(r["k"], r["cost"]) for r in rows} == {(1, 0.75)}
    assert front["member_costs"]["student-random"] == 0.75 and front["curves"]["student-random"] == [
        [0.75, np.mean(student)]]
    for r in rows:  # against the largest dense ensemble the budget affords, over groups
        diff, low, high, _ = _hand([st - ens("dense", g, r["budget"]) for st, g in zip(student, groups)])
        assert np.allclose([r["vs_ref"], r["diff_low"], r["diff_high"]], [diff, low, high], atol=1e-12)
    plain = stats.cost_frontier([str(x) for s in ("dense", "random") for x in members[s]], by="scheme", groups=2)
    assert report._jsonable([r for r in front["rows"] if r["group"] != "student-random"]) == report._jsonable(
        [report.row_of(r) for r in plain.rows])

    cal = data["calibration"]
    assert "student-random" not in {r["group"] for r in cal["rows"]}  # no ensemble-of-students row
    nll = {r["metric"]: r for r in cal["students"]}["nll"]
    member_nll = {key: -np.mean(np.log(np.where(labels == 1, prob[key], 1 - prob[key]))) for key in prob}
    per_group = [np.mean([member_nll["student-random", s] - member_nll["dense", s] for s in g]) for g in groups]
    diff, low, high, p = _hand(per_group)
    assert nll["ensemble_mean"] is None and np.isclose(nll["single_mean"], np.mean(
        [member_nll["student-random", s] for s in range(1, 7)]), atol=1e-6)
    assert np.allclose([nll["vs_ref"], nll["ref_low"], nll["ref_high"], nll["p_ref"]], [diff, low, high, p], atol=1e-6)
    assert {r["metric"] for r in cal["students"]} == set(cal["metrics"])

    md = report.markdown({**data, "plan": plan.options_dict(), "run": _run(), "members_record": _record()},
                         None, None, None, "mrpc-frontier.png")
    assert "## Cost frontier" in md and "| 1 | student-random | 1 | 0.7500 |" in md and "smallest p" in md
    assert "Students (`student-random`) as single members" in md


def test_with_one_seed_group_a_comparison_with_students_has_no_interval_and_says_why(tmp_path):
    import math

    from ticketctl.protocol import distilled

    members, _, _ = _synthetic(tmp_path, groups=1)
    d = distilled.distillation(_plan(seeds="1-6", distill_from="random"), members)
    kept = d["student_minus_member"]
    assert d["groups"] == 1 and all(math.isnan(kept[x]) for x in ("low", "high", "p"))
    assert math.isfinite(d["ensemble_minus_member"]["low"])  # the gain involves no student: seeds stay the unit
    text = "\n".join(distilled.markdown(d))
    assert "no test: one seed group" in text and "With one group there is one teacher" in text


def test_the_sign_flip_test_over_groups_is_exact_and_monte_carlo_beyond_sixteen():
    import numpy as np

    from ticketctl.protocol.distilled import sign_flip_p

    assert sign_flip_p(np.array([0.1, 0.2, 0.3])) == 2 / 8  # only the observed pattern and its mirror reach it
    assert sign_flip_p(np.array([0.1, -0.1, 0.1, -0.1])) == 1.0
    d = np.random.default_rng(0).normal(0.5, 1, 20)
    assert sign_flip_p(d, resamples=999) == sign_flip_p(d, resamples=999) and 0 < sign_flip_p(d, resamples=999) < 1


def _run():
    return {"executor": "local", "workers": "1 worker", "device": "cpu", "wall_seconds": 1.0, "jobs_run": 0,
            "members_trained": 0, "members_per_hour": None, "member_times": [], "versions": {}, "machine": "m"}


def _record():
    return {"members": 0, "job_seconds": 0, "members_per_job_hour": None, "made_on": {}, "also_present": {}}
