"""The command line: each command is a few lines over a library function (``ticketctl.stages``,
``ticketctl.analysis``) that Python code can call the same way. Its options are declared in ``ticketctl.cli_params``
(the dataclass groups through ``cli_options.options``); how a command ends is ``ticketctl.cli_exit``. Importing this
module must not import torch (fast ``--help`` and completion): every command imports what it needs when it runs.
"""
from __future__ import annotations

import sys

import typer

from ticketctl import cli_params as opt
from ticketctl.cli_exit import error_line as _error  # the name the protocol command's body calls
from ticketctl.cli_exit import print_paths, run
from ticketctl.cli_options import options
from ticketctl.errors import JobsFailed, UsageError
from ticketctl.hparams import DataOptions, DistillOptions, RunOptions, TrainConfig
from ticketctl.protocol.plan import CommandOptions

app = typer.Typer(
    name="ticketctl",
    help="Find lottery-ticket subnetworks of a pretrained language model, finetune them, and ensemble them.\n\n"
    "Results (artifact paths, tables) go to stdout; progress and logs go to stderr.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(version: opt.Version = False) -> None:
    """Find lottery-ticket subnetworks of a pretrained language model, finetune them, and ensemble them.

    Results (artifact paths, tables) go to stdout; progress and logs go to stderr."""


# ---------------------------------------------------------------------------------------------- training commands

@app.command()
@options(train=TrainConfig, data=DataOptions, run=RunOptions, distill=DistillOptions)
def finetune(
    train: TrainConfig, data: DataOptions, run: RunOptions, distill: DistillOptions, task: opt.Task = None,
    seed: opt.Seed = 0,
    mask: opt.FinetuneMask = None, bagging: opt.FinetuneBagging = 1.0, save_model: opt.FinetuneSaveModel = None,
    init: opt.FinetuneInit = None, train_fraction: opt.FinetuneTrainFraction = None,
):
    """Finetune the pretrained model (dense, bagging, or a ticket) and write dev-set logits; with --teacher, a
    student distilled from a member's or an ensemble's outputs on the training examples.

    Prints one logits artifact path per evaluation split (dev, then each --eval-file).
    """
    from ticketctl.data.sampling import parse_fractions
    from ticketctl.stages.finetune import FinetuneSpec, run_finetunes

    print_paths(run_finetunes([FinetuneSpec(task, seed, mask=mask, bagging=bagging, init=init, train_fraction=f,
                                            save_model=save_model, train=train, data=data, run=run, distill=distill)
                               for f in parse_fractions(train_fraction)]))


@app.command()
@options(**opt.TRAINING)
def search(
    train: TrainConfig, data: DataOptions, run: RunOptions, task: opt.Task = None, seed: opt.Seed = 0,
    method: opt.SearchMethod = "imp", policy: opt.SearchPolicy = "base", sparsity: opt.SearchSparsity = "0.3",
    ticket: opt.SearchTicket = "winning", train_fraction: opt.TrainFraction = 1.0,
    prune_step: opt.SearchPruneStep = 0.1, l1: opt.SearchL1 = None, diversity: opt.SearchDiversity = None,
    prior: opt.SearchPrior = None,
):
    """Find a lottery ticket: by iterative magnitude pruning with rewinding (--method imp), or a structured super
    ticket of heads and FFN sublayers (--method structured). Prints the mask artifact path(s)."""
    from ticketctl.stages.inputs import search_levels
    from ticketctl.store.artifacts import read_paths

    levels = search_levels(method, sparsity, ticket=ticket, l1=l1, diversity=diversity)
    if method == "structured":
        from ticketctl.stages.structured import StructuredSpec, parse_tickets, run_structured

        print_paths(run_structured(StructuredSpec(task, seed, levels=levels, kinds=parse_tickets(ticket),
                                                  train_fraction=train_fraction, policy=policy, diversity=diversity,
                                                  priors=[] if prior in (None, ["none"]) else read_paths(prior),
                                                  train=train, data=data, run=run)))
        return
    from ticketctl.stages.imp import SearchSpec, run_search

    priors = ["none"] if prior == ["none"] else read_paths(prior) if prior else []
    print_paths([run_search(SearchSpec(task, seed, policy=policy, sparsity=levels[0], prune_step=prune_step, l1=l1,
                                       priors=priors, train_fraction=train_fraction, train=train, data=data,
                                       run=run))])


@app.command()
@options(**opt.SHARING)
def share(
    task: opt.ShareTask, train: TrainConfig, data: DataOptions, run: RunOptions, mask: opt.ShareMask = None,
    seed: opt.Seed = 0, sampling: opt.ShareSampling = "proportional", save_model: opt.ShareSaveModel = None,
):
    """Multi-task ticket sharing: one encoder, a head per task, each task's batches through its structured mask.

    Prints one logits artifact path per task and evaluation split.
    """
    from ticketctl.stages.share import ShareSpec, run_share

    print_paths(run_share(ShareSpec(task, mask, seed, sampling=sampling, save_model=save_model, train=train, data=data,
                                    run=run)))


@app.command()
@options(proto=CommandOptions, train=TrainConfig, data=DataOptions, run=RunOptions)
def protocol(
    train: TrainConfig, data: DataOptions, run: RunOptions, proto: CommandOptions, plan: opt.ProtocolPlan = None,
    dry_run: opt.ProtocolDryRun = False, status: opt.ProtocolStatus = False, cancel: opt.ProtocolCancel = False,
    detach: opt.ProtocolDetach = False,
):
    """The whole Multi-Ticket Ensemble protocol: every scheme's members for every seed (dense and bagging finetunes,
    IMP searches and their tickets' finetunes, the ACTIVE-LT chain), only the jobs not finished already, then the
    report (Tables 1-2, Figures 3-4, costs) in --report.

    Prints the report's path (or, with --dry-run, the jobs). Exit 4 when jobs failed (listed on stderr with their
    logs; rerun to resume).
    """
    from ticketctl.protocol.plan import build_all

    plans = build_all(proto, train, data, run, plan)
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
        from ticketctl.protocol.report import write_report

        for p in plans:
            submitted = runner.detach(p, write_report, Log(run.quiet, run.verbose))
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
    for resolved, outcome in zip(plans, runner.run_plans(plans, log, states)):  # every task's jobs run together
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
    data_file: opt.PredictDataFile, run: RunOptions, model_dir: opt.PredictModelDir,
    ensemble: opt.PredictEnsemble = False, output: opt.PredictOutput = None, combine: opt.PredictCombine = "probs",
    batch_size: opt.PredictBatchSize = 128, split: opt.PredictSplit = None,
):
    """Run saved members on new text: one logits artifact per member (for `ensemble`, `stats`, `--submission`), and
    with --ensemble the averaged predictions with the task's label names.

    Prints the artifact paths, or with --ensemble (and no --output) the predictions.
    """
    from ticketctl.stages.predict import PredictSpec, run_predict

    if output is not None and not ensemble:
        raise UsageError("--output belongs to --ensemble")
    written = run_predict(PredictSpec(data_file, model_dir, batch_size=batch_size, split=split, run=run))
    if not ensemble:
        print_paths(written)
        return
    from ticketctl.stages.predict import predict_ensemble

    predict_ensemble(written, combine, output)
    if output is not None:
        print_paths([*written, output])


@app.command()
def convert(
    source: opt.ConvertSource, target: opt.ConvertTarget, model: opt.ConvertModel = None, task: opt.ConvertTask = None,
):
    """Convert masks between ticketctl and torch.nn.utils.prune's weight_mask convention (the direction follows the
    source). Prints the written path."""
    from ticketctl.stages.convert import convert as run_convert

    print_paths([run_convert(source, target, task=task, run=RunOptions(model=model))])


# ---------------------------------------------------------------------------------------------- analysis commands

@app.command()
def show(
    artifacts: opt.ShowArtifacts, json_output: opt.ShowJsonOutput = False, verify: opt.ShowVerify = False,
    plot: opt.ShowPlot = None,
):
    """Print an artifact's metadata and a summary (sparsity per layer for masks, metrics for logits)."""
    from ticketctl.analysis.commands import show_artifacts

    show_artifacts(artifacts, json_output, verify, plot)


@app.command()
def ensemble(
    members: opt.Paths,
    combine: opt.Combine = "probs",
    size: opt.EnsembleSize = None, groups: opt.EnsembleGroups = 1, out: opt.EnsembleOut = None,
    submission: opt.EnsembleSubmission = None, scores: opt.EnsembleScores = None, ece_bins: opt.EnsembleEceBins = 15,
    ood: opt.EnsembleOod = None, calibration_split: opt.CalibrationSplit = None, format: opt.Format = "table",
    fit_sample: opt.EnsembleFitSample = 1000,
):
    """Average member outputs and print the ensemble's metrics (or its artifact path with --out)."""
    from ticketctl.analysis import ensemble as data
    from ticketctl.analysis import metrics, render
    from ticketctl.analysis.tables import note
    from ticketctl.errors import UsageError
    from ticketctl.store.artifacts import read_paths

    if ece_bins < 1:
        raise UsageError(f"--ece-bins {ece_bins}: needs at least 1 bin")
    data.check_fit_sample(fit_sample)
    options = metrics.Options(ece_bins=ece_bins)
    result = data.ensemble(read_paths(members), combine, size, scores, options, ood, calibration_split)
    if result.undefined:
        note(metrics.vote_note(result.undefined))
    if submission is not None:
        data.write_submission(str(submission), result)
        note(f"wrote GLUE submission {submission}")
    if out is not None:
        render.ensemble_written(result, data.write_ensemble(result, out))
        return
    sizes = (data.size_table(result.members, result.sizes, combine, groups, result.scores, result.options, result.ood,
                             fit_sample) if result.sizes else None)
    render.ensemble(result, sizes, format, submission is not None)


@app.command()
def diversity(members: opt.Paths, matrix: opt.DiversityMatrix = False, format: opt.Format = "table"):
    """Pairwise diversity of members: Q statistic, correlation, disagreement, negative double fault, ratio errors
    (classification); error correlation and ambiguity decomposition (regression)."""
    from ticketctl.analysis.commands import print_diversity

    print_diversity(members, matrix, format)


@app.command()
def iou(
    masks: opt.Paths, layers: opt.IouLayers = False, importance: opt.IouImportance = False,
    remaining: opt.IouRemaining = False, plot: opt.IouPlot = None, cross_task: opt.IouCrossTask = False,
    format: opt.Format = "table",
):
    """Intersection over union of the surviving weights of masks, pairwise (the paper's Figure 4); of kept heads and
    FFN sublayers for structured masks."""
    from ticketctl.analysis.commands import print_iou

    print_iou(masks, layers, importance, remaining, plot, cross_task, format)


@app.command()
def stats(
    artifacts: opt.Paths, by: opt.StatsBy = "policy", ref: opt.StatsRef = None, size: opt.StatsSize = None,
    combine: opt.Combine = "probs", plot: opt.StatsPlot = None, groups: opt.StatsGroups = 1,
    test: opt.StatsTest = "permutation", resamples: opt.StatsResamples = 1000, bootstrap: opt.StatsBootstrap = 0,
    select: opt.StatsSelect = None, select_fraction: opt.StatsSelectFraction = 0.5, cost: opt.StatsCost = False,
    score: opt.StatsScore = None, ood: opt.StatsOod = None, calibration_split: opt.CalibrationSplit = None,
    format: opt.Format = "table",
):
    """Table 1 of the paper: per group, mean single-member and k-member ensemble metrics (the paper's protocol with
    --groups), and against the reference group the difference with a 95% interval and a calibrated p-value
    (permutation test over seeds; --test paper: the paper's t-test). --by sparsity prints the phase-transition table
    instead (metric vs sparsity per ticket kind, full model as reference)."""
    from ticketctl.analysis.commands import print_stats

    print_stats(artifacts, by=by, ref=ref, size=size, combine=combine, plot=plot, groups=groups, test=test,
                resamples=resamples, bootstrap=bootstrap, select=select, select_fraction=select_fraction, cost=cost,
                score=score, format=format, ood=ood, calibration_split=calibration_split)


def main(argv: list[str] | None = None) -> None:
    """The ``ticketctl`` entry point: the app, with one-line errors and exit statuses (:func:`cli_exit.run`)."""
    run(app, argv)
