"""The whole Multi-Ticket Ensemble protocol as a plan: what to train (schemes x seeds), how to analyse it (groups,
ensemble sizes) and where to run it (executor), and the job graph it expands into.

A plan is checked completely before anything trains: an unknown scheme, seeds that do not split into the groups,
an ensemble size larger than a group, or a Slurm option with the local executor is one ``UsageError`` line.

Jobs (ids are ``KIND:SCHEME:sSEED``):

- ``finetune:dense:sN``, ``finetune:bagging:sN``: finetunes without a mask;
- ``search:P:sN`` for P in base, random, active: IMP searches; ``finetune:P:sN`` finetunes that ticket;
- ``search:structured:sN``: a structured search (Super Tickets: the dense finetune, the importance of every head and
  FFN sublayer, one winning ticket per ``--structured-levels`` level); ``finetune:structured-L:sN`` finetunes the
  ticket at level L percent (trained physically pruned). It waits for ``finetune:dense:sN`` when both are planned and
  reuses that finetune for the importance scores (same seed and training options), so it costs one scoring pass;
- ``search:base:sN`` waits for ``finetune:dense:sN`` when both are planned: IMP round 1 of ``base`` is that finetune
  and reuses it instead of training it twice;
- ACTIVE-LT is sequential: ``search:active:sN`` is pushed away from the masks of the earlier seeds of its seed group
  (in the order given), so it waits for the previous such search; the first of each group runs with ``--prior none``.
  Groups are the ones the report combines within: the seeds in ascending order, cut into ``--groups`` equal parts
  (as ``ticketctl stats --groups``). One chain per group keeps the groups independent draws of the scheme, which the
  paper's averaging over groups assumes; ``--active-chain all`` makes one chain over every seed (the order given)
  instead, as ``examples/multi_ticket.sh`` did.
- ``--distill-from S`` (a distilled scheme, docs/distillation.md): ``finetune:S:sN`` also scores the training file;
  ``teacher:S:gG`` (G = 1, 2, ...: the seed groups) waits for the group's first k of them (seeds ascending) and
  writes their ensemble's outputs on the training examples (``ensemble --combine probs --out``); the student
  ``finetune:student-S:sN`` is ``finetune:S:sN``'s finetune (same mask, same bagging) distilled from its group's
  teacher, so it waits for that teacher (and ``search:S:sN`` for a ticket).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ticketctl.data.task_table import TASKS
from ticketctl.errors import UsageError
from ticketctl.hparams import DataOptions, DistillOptions, RunOptions, TrainConfig, option
from ticketctl.protocol import executors

PAPER_SCHEMES = ("dense", "bagging", "base", "active", "random")  # Kobayashi et al.'s five (the default)
SCHEMES = PAPER_SCHEMES + ("structured",)  # + structured winning tickets (Liang et al.) at --structured-levels
SEARCHED = ("base", "active", "random")  # schemes whose members are tickets found by IMP
ACTIVE_CHAINS = ("group", "all")  # ACTIVE-LT's earlier members: those of the seed group, or every earlier seed
REPORT_COMBINE = "probs"  # how the report's ensembles combine their members (the paper's: mean probabilities)
ENSEMBLE_ONLY = ("spread_error_corr",)  # metrics undefined for one member: a single prediction has no spread


def level_scheme(level: float) -> str:
    """The protocol's scheme name of structured winning tickets at ``level`` (0.3 -> ``structured-30``)."""
    return f"structured-{round(level * 100)}"


def parse_range(spec: str | int | list, what: str) -> list[int]:
    """``"1-20"``, ``"1,3,5"``, ``"1-3,7"``, an int or a list of ints -> the ints in that order (no repeats).
    Raises UsageError naming ``what`` (the option) for anything else."""
    if isinstance(spec, bool):
        raise UsageError(f"{what} {spec!r}: give integers such as 1-20 or 1,2,3")
    if isinstance(spec, int):
        values = [spec]
    elif isinstance(spec, (list, tuple)):
        values = [v for s in spec for v in parse_range(s, what)]
    else:
        values = []
        for part in str(spec).replace(" ", "").split(","):
            lo, sep, hi = part.partition("-")
            try:
                a = int(lo)
                b = int(hi) if sep else a
            except ValueError:
                raise UsageError(f"{what} {spec!r}: give integers such as 1-20 or 1,2,3") from None
            if b < a:
                raise UsageError(f"{what} {spec!r}: {part} is an empty range")
            values += list(range(a, b + 1))
    if not values:
        raise UsageError(f"{what}: no values given")
    if len(set(values)) != len(values):
        raise UsageError(f"{what} {spec!r}: a value is given twice")
    return values


def parse_schemes(spec: str | list) -> list[str]:
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if str(s).strip()]
    for s in names:
        if s not in SCHEMES:
            raise UsageError(f"--schemes: unknown scheme {s!r} (schemes: {', '.join(SCHEMES)})")
    if not names or len(set(names)) != len(names):
        raise UsageError("--schemes: give each of " + ", ".join(SCHEMES) + " at most once, at least one")
    return names


def parse_names(spec: str | list | None, what: str) -> list[str]:
    """``"nll,ece"`` or a list of names (a plan file's) -> the names in that order; None -> []. Raises UsageError
    naming ``what`` (the option) for a name given twice or an empty one."""
    if spec is None:
        return []
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [str(s).strip() for s in parts]
    if not all(names) or len(set(names)) != len(names):
        raise UsageError(f"{what} {spec!r}: give names separated by commas, each once")
    return names


@dataclass(frozen=True)
class ProtocolOptions:
    """The ``protocol`` command's own options as given on the command line or in a plan file (ranges and lists as
    the text typed), each field declared once (:func:`ticketctl.hparams.option`: default, help, flag); the training
    options come from :class:`TrainConfig`, :class:`DataOptions` and :class:`RunOptions`, the executors' from
    their ``Options`` (``ticketctl.protocol.executors``). :func:`build` parses them into a :class:`Plan`."""

    task: Optional[list[str]] = option(None, "GLUE task (repeat for several: one report each, in REPORT/TASK); with "
                                       "--train-file or --dataset, the name of your task.", flag="--task", short="-t",
                                       choices=TASKS, metavar="TASK")
    seeds: str = option("1-3", "Training seeds: 1-20, 1,2,3 or 1-3,7 (the ACTIVE-LT sequence follows this order).")
    schemes: str = option(",".join(PAPER_SCHEMES), "Comma-separated: dense (BASELINE), bagging, base, active, random "
                          "(BASE-LT, ACTIVE-LT, RANDOM-LT); structured: Super Tickets' structured winning tickets at "
                          "--structured-levels.", choices=SCHEMES)
    groups: int = option(1, "Split each scheme's seeds (in ascending order) into G equal groups; ensembles are "
                         "combined within groups (the paper: 2 groups of 10).")
    size: Optional[str] = option(None, "Ensemble sizes k, e.g. 2-5: Table 1 at the largest, Figure 3 over all. "
                                 "Default: 2 up to min(5, a group's seeds).")
    report: Path = option(Path("report"), "Folder of report.md, report.json, the figures and plan.toml.")
    bagging: float = option(0.9, "BAGGING members train on this seed-dependent fraction.")
    sparsity: float = option(0.3, "Tickets' fraction of pruned prunable weights.")
    prune_step: float = option(0.1, "Fraction of the original prunable weights pruned per IMP round.")
    structured_levels: Optional[str] = option(
        None, "structured scheme: levels (fractions of heads and FFN sublayers pruned), e.g. 0.3,0.5; each level is "
        "a scheme of its own in the report. Default: --sparsity.")
    l1: Optional[float] = option(None, "tau of RANDOM-LT's and ACTIVE-LT's regularizer (default 1e-4).", flag="--l1")
    search_epochs: Optional[float] = option(None, "Epochs per IMP round (default: --epochs).")
    resamples: int = option(1000, "Permutations of the report's tests.")
    active_chain: str = option("group", "ACTIVE-LT's earlier members: those of the seed's group (group: the groups "
                               "stay independent) or every earlier seed (all).", choices=ACTIVE_CHAINS)
    executor: str = option("local", "; ".join(e.help for e in executors.EXECUTORS.values()) + ".",
                           choices=tuple(executors.EXECUTORS))
    distill_from: Optional[str] = option(
        None, "A distilled scheme: per seed group one teacher, the group's first k members of this scheme (one of "
        "--schemes' members, e.g. random or structured-30) averaged (--combine probs) on the training examples; per "
        "seed a student (student-SCHEME) trained as that scheme's member with --distill-alpha and "
        "--distill-temperature (docs/distillation.md).", metavar="SCHEME")
    report_score: Optional[str] = option(
        None, "Also report on these registered metrics (comma-separated; each with a direction: nll, brier, ece, "
        "accuracy, ... or, for regression, gaussian_nll): per metric a section with Table 1, its single-member / "
        "ensembling split, Figure 3 and the cost frontier on it, as `ticketctl stats --score NAME` computes them. "
        "Changes no job: rerun on a finished --out to add it to the report.", metavar="NAME[,NAME...]")


DISTILL_FIELDS = ("distill_alpha", "distill_temperature")  # DistillOptions' fields the protocol takes (not teacher)


# Every option of the command beyond the training options: the protocol's own, then each executor's.
def _command_options() -> type:
    """:class:`ProtocolOptions` and every registered executor's ``Options`` as one dataclass (the command's)."""
    spec = []
    for cls in [ProtocolOptions, DistillOptions, *executors.option_classes()]:
        hints = typing.get_type_hints(cls)
        spec += [(f.name, hints[f.name], field(default=f.default, metadata=f.metadata))
                 for f in dataclasses.fields(cls) if cls is not DistillOptions or f.name in DISTILL_FIELDS]
    made = dataclasses.make_dataclass("CommandOptions", spec, frozen=True)
    made.__doc__ = ("The protocol command's options: ProtocolOptions, DistillOptions' alpha and temperature (the "
                    "students of --distill-from) and every executor's Options.")
    made.__module__ = __name__
    return made


CommandOptions = _command_options()


def defaults() -> dict:
    """Each option of :data:`CommandOptions` -> its command-line default (None: not given)."""
    return {f.name: f.default for f in dataclasses.fields(CommandOptions)}


@dataclass
class Plan:
    """A resolved protocol: every option of the command, validated (:meth:`validate`)."""

    task: Optional[str]
    seeds: list[int]
    schemes: list[str]
    groups: int = 1
    sizes: list[int] = field(default_factory=lambda: [2])  # ensemble sizes k (Figure 3); Table 1 at the largest
    report: Path = Path("report")
    bagging: float = 0.9  # BAGGING: each member trains on this seed-dependent fraction
    sparsity: float = 0.3
    prune_step: float = 0.1
    structured_levels: Optional[list[float]] = None  # structured winning tickets' levels (None: [sparsity])
    l1: Optional[float] = None  # tau of random/active (None: search's default)
    search_epochs: Optional[float] = None  # epochs per IMP round (None: --epochs)
    resamples: int = 1000
    active_chain: str = "group"
    executor: str = "local"
    distill_from: Optional[str] = None  # the scheme (a member scheme) whose k-member ensembles teach the students
    distill_alpha: float = 0.5  # the students' DistillOptions (docs/distillation.md)
    distill_temperature: float = 2.0
    report_scores: list[str] = field(default_factory=list)  # --report-score: the report's sections "On NAME"
    executor_options: dict = field(default_factory=dict)  # every executor's options (None: not given), by name
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataOptions = field(default_factory=DataOptions)
    run: RunOptions = field(default_factory=RunOptions)

    def __getattr__(self, name: str):
        """An executor's option, read as an attribute (``plan.slurm_time``); None where not given."""
        options = self.__dict__.get("executor_options")
        if options is not None and name in {n for e in executors.EXECUTORS.values() for n in e.options}:
            return options.get(name)
        raise AttributeError(name)

    @property
    def k(self) -> int:
        """The ensemble size of Table 1: the largest of ``sizes`` (the paper's k = 5 of ``--size 2-5``)."""
        return max(self.sizes)

    @property
    def levels(self) -> list[float]:
        """The structured tickets' levels (fraction of heads and FFN sublayers pruned)."""
        return list(self.structured_levels) if self.structured_levels else [self.sparsity]

    @property
    def member_schemes(self) -> list[str]:
        """The report's schemes, one per group of members: ``structured`` is one per level (``structured-30``)."""
        out = []
        for s in self.schemes:
            out += [level_scheme(level) for level in self.levels] if s == "structured" else [s]
        return out

    @property
    def search_train(self) -> TrainConfig:
        return self.train if self.search_epochs is None else dataclasses.replace(self.train, epochs=self.search_epochs)

    def validate(self) -> "Plan":
        if self.groups < 1:
            raise UsageError(f"--groups {self.groups}: must be >= 1")
        if len(self.seeds) % self.groups:
            raise UsageError(f"--seeds: {len(self.seeds)} seeds do not split into --groups {self.groups} equal groups")
        per_group = len(self.seeds) // self.groups
        if min(self.sizes) < 1:
            raise UsageError("--size: an ensemble has at least one member")
        if self.k > per_group:
            raise UsageError(f"--size {self.k}: a seed group has only {per_group} members "
                             f"({len(self.seeds)} seeds in {self.groups} group(s))")
        if not 0 < self.bagging < 1:
            raise UsageError("--bagging must be in (0, 1): the fraction each BAGGING member trains on")
        if self.structured_levels is not None:
            if "structured" not in self.schemes:
                raise UsageError("--structured-levels belongs to the structured scheme (--schemes ...,structured)")
            bad = [x for x in self.structured_levels if not 0 < x < 1]
            if bad or len({level_scheme(x) for x in self.structured_levels}) != len(self.structured_levels):
                raise UsageError("--structured-levels: give distinct fractions in (0, 1), e.g. 0.3,0.5")
        if self.search_epochs is not None and self.search_epochs <= 0:
            raise UsageError("--search-epochs must be > 0")
        if self.resamples < 99:
            raise UsageError("--resamples must be >= 99")
        if self.active_chain not in ACTIVE_CHAINS:
            raise UsageError(f"--active-chain must be one of {', '.join(ACTIVE_CHAINS)}")
        mine = executors.get(self.executor)  # one line naming the registered executors for another name
        for other in executors.EXECUTORS.values():
            given = [n for n in other.options if other is not mine and getattr(self, n) is not None]
            if given:
                raise UsageError(f"--{given[0].replace('_', '-')} belongs to --executor {other.name}")
        mine.validate(self)
        if self.run.force:
            raise UsageError("--force does not fit a protocol (it would retrain every member); delete the artifacts "
                             "to recompute")
        self.data.validate()
        self._validate_distill()
        self.check_report_scores(self._known_regression())
        return self

    def _known_regression(self) -> Optional[bool]:
        """Whether the task is a regression, where the plan alone says (a GLUE task, or own data with --metric);
        None where only its data can (own data's labels: :class:`ticketctl.protocol.runner.Locator` checks then)."""
        if self.data.metric is not None:
            return self.data.metric in ("pearson", "spearman")
        if self.data.train_file or self.data.dataset or self.task not in TASKS:
            return None
        return TASKS[self.task].is_regression

    def check_report_scores(self, regression: Optional[bool]) -> None:
        """``--report-score``: each name a registered metric (``ticketctl.analysis.metrics``) with a direction,
        defined under the report's ``--combine probs``, defined for one member (Table 1's single members), of the
        task's kind (``regression`` None: not known yet). Raises UsageError, one line."""
        from ticketctl.analysis.metrics import REGISTRY

        for name in self.report_scores:
            metric = REGISTRY.get(name)
            if metric is None:
                raise UsageError(f"--report-score {name}: not a registered metric (choose from {', '.join(REGISTRY)})")
            if metric.higher_is_better is None:
                raise UsageError(f"--report-score {name}: a quantity reported, neither better nor worse: no "
                                 f"difference to test")
            if REPORT_COMBINE not in metric.combines:
                raise UsageError(f"--report-score {name}: undefined under the report's --combine {REPORT_COMBINE}")
            if name in ENSEMBLE_ONLY:
                raise UsageError(f"--report-score {name}: undefined for one member (Table 1's single members); the "
                                 f"calibration section reports it for ensembles")
            kind = None if regression is None else ("regression" if regression else "classification")
            if kind is not None and metric.kind != kind:
                raise UsageError(f"--report-score {name}: a {metric.kind} metric, and this task is {kind}")

    def _validate_distill(self) -> None:
        """--distill-from names a planned member scheme whose training data is a file its finetunes can score."""
        if self.distill_from is None:
            if (self.distill_alpha, self.distill_temperature) != (0.5, 2.0):
                raise UsageError("--distill-alpha and --distill-temperature belong to --distill-from")
            return
        if self.distill_from not in self.member_schemes:
            raise UsageError(f"--distill-from {self.distill_from}: not a scheme of this plan (its schemes: "
                             f"{', '.join(self.member_schemes)})")
        DistillOptions("-", self.distill_alpha, self.distill_temperature).validate()
        evals, train = self.data.max_eval_samples, self.data.max_train_samples
        if evals is not None and (train is None or evals < train):
            raise UsageError("--max-eval-samples would cut the teachers' outputs on the training examples short of "
                             "the students' (--distill-from): give it >= --max-train-samples, or leave it out")
        self.train_file()

    def train_file(self) -> str:
        """The file the task's training split is read from (the embedded GLUE copy, ``--data-dir``'s, or
        ``--train-file``): the finetunes of ``--distill-from`` score it as one more evaluation split. Raises
        UsageError where the training data is not a file (``--dataset``, a GLUE task from the hub)."""
        from ticketctl.data import files

        if self.data.train_file:
            return str(self.data.train_file)
        if self.data.dataset:
            raise UsageError("--distill-from needs the training data as a file (--train-file or a GLUE task), not "
                             "--dataset")
        if not self.task:
            raise UsageError("--task is required: a GLUE task, or your own data with --train-file")
        task = files.get_task(self.task)
        data_dir = files.data_dir_from_env(self.data.data_dir)
        path = Path(data_dir) / task.folder / "train.tsv" if data_dir else files.EMBEDDED_DIR / task.folder / (
            "train.tsv.gz")
        if not path.is_file():
            raise UsageError(f"--distill-from: no training file {path} for {task.name} (give --data-dir with GLUE's "
                             f"layout)")
        return str(path)

    @property
    def teacher_data(self) -> DataOptions:
        """The data options of the finetunes of ``--distill-from``: the plan's, with the training file scored too."""
        return dataclasses.replace(self.data, eval_files=[*self.data.eval_files, self.train_file()])

    def distill(self, teacher: str) -> DistillOptions:
        """The students' distillation options with ``teacher`` (the teacher job's artifact)."""
        return DistillOptions(teacher, self.distill_alpha, self.distill_temperature)

    def seed_group(self, seed: int) -> int:
        """The 0-based seed group of ``seed``: the seeds in ascending order cut into ``groups`` equal parts (the
        grouping of :func:`ticketctl.analysis.stats.load_groups`)."""
        return sorted(self.seeds).index(seed) // (len(self.seeds) // self.groups)

    def jobs_graph(self) -> dict[str, "Job"]:
        """Every job of the plan, in an order where each job comes after its dependencies."""
        jobs: dict[str, Job] = {}
        chains: dict[int, list[str]] = {}  # ACTIVE-LT: the searches so far, per chain
        for seed in self.seeds:
            previous_active = chains.setdefault(self.seed_group(seed) if self.active_chain == "group" else 0, [])
            for scheme in self.schemes:
                if scheme in ("dense", "bagging"):
                    j = Job(f"finetune:{scheme}:s{seed}", "finetune", scheme, seed)
                    jobs[j.id] = j
                    continue
                if scheme == "structured":
                    search = Job(f"search:structured:s{seed}", "search", scheme, seed,
                                 (f"finetune:dense:s{seed}",) if "dense" in self.schemes else ())
                    jobs[search.id] = search
                    for i, level in enumerate(self.levels):
                        name = level_scheme(level)
                        ticket = Job(f"finetune:{name}:s{seed}", "finetune", name, seed, (search.id,),
                                     mask=search.id, mask_index=i)
                        jobs[ticket.id] = ticket
                    continue
                deps: tuple[str, ...] = ()
                if scheme == "base" and "dense" in self.schemes:
                    deps = (f"finetune:dense:s{seed}",)
                priors: tuple[str, ...] = ()
                if scheme == "active":
                    priors = tuple(previous_active)
                    deps = priors[-1:]
                search = Job(f"search:{scheme}:s{seed}", "search", scheme, seed, deps, priors=priors)
                jobs[search.id] = search
                if scheme == "active":
                    previous_active.append(search.id)
                ticket = Job(f"finetune:{scheme}:s{seed}", "finetune", scheme, seed, (search.id,), mask=search.id)
                jobs[ticket.id] = ticket
        if self.distill_from is not None:
            self._distilled(jobs)
        return {j: dataclasses.replace(job, task=self.task) for j, job in jobs.items()}

    def _distilled(self, jobs: dict[str, "Job"]) -> None:
        """Add ``--distill-from``'s jobs to ``jobs``: its finetunes also score the training file; per seed group
        ``teacher:SCHEME:gG`` over the group's first k of them (seeds ascending); per seed
        ``finetune:student-SCHEME:sN``, that seed's member's finetune (its mask, its bagging) with the teacher."""
        scheme = self.distill_from
        for seed in self.seeds:
            member = f"finetune:{scheme}:s{seed}"
            jobs[member] = dataclasses.replace(jobs[member], scores_train=True)
        per_group = len(self.seeds) // self.groups
        ordered = sorted(self.seeds)
        for g in range(self.groups):
            firsts = ordered[g * per_group:g * per_group + self.k]
            teacher = Job(f"teacher:{scheme}:g{g + 1}", "teacher", scheme, firsts[0],
                          tuple(f"finetune:{scheme}:s{s}" for s in firsts))
            jobs[teacher.id] = teacher
        for seed in self.seeds:
            member = jobs[f"finetune:{scheme}:s{seed}"]
            teacher = f"teacher:{scheme}:g{self.seed_group(seed) + 1}"
            student = dataclasses.replace(member, id=f"finetune:student-{scheme}:s{seed}", scheme=f"student-{scheme}",
                                          deps=(*member.deps, teacher), teacher=teacher, scores_train=False)
            jobs[student.id] = student

    def options_dict(self) -> dict:
        """The resolved plan as plain values (for plan.toml and report.json)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "executor_options":
                out.update(v)
                continue
            if f.name in DISTILL_FIELDS and self.distill_from is None:
                continue  # a plan without students reads as it did
            if f.name in ("train", "data", "run"):
                v = {k: (str(x) if isinstance(x, Path) else x) for k, x in dataclasses.asdict(v).items()}
            elif isinstance(v, Path):
                v = str(v)
            out[f.name] = v
        return out


@dataclass(frozen=True)
class Job:
    """One step of the protocol: a ``search`` or a ``finetune`` of one scheme and seed, or (``--distill-from``) a
    ``teacher``: a seed group's k-member ensemble's outputs on the training examples (``seed``: the group's first)."""

    id: str
    kind: str  # search | finetune
    scheme: str
    seed: int
    deps: tuple[str, ...] = ()  # jobs that must finish first
    mask: Optional[str] = None  # finetune of a ticket: the search job whose mask it trains
    priors: tuple[str, ...] = ()  # ACTIVE-LT search: the earlier members' search jobs, in order
    mask_index: int = 0  # finetune of a ticket: which of its search's masks (structured: one per level)
    task: Optional[str] = None  # the plan's task (``--task``)
    teacher: Optional[str] = None  # a student's finetune: the teacher job whose artifact it distils
    scores_train: bool = False  # a finetune of --distill-from: it also scores the training file (the teachers')

    @property
    def trained_as(self) -> str:
        """The scheme whose options the finetune trains with (a student's: its teacher's scheme)."""
        return self.scheme.removeprefix("student-")

    @property
    def key(self) -> str:
        """The job's name among every task's jobs of one ``--out`` (``mrpc:finetune:dense:s3``; the id where the plan
        has no task): Slurm's job name, ``slurm-jobs.tsv``, the jobs of several tasks run together."""
        return f"{self.task}:{self.id}" if self.task else self.id

    @property
    def slug(self) -> str:
        """The key as a file name (its log: ``mrpc-finetune-dense-s3``)."""
        return self.key.replace(":", "-")


# ---------------------------------------------------------------------------------------------- plan files


# Named plans (``--plan quick``): the README's quick worked example, 3 seeds of dense and RANDOM-LT members on MRPC
# with finetunes of 2 epochs and IMP rounds of 1 (about half an hour on 2 CPU cores with the default model).
PRESETS = {
    "quick": 'task = "mrpc"\nseeds = "1-3"\nschemes = "dense,random"\nsize = "2"\nepochs = 2\nsearch_epochs = 1\n'
             'out = "runs-quick"\nreport = "report-quick"\n',
}


def read_plan_file(path: str | Path) -> dict:
    """A TOML plan (``--plan FILE``, or the name of a preset in :data:`PRESETS` where no such file exists): a flat
    table whose keys are the command's option names (``seeds``, ``schemes``, ``epochs``, ``max-train-samples`` or
    ``max_train_samples``, ...). Raises UsageError for a missing or malformed file."""
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        raise UsageError("--plan needs Python 3.11 or newer (tomllib)") from None
    try:
        if not Path(path).exists() and str(path) in PRESETS:
            table = tomllib.loads(PRESETS[str(path)])
        else:
            with open(path, "rb") as f:
                table = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--plan {path}: no such file (presets: {', '.join(PRESETS)})") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"--plan {path}: {e}") from None
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            raise UsageError(f"--plan {path}: [{key}]: a plan is one flat table of option names (no sections)")
        flat[key.replace("-", "_")] = value
    return flat


def toml_text(values: dict, header: str = "") -> str:
    """``values`` (str, int, float, bool, lists of them, None left out) as a flat TOML table."""
    import json

    lines = [f"# {line}" for line in header.splitlines()]
    for key, value in values.items():
        if value is None or value == [] or isinstance(value, dict):
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def build_all(options, train: TrainConfig, data: DataOptions, run: RunOptions,
              plan_file: str | Path | None = None) -> list[Plan]:
    """One validated plan per task (``options.task``: a list of names, or None), each reporting into
    ``REPORT/TASK`` when there are several; otherwise as :func:`build`."""
    options, train, data, run = merge(options, train, data, run, plan_file)
    tasks = options["task"] if isinstance(options["task"], (list, tuple)) else [options["task"]]
    tasks = list(tasks) or [None]
    if len(set(tasks)) != len(tasks):
        raise UsageError("--task: a task is given twice")
    report = Path(options["report"])
    return [build({**options, "task": t, "report": report / t if len(tasks) > 1 else report}, train, data, run)
            for t in tasks]


def merge(options, train: TrainConfig, data: DataOptions, run: RunOptions,
          plan_file: str | Path | None = None) -> tuple[dict, TrainConfig, DataOptions, RunOptions]:
    """The command's values (a :data:`CommandOptions`, or a dict of some of its fields: the others at their
    defaults) with a plan file's values filling every option left at its default."""
    given = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)
    declared = defaults()
    unknown = set(given) - set(declared)
    if unknown:
        raise UsageError(f"unknown protocol option(s): {', '.join(sorted(unknown))}")
    options = {**declared, **given}
    if options.get("task") == []:
        options["task"] = None
    if plan_file is not None:
        groups = {"train": train, "data": data, "run": run}
        for key, value in read_plan_file(plan_file).items():
            if key in declared:
                if str(options.get(key)) == str(declared[key]):
                    options[key] = value
                continue
            for name, obj in groups.items():
                fields = {f.name: f for f in dataclasses.fields(obj)}
                if key in fields:
                    f = fields[key]
                    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    if getattr(obj, key) == default or (name == "run" and key == "out" and
                                                        Path(getattr(obj, key)) == Path(default)):
                        try:
                            groups[name] = dataclasses.replace(obj, **{key: value})
                        except (TypeError, ValueError) as e:
                            raise UsageError(f"--plan {plan_file}: {key} = {value!r}: {e}") from None
                    break
            else:
                raise UsageError(f"--plan {plan_file}: unknown option {key!r}")
        train, data, run = groups["train"], groups["data"], groups["run"]
    return options, train, data, run


def build(options: dict, train: TrainConfig, data: DataOptions, run: RunOptions,
          plan_file: str | Path | None = None) -> Plan:
    """The validated plan from the command's values (as :func:`merge` takes them) and, with
    ``plan_file``, a TOML plan whose values fill every option the command line left at its default. Raises
    UsageError (one line) for an unknown key, a bad value or a plan that does not fit (:meth:`Plan.validate`)."""
    from ticketctl.masks import structured

    options, train, data, run = merge(options, train, data, run, plan_file)
    seeds = parse_range(options["seeds"], "--seeds")
    n_groups = _int(options["groups"], "--groups")
    per_group = len(seeds) // max(1, n_groups)
    size = options["size"]
    sizes = parse_range(size, "--size") if size is not None else (
        list(range(2, min(5, per_group) + 1)) if per_group >= 2 else [1])
    parsed = {"task": options["task"], "seeds": seeds, "schemes": parse_schemes(options["schemes"]),
              "groups": n_groups, "sizes": sizes, "report": Path(options["report"]),
              "structured_levels": None if options["structured_levels"] is None else structured.parse_levels(
                  options["structured_levels"], "--structured-levels"),
              "report_scores": parse_names(options["report_score"], "--report-score")}
    hints = typing.get_type_hints(CommandOptions)
    for name in defaults():
        if name not in parsed and name not in ("size", "report_score"):
            parsed[name] = _typed(options[name], hints[name], "--" + name.replace("_", "-"))
    mine = {n for e in executors.EXECUTORS.values() for n in e.options}
    plan = Plan(**{k: v for k, v in parsed.items() if k not in mine},
                executor_options={k: v for k, v in parsed.items() if k in mine}, train=train, data=data, run=run)
    return plan.validate()


def _typed(value, hint, what: str):
    """An option's value (from the command line or a plan file) as its declared type: int, float, str or Path, or
    None for an Optional one. Raises UsageError naming ``what``."""
    if value is None and type(None) in typing.get_args(hint):
        return None
    kind = next((t for t in (int, float, str, Path) if hint is t or t in typing.get_args(hint)), str)
    if kind is int:
        return _int(value, what)
    if kind is float:
        return _float(value, what)
    return Path(value) if kind is Path else str(value)


def _int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).lstrip("-").isdigit():
        raise UsageError(f"{what} {v!r}: give an integer")
    return int(v)


def _float(v, what: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise UsageError(f"{what} {v!r}: give a number") from None
