"""The command line: each command is a few lines over a library function (``ticketctl.stages``,
``ticketctl.analysis``) that Python code can call the same way.

The training options come from the dataclasses in ``ticketctl.hparams`` (:func:`options`): each field is one
option, declared once, with its help text beside it. Importing this module must not import torch (fast ``--help``
and shell completion): every command imports what it needs when it runs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import signal
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from ticketctl.errors import EXIT_INTERRUPTED, JobsFailed, TicketError, UsageError
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig

app = typer.Typer(
    name="ticketctl",
    help="Find lottery-ticket subnetworks of a pretrained language model, finetune them, and ensemble them.\n\n"
    "Results (artifact paths, tables) go to stdout; progress and logs go to stderr.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# ---------------------------------------------------------------------------------------------- options


def choices(*values: str):
    """Shell completion of an option's values (the option still validates them itself, with its own message)."""
    def complete(incomplete: str):
        return [v for v in values if v.startswith(incomplete)]

    return complete


def policy_choices(incomplete: str):
    """Shell completion of ``--policy``: the registered pruning policies (``ticketctl.masks.policies``)."""
    from ticketctl.masks import policies

    return [v for v in policies.names() if v.startswith(incomplete)]


TASK_NAMES = ("mrpc", "stsb", "rte", "cola", "sst2", "wnli", "qnli", "qqp", "mnli")  # ticketctl.data.tasks.TASKS


def options(**groups: type):
    """Give a command the fields of the option dataclasses as Typer options: ``@options(train=TrainConfig)`` adds
    one option per field of ``TrainConfig`` (its flag, help and default from the field) and passes
    the command a ``train`` argument built from them. A group given as ``(cls, {"field", ...})`` leaves those
    fields out."""

    def wrap(fn):
        params = [p for p in inspect.signature(fn).parameters.values() if p.name not in groups]
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
        built: dict[str, tuple[type, list[str]]] = {}
        for arg, spec in groups.items():
            cls, exclude = spec if isinstance(spec, tuple) else (spec, set())
            types = typing.get_type_hints(cls)
            names = []
            for f in dataclasses.fields(cls):
                if f.name in exclude:
                    continue
                meta = f.metadata
                decls = []  # Typer's own flag from the name (a bool gets --x / --no-x) unless the field names one
                if meta.get("flag") or meta.get("short"):
                    decls = [meta.get("flag") or "--" + f.name.replace("_", "-")] + [meta["short"]] * bool(meta["short"])
                default = None if f.default is dataclasses.MISSING else f.default
                extra = {"autocompletion": choices(*meta["choices"])} if meta.get("choices") else {}
                params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                annotation=Annotated[types[f.name], typer.Option(
                                                    *decls, help=meta["help"], **extra)]))
                names.append(f.name)
            built[arg] = (cls, names)

        @functools.wraps(fn)
        def command(**kwargs):
            for arg, (cls, names) in built.items():
                kwargs[arg] = cls(**{n: kwargs.pop(n) for n in names})
            return fn(**kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the signature above, not the function's own
        return command

    return wrap


Task = Annotated[Optional[str], typer.Option(
    "--task", "-t", autocompletion=choices(*TASK_NAMES), help="GLUE task: mrpc, stsb, rte, cola, sst2, wnli, qnli, qqp, mnli; with --train-file or --dataset, "
    "the name of your task.")]
Seed = Annotated[int, typer.Option(help="Random seed (task head, data order, dropout, policy masks).")]
TrainFraction = Annotated[float, typer.Option(
    help="Search on a seed-dependent fraction of the training set (e.g. the phase transition with less data).")]
TRAINING = {"train": TrainConfig, "data": (DataOptions, {"eval_files", "eval_splits"}), "run": RunOptions}
CUSTOM_DATA = {"train_file", "validation_file", "dataset", "dataset_config", "validation_split", "text_columns",
               "label_column", "metric"}
SHARING = {"train": TrainConfig, "data": (DataOptions, {"eval_files", "eval_splits", "subset_seed", *CUSTOM_DATA}),
           "run": RunOptions}


def print_paths(paths: list[Path]) -> None:
    """Artifact paths on stdout, one per line (process 0 speaks for a data-parallel run)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for p in paths:
        sys.stdout.write(f"{p}\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------- training commands


@app.command()
@options(train=TrainConfig, data=DataOptions, run=RunOptions)
def finetune(
    train: TrainConfig,
    data: DataOptions,
    run: RunOptions,
    task: Task = None,
    seed: Seed = 0,
    mask: Annotated[Optional[str], typer.Option(help="Mask artifact from `search`: finetune that ticket.")] = None,
    bagging: Annotated[float, typer.Option(help="Train on a seed-dependent random fraction of the training set.")] = 1.0,
    save_model: Annotated[Optional[Path], typer.Option(
        help="Also save the finetuned model as a transformers folder (a structured ticket at the full model's "
        "shapes with zeros for its pruned heads and FFNs: stock transformers loads it, ticketctl prunes it again); "
        "a rerun into a folder holding the same member reuses it.")] = None,
    init: Annotated[Optional[str], typer.Option(
        help="Start from the encoder saved in this folder (finetune/share --save-model) instead of the pretrained "
        "one, with a fresh task head (transfer).")] = None,
    train_fraction: Annotated[Optional[str], typer.Option(
        help="Train on a seed-dependent fraction of the training set (nested across fractions); a comma-separated "
        "list runs one finetune per fraction.")] = None,
):
    """Finetune the pretrained model (dense, bagging, or a ticket) and write dev-set logits.

    Prints one logits artifact path per evaluation split (dev, then each --eval-file).
    """
    from ticketctl.data.sampling import parse_fractions
    from ticketctl.stages.finetune import finetune as run_finetune

    print_paths(run_finetune(task, seed, mask=mask, bagging=bagging, init=init, save_model=save_model,
                             train_fraction=parse_fractions(train_fraction), train=train, data=data, run=run))


@app.command()
@options(**TRAINING)
def search(
    train: TrainConfig,
    data: DataOptions,
    run: RunOptions,
    task: Task = None,
    seed: Seed = 0,
    method: Annotated[str, typer.Option(autocompletion=choices("imp", "structured"),
        help="imp: iterative magnitude pruning of weights (Multi-Ticket Ensemble). structured: one-shot pruning of "
        "attention heads and FFN sublayers by importance (Super Tickets).")] = "imp",
    policy: Annotated[str, typer.Option(
        autocompletion=policy_choices,
        help="imp: base | active | random (the paper's BASE-LT, ACTIVE-LT, RANDOM-LT). structured: base (plain winning "
        "tickets) | perturbed (seed-perturbed importance) | active (prefer the heads and FFNs --prior masks dropped): "
        "diverse winning tickets of the same size.")] = "base",
    sparsity: Annotated[str, typer.Option(
        help="Target fraction to prune: of prunable weights (imp), of heads and of FFN sublayers (structured; a "
        "comma-separated list writes one mask per level).")] = "0.3",
    ticket: Annotated[str, typer.Option(autocompletion=choices("winning", "random", "losing"),
        help="structured: winning | random | losing, or a comma-separated list (one mask per kind and level).")] = "winning",
    train_fraction: TrainFraction = 1.0,
    prune_step: Annotated[float, typer.Option(help="Fraction of the original prunable weights pruned per round.")] = 0.1,
    l1: Annotated[Optional[float], typer.Option(
        "--l1", help="tau of the L1 regularizer (random/active); decays with the learning rate. Default 1e-4 for "
        "random/active, 0 for base.")] = None,
    diversity: Annotated[Optional[float], typer.Option(
        help="structured --policy perturbed: sigma of the log-normal noise on the importance scores (default 0.5); "
        "active: weight of the earlier members' drops (default 1.0).")] = None,
    prior: Annotated[Optional[list[str]], typer.Option(
        "--prior", help="Earlier members' masks for --policy active (repeatable; - reads paths from stdin; none for the "
        "first member, which is plain IMP recorded as active).")] = None,
):
    """Find a lottery ticket: by iterative magnitude pruning with rewinding (--method imp), or a structured super
    ticket of heads and FFN sublayers (--method structured). Prints the mask artifact path(s)."""
    from ticketctl.masks.structured import parse_levels

    if method not in ("imp", "structured"):
        raise UsageError("--method must be imp or structured")
    levels = parse_levels(sparsity)
    if method == "structured":
        from ticketctl.stages.structured import parse_tickets, structured_search

        if l1 is not None:
            raise UsageError("--l1 belongs to --method imp")
        from ticketctl.store.artifacts import read_paths

        print_paths(structured_search(task, seed, levels=levels, kinds=parse_tickets(ticket),
                                      train_fraction=train_fraction, policy=policy, diversity=diversity,
                                      priors=[] if prior in (None, ["none"]) else read_paths(prior), train=train,
                                      data=data, run=run))
        return
    from ticketctl.stages.imp import search as run_search
    from ticketctl.store.artifacts import read_paths

    if len(levels) != 1:
        raise UsageError("--method imp takes one --sparsity level")
    if ticket != "winning":
        raise UsageError("--ticket belongs to --method structured")
    if diversity is not None:
        raise UsageError("--diversity belongs to --method structured (imp's policies use --l1)")
    priors = ["none"] if prior == ["none"] else read_paths(prior) if prior else []
    print_paths([run_search(task, seed, policy=policy, sparsity=levels[0], prune_step=prune_step, l1=l1,
                            priors=priors, train_fraction=train_fraction, train=train, data=data, run=run)])


@app.command()
@options(**SHARING)
def share(
    task: Annotated[list[str], typer.Option("--task", "-t", help="A task to train on (repeat: --task rte --task mrpc).")],
    train: TrainConfig,
    data: DataOptions,
    run: RunOptions,
    mask: Annotated[Optional[list[str]], typer.Option(
        help="The structured mask of each --task, in the same order (repeat). None: dense multi-task baseline.")] = None,
    seed: Seed = 0,
    sampling: Annotated[str, typer.Option(autocompletion=choices("proportional", "equal"),
        help="proportional: tasks drawn in proportion to their training examples; equal: uniformly.")] = "proportional",
    save_model: Annotated[Optional[Path], typer.Option(
        help="Save the shared encoder (a transformers folder usable as --model) with the task heads and masks.")] = None,
):
    """Multi-task ticket sharing: one encoder, a head per task, each task's batches through its structured mask.

    Prints one logits artifact path per task and evaluation split.
    """
    from ticketctl.stages.share import share as run_share

    print_paths(run_share(task, mask, seed, sampling=sampling, save_model=save_model, train=train, data=data, run=run))


@app.command()
@options(train=TrainConfig, data=DataOptions, run=RunOptions)
def protocol(
    train: TrainConfig,
    data: DataOptions,
    run: RunOptions,
    task: Annotated[Optional[list[str]], typer.Option(
        "--task", "-t", metavar="TASK", autocompletion=choices(*TASK_NAMES), help="GLUE task (repeat for several: one report each, "
        "in REPORT/TASK); with --train-file or --dataset, the name of your task.")] = None,
    seeds: Annotated[str, typer.Option(help="Training seeds: 1-20, 1,2,3 or 1-3,7 (the ACTIVE-LT sequence follows "
                                             "this order).")] = "1-3",
    schemes: Annotated[str, typer.Option(autocompletion=choices("dense", "bagging", "base", "active", "random",
                                                                "structured"),
        help="Comma-separated: dense (BASELINE), bagging, base, active, random (BASE-LT, ACTIVE-LT, RANDOM-LT); "
             "structured: Super Tickets' structured winning tickets at --structured-levels.")
    ] = "dense,bagging,base,active,random",
    groups: Annotated[int, typer.Option(help="Split each scheme's seeds (in ascending order) into G equal groups; "
                                             "ensembles are combined within groups (the paper: 2 groups of 10).")
                      ] = 1,
    size: Annotated[Optional[str], typer.Option(
        help="Ensemble sizes k, e.g. 2-5: Table 1 at the largest, Figure 3 over all. Default: 2 up to min(5, a "
             "group's seeds).")] = None,
    report: Annotated[Path, typer.Option(help="Folder of report.md, report.json, the figures and plan.toml.")
                      ] = Path("report"),
    plan: Annotated[Optional[Path], typer.Option(
        help="A TOML plan: option = value for any option of this command (e.g. seeds = \"1-20\", epochs = 2); "
             "options given on the command line win.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the jobs (id, done/todo, dependencies, "
                                                            "artifact) and 'N to run, M done'; run nothing.")] = False,
    status: Annotated[bool, typer.Option("--status", help="Print each job's state (done, its Slurm state while an "
                                                          "earlier run's job is queued or running, todo); run "
                                                          "nothing.")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="scancel the Slurm jobs earlier runs of this plan "
                                                          "submitted that are still queued or running.")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="slurm: submit every job and the report as a job that "
                                                          "runs after them, print JOB<TAB>SLURM_ID lines (the last "
                                                          "one: report) and exit; --status shows them, a rerun "
                                                          "re-attaches.")] = False,
    bagging: Annotated[float, typer.Option(help="BAGGING members train on this seed-dependent fraction.")] = 0.9,
    sparsity: Annotated[float, typer.Option(help="Tickets' fraction of pruned prunable weights.")] = 0.3,
    prune_step: Annotated[float, typer.Option(help="Fraction of the original prunable weights pruned per IMP "
                                                   "round.")] = 0.1,
    structured_levels: Annotated[Optional[str], typer.Option(
        help="structured scheme: levels (fractions of heads and FFN sublayers pruned), e.g. 0.3,0.5; each level is a "
             "scheme of its own in the report. Default: --sparsity.")] = None,
    l1: Annotated[Optional[float], typer.Option("--l1", help="tau of RANDOM-LT's and ACTIVE-LT's regularizer "
                                                             "(default 1e-4).")] = None,
    search_epochs: Annotated[Optional[float], typer.Option(help="Epochs per IMP round (default: --epochs).")] = None,
    resamples: Annotated[int, typer.Option(help="Permutations of the report's tests.")] = 1000,
    active_chain: Annotated[str, typer.Option(autocompletion=choices("group", "all"),
        help="ACTIVE-LT's earlier members: those of the seed's group (group: the groups stay independent) or "
             "every earlier seed (all).")] = "group",
    executor: Annotated[str, typer.Option(autocompletion=lambda incomplete: [  # the registered executors
        n for n in importlib.import_module("ticketctl.protocol.executors").EXECUTORS if n.startswith(incomplete)],
        help="local: a process pool on this machine; slurm: jobs submitted through submitit (pip install "
             "'ticketctl[slurm]').")] = "local",
    jobs: Annotated[Optional[int], typer.Option(help="local: jobs at once (default: cores / --threads, or 1); "
                                                     "jobs x threads must not exceed the cores.")] = None,
    jobs_per_gpu: Annotated[Optional[int], typer.Option(help="local, where GPUs exist: N jobs per GPU, each worker "
                                                             "pinned with CUDA_VISIBLE_DEVICES.")] = None,
    slurm_partition: Annotated[Optional[str], typer.Option(help="slurm: partition.")] = None,
    slurm_gpus_per_job: Annotated[Optional[int], typer.Option(help="slurm: GPUs per job (1: a job trains on one "
                                                                   "GPU).")] = None,
    slurm_time: Annotated[Optional[str], typer.Option(help="slurm: time limit per job, as sbatch --time reads it "
                                                           "(M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; default 1-0).")
                          ] = None,
    slurm_mem: Annotated[Optional[str], typer.Option(help="slurm: memory per job, as sbatch --mem (16G, 4000M).")
                         ] = None,
    slurm_array_parallelism: Annotated[Optional[int], typer.Option(help="slurm: array tasks running at once.")
                                       ] = None,
    slurm_extra: Annotated[Optional[str], typer.Option(help="slurm: more sbatch options, e.g. \"--qos=high "
                                                            "--account=lab\".")] = None,
):
    """The whole Multi-Ticket Ensemble protocol: every scheme's members for every seed (dense and bagging finetunes,
    IMP searches and their tickets' finetunes, the ACTIVE-LT chain), only the jobs not finished already, then the
    report (Tables 1-2, Figures 3-4, costs) in --report.

    Prints the report's path (or, with --dry-run, the jobs). Exit 4 when jobs failed (listed on stderr with their
    logs; rerun to resume).
    """
    from ticketctl.protocol.plan import DEFAULTS, build_all

    values = {k: v for k, v in locals().items() if k in DEFAULTS}
    plans = build_all({**values, "report": str(report)}, train, data, run, plan)
    from ticketctl.protocol import runner

    if cancel:
        for p in plans:
            done = runner.cancel(p)
            sys.stderr.write(f"cancelled {len(done)} Slurm job(s)" + (": " + " ".join(done) if done else "") + "\n")
        return
    if status:
        for p in plans:
            for line in runner.status(p, runner.locate(p)):
                sys.stdout.write(line + "\n")
        return
    if detach:
        for p in plans:  # every plan refused before anything is submitted
            runner.check(p, detach=True)
        from ticketctl.log import Log

        for p in plans:
            submitted = runner.detach(p, Log(run.quiet, run.verbose))
            for job, slurm_id in submitted:
                sys.stdout.write(f"{p.task + chr(9) if len(plans) > 1 else ''}{job}\t{slurm_id}\n")
            sys.stderr.write(f"detached: {len(submitted) - 1} job(s) in Slurm; the report job {submitted[-1][1]} "
                             f"writes {p.report / 'report.md'} after them (--status shows them, a rerun "
                             f"re-attaches)\n")
        return
    if dry_run:
        states = [runner.locate(p) for p in plans]
        for state in states:
            for line in runner.describe(state)[:-1]:
                sys.stdout.write(line + "\n")
        sys.stdout.write(f"{sum(len(s.todo) for s in states)} to run, {sum(len(s.done) for s in states)} done\n")
        return
    from ticketctl.log import Log
    from ticketctl.protocol.report import write_report

    log = Log(run.quiet, run.verbose)
    for p in plans:  # the executor can run here (Slurm answers; a GPU named for local jobs is here)
        runner.check(p)
    states = [runner.locate(p) for p in plans]  # every task's data checked before the first task's jobs train
    failed, total = 0, 0
    for resolved, state in zip(plans, states):
        outcome = runner.run_plan(resolved, log, state)
        total += len(outcome.state.jobs)
        if outcome.failures:
            failed += len(outcome.failures)
            for job, why in outcome.failures.items():
                _error(f"{resolved.task + ' ' if len(plans) > 1 else ''}{job} failed: {why}")
            continue
        members, masks = outcome.members(), outcome.masks()
        print_paths([write_report(resolved, outcome, members, masks)])
    if failed:
        raise JobsFailed(f"{failed} of {total} jobs failed; the others are finished: rerun the same command to "
                         f"resume")


@app.command()
@options(run=(RunOptions, {"model"}))
def predict(
    data_file: Annotated[Path, typer.Argument(
        help="New text: .csv, .tsv, .json or .jsonl with the task's text columns (a GLUE task also reads its TSV "
        "layout); a label column, where present, is scored.")],
    run: RunOptions,
    model_dir: Annotated[list[Path], typer.Option(
        "--model-dir", "-m", help="A member saved by `finetune --save-model` (repeat for an ensemble).")],
    ensemble: Annotated[bool, typer.Option(
        help="Also average the members and print id<TAB>prediction<TAB>p_<label>... (to --output FILE if given).")] = False,
    output: Annotated[Optional[Path], typer.Option(help="With --ensemble: write the predictions here, not to stdout.")] = None,
    combine: Annotated[str, typer.Option(autocompletion=choices("probs", "logits", "vote"), help="How --ensemble averages classification members: probs | logits | vote.")] = "probs",
    batch_size: Annotated[int, typer.Option(help="Examples per forward pass.")] = 128,
    split: Annotated[Optional[str], typer.Option(help="Split name in the artifacts (default: the file's stem).")] = None,
):
    """Run saved members on new text: one logits artifact per member (for `ensemble`, `stats`, `--submission`), and
    with --ensemble the averaged predictions with the task's label names.

    Prints the artifact paths, or with --ensemble (and no --output) the predictions.
    """
    from ticketctl.stages.predict import predict as run_predict

    if output is not None and not ensemble:
        raise UsageError("--output belongs to --ensemble")
    written = run_predict(data_file, model_dir, batch_size=batch_size, split=split, run=run)
    if not ensemble:
        print_paths(written)
        return
    from ticketctl.analysis.combine import combined_outputs, vote_shares
    from ticketctl.analysis.members import load_ensemble_members
    from ticketctl.stages.predict import write_predictions

    members = load_ensemble_members([str(p) for p in written])
    shares = vote_shares(members.outputs) if combine == "vote" and not members.task.is_regression else None
    write_predictions(members.task, members.shown_ids, combined_outputs(members.task, members.outputs, combine),
                      output, shares)
    if output is not None:
        print_paths([*written, output])


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(help="A ticketctl mask artifact, or a file of torch prune '*_mask' "
                                                "tensors (.safetensors, .pt: e.g. a pruned model's state dict).")],
    target: Annotated[Path, typer.Argument(help="Where to write: torch prune masks (.safetensors or .pt), or the "
                                                "ticketctl mask artifact (.safetensors).")],
    model: Annotated[Optional[str], typer.Option(help="The model the masks are for (import; a structured export "
                                                      "reads its parameter names). Default: a structured export uses the model the mask records, an import the "
                                                      "default model.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Import: the task recorded in the mask "
                                                                     "(default: imported).")] = None,
):
    """Convert masks between ticketctl and torch.nn.utils.prune's weight_mask convention (the direction follows the
    source). Prints the written path."""
    from ticketctl.stages.convert import convert as run_convert

    print_paths([run_convert(source, target, task=task, run=RunOptions(model=model))])


# ---------------------------------------------------------------------------------------------- analysis commands

Paths = Annotated[list[str], typer.Argument(help="Artifact files; - reads whitespace-separated paths from stdin.")]
Format = Annotated[str, typer.Option("--format", "-f", autocompletion=choices("table", "tsv", "json", "markdown"),
                                     help="table | tsv | json | markdown.")]
Combine = Annotated[str, typer.Option(autocompletion=choices("probs", "logits", "vote"), help="How classification members are averaged: probs | logits | vote.")]


@app.command()
def show(
    artifacts: Annotated[list[str], typer.Argument(help="Artifact files (- reads paths from stdin).")],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per artifact, one per line.")] = False,
    verify: Annotated[bool, typer.Option(help="Recompute the parents' content hashes; exit 3 if any changed or "
                                              "is missing.")] = False,
    plot: Annotated[Optional[str], typer.Option(
        help="Draw the training curves (loss every 10 steps) of the logits artifacts to FILE.png / .svg.")] = None,
):
    """Print an artifact's metadata and a summary (sparsity per layer for masks, metrics for logits)."""
    from ticketctl.analysis import render
    from ticketctl.analysis import show as data
    from ticketctl.analysis.tables import note
    from ticketctl.store.artifacts import read_paths

    if plot:
        note(f"wrote {plot} ({data.plot_curves(read_paths(artifacts), plot)} training curves)")
        return
    shown = []
    for p in read_paths(artifacts):  # each printed as it is read, as far as the first unreadable one
        shown.append(data.describe_one(p, verify))
        render.show(shown[-1:], json_output)
    data.unverified(shown)


@app.command()
def ensemble(
    members: Paths,
    combine: Combine = "probs",
    size: Annotated[Optional[str], typer.Option(
        help="Score every k-member combination: k, a list 2,3,5, or a range 2-5 (mean, std, min, max).")] = None,
    groups: Annotated[int, typer.Option(help="Split the members (in seed order, as stats does) into this many groups "
                                             "and pool combinations within groups (the paper's Appendix C).")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Write the ensemble's logits artifact into this folder and "
                                                     "print its path.")] = None,
    submission: Annotated[Optional[Path], typer.Option(help="Write GLUE's index<TAB>prediction file.")] = None,
    format: Format = "table",
):
    """Average member outputs and print the ensemble's metrics (or its artifact path with --out)."""
    from ticketctl.analysis import ensemble as data
    from ticketctl.analysis import render
    from ticketctl.analysis.tables import note
    from ticketctl.store.artifacts import read_paths

    result = data.ensemble(read_paths(members), combine, size)
    if submission is not None:
        data.write_submission(str(submission), result)
        note(f"wrote GLUE submission {submission}")
    if out is not None:
        render.ensemble_written(result, data.write_ensemble(result, out))
        return
    sizes = data.size_table(result.members, result.sizes, combine, groups) if result.sizes else None
    render.ensemble(result, sizes, format, submission is not None)


@app.command()
def diversity(
    members: Paths,
    matrix: Annotated[bool, typer.Option(help="Print every pair instead of the averages.")] = False,
    format: Format = "table",
):
    """Pairwise diversity of members: Q statistic, correlation, disagreement, negative double fault, ratio errors
    (classification); error correlation and ambiguity decomposition (regression)."""
    from ticketctl.analysis import render
    from ticketctl.analysis.diversity import diversity as data
    from ticketctl.analysis.tables import emit
    from ticketctl.store.artifacts import read_paths

    emit(render.diversity_table(data(read_paths(members), matrix)), format)


@app.command()
def iou(
    masks: Paths,
    layers: Annotated[bool, typer.Option(help="Per-parameter mean IoU over pairs instead of the matrix.")] = False,
    importance: Annotated[bool, typer.Option(
        help="Structured masks of several tasks: per head and FFN, importance averaged over tasks and each task's "
        "share (Super Tickets' Figure 6); --plot draws it.")] = False,
    remaining: Annotated[bool, typer.Option(
        help="Structured masks: heads, FFNs and fraction of encoder weights each keeps (Super Tickets' Figure 3).")] = False,
    plot: Annotated[Optional[str], typer.Option(help="Draw the IoU heatmap (or --importance bars) to FILE.png / .svg.")] = None,
    cross_task: Annotated[bool, typer.Option(
        help="Compare masks of different tasks (refused otherwise, as in the other analysis commands; --importance "
        "and --remaining compare tasks anyway).")] = False,
    format: Format = "table",
):
    """Intersection over union of the surviving weights of masks, pairwise (the paper's Figure 4); of kept heads and
    FFN sublayers for structured masks."""
    from ticketctl.analysis import iou as data
    from ticketctl.analysis import render
    from ticketctl.analysis.tables import emit, note
    from ticketctl.store.artifacts import read_paths

    data.check_views(layers, importance, remaining)
    paths = read_paths(masks)
    if remaining:
        emit(render.remaining_table(data.remaining(paths)), format)
    elif layers:
        emit(render.layer_iou_table(data.layer_iou(paths, cross_task)), format)
    elif importance:
        result = data.importance(paths)
        emit(render.importance_table(result), format)
        if plot:
            data.plot_importance(result, plot, "importance across tasks")
            note(f"wrote {plot}")
    else:
        result = data.mask_iou(paths, cross_task)
        emit(render.iou_table(result), format)
        if plot:
            data.plot_heatmap(result.values, result.labels, plot, f"{result.task}: IoU of {render.iou_what(result)}")
            note(f"wrote {plot}")


@app.command()
def stats(
    artifacts: Paths,
    by: Annotated[str, typer.Option(autocompletion=choices("policy", "scheme", "sparsity", "bagging", "seed",
                                                           "train_fraction", "method"),
                                    help="Metadata key to group by: policy, scheme (policy, and the level of "
                                    "structured tickets), sparsity, bagging, seed, ...")] = "policy",
    ref: Annotated[Optional[str], typer.Option(help="Reference group of the comparisons (default: dense, else base).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Ensemble size k (default: min(5, smallest group)).")] = None,
    combine: Combine = "probs",
    plot: Annotated[Optional[str], typer.Option(help="Draw ensemble gain over the reference vs k (Figure 3) to FILE.")] = None,
    groups: Annotated[int, typer.Option(help="The paper's protocol: split each scheme's seeds (in seed order) into G "
                                             "equal groups and average the ensembles within groups, then over groups "
                                             "(Kobayashi et al. use 2 groups of 10 seeds).")] = 1,
    test: Annotated[str, typer.Option(autocompletion=choices("permutation", "paper"), help="permutation: paired permutation test over seeds (calibrated); paper: "
                                           "the paper's t-test over combinations (optimistic).")] = "permutation",
    resamples: Annotated[int, typer.Option(help="Permutations of the test.")] = 1000,
    bootstrap: Annotated[int, typer.Option(help="Resample the evaluation examples N times for a 95% interval of "
                                                "each group's ensemble mean (0: off).")] = 0,
    select: Annotated[Optional[str], typer.Option(autocompletion=choices("best"),
        help="best: with --by sparsity, print the mask path(s) of the best winning level (the super ticket), chosen "
        "on a seeded part of the evaluation examples and reported on the rest.")] = None,
    select_fraction: Annotated[float, typer.Option(help="With --select best: the fraction of the evaluation "
                                                        "examples the level is chosen on.")] = 0.5,
    cost: Annotated[bool, typer.Option(
        "--cost", help="The frontier at equal inference cost instead: per budget of dense-member equivalents (analytic "
        "FLOPs), each scheme's largest ensemble within it and its difference to --ref at the same budget; --plot draws "
        "the metric against cost.")] = False,
    format: Format = "table",
):
    """Table 1 of the paper: per group, mean single-member and k-member ensemble metrics (the paper's protocol with
    --groups), and against the reference group the difference with a 95% interval and a calibrated p-value
    (permutation test over seeds; --test paper: the paper's t-test). --by sparsity prints the phase-transition table
    instead (metric vs sparsity per ticket kind, full model as reference)."""
    from ticketctl.analysis import render
    from ticketctl.analysis import stats as data
    from ticketctl.analysis.tables import note
    from ticketctl.store.artifacts import read_paths

    paths = read_paths(artifacts)
    data.check_options(by, size, bootstrap, select)
    if select:
        render.super_ticket(data.super_ticket(paths, select_fraction))
        return
    if by in data.PIVOTS:
        table = data.phase_transition(paths, by, resamples)
        render.phase(table, format)
        if plot:
            data.plot_phase(table, plot, f"{table.on.task}: "
                            + ("phase transition" if by == "sparsity" else "metric vs training data"))
    elif cost:
        from ticketctl.analysis import frontier

        result = data.cost_frontier(paths, by, ref, combine, groups)
        render.cost_frontier(result, format)
        if plot:
            frontier.plot(result.curves, result.on.metric, plot,
                          f"{result.on.task}: {result.on.metric} vs inference cost, by {by}")
    else:
        result = data.table1(paths, by, ref, size, combine, groups, test, resamples, bootstrap, curves=bool(plot))
        render.table1(result, format)
        if plot:
            data.plot_gain(result.gain_curves, result.ref, result.on.metric, plot,
                           f"{result.on.task}: ensemble gain over {result.ref}")
    if plot:
        note(f"wrote {plot}")


# ---------------------------------------------------------------------------------------------- entry point


class _Signalled(BaseException):
    """Raised by our signal handlers: unlike KeyboardInterrupt, Typer does not swallow it, so ``main`` can print
    one line and exit with 128 + the signal number. Temporary files are removed on the way out."""

    def __init__(self, signum: int):
        self.signum = signum


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


def _error(msg: str) -> None:
    sys.stderr.write(f"ticketctl: error: {msg}\n")
    sys.stderr.flush()


def _click_exceptions():
    """Typer 0.20+ vendors click as ``typer._click``; older Typer uses the click package."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the Typer version
        from click import exceptions
    return exceptions


def _finite_floats(command) -> None:
    """Every float option of every command refuses ``nan`` and ``inf`` (which float() accepts), with one line and
    exit 2, as any other bad option value: each float option's callback checks the parsed value first."""
    import math

    exceptions = _click_exceptions()

    def is_float(param) -> bool:
        descriptor = getattr(param, "type_descriptor", None)
        annotation = getattr(descriptor, "annotation", None)
        return annotation is float or float in typing.get_args(annotation)

    def finite(callback):
        def check(ctx, param, value):
            if isinstance(value, float) and not math.isfinite(value):
                raise exceptions.BadParameter(f"{value!r} is not a finite number", ctx=ctx, param=param)
            return callback(ctx, param, value) if callback is not None else value

        return check

    for cmd in getattr(command, "commands", {}).values():
        for param in cmd.params:
            if is_float(param):
                param.callback = finite(param.callback)


def main(argv: list[str] | None = None) -> None:
    click = _click_exceptions()
    signal.signal(signal.SIGTERM, _raise_signalled)
    if hasattr(signal, "SIGPIPE"):  # `ticketctl show ... | head`: end quietly like any Unix tool (exit 141)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # leave an inherited "ignore" alone
        signal.signal(signal.SIGINT, _raise_signalled)
    try:
        command = typer.main.get_command(app)
        _finite_floats(command)
        rv = command.main(args=argv, prog_name="ticketctl", standalone_mode=False)
    except TicketError as e:
        _error(str(e))
        sys.exit(e.exit_code)
    except click.UsageError as e:
        _error(e.format_message().replace("\n", " "))
        sys.exit(2)
    except click.ClickException as e:
        _error(e.format_message())
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        _error("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except _Signalled as e:
        _error("interrupted" if e.signum == signal.SIGINT else "terminated")
        sys.exit(128 + e.signum)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): exit quietly, without a second error while flushing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
