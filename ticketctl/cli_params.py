"""The options each command declares (flags, choices, help texts), so that ``ticketctl.cli`` is the commands alone:
the groups of dataclass options the training commands share, the options several commands share (``Task``,
``Seed``, ``Paths``, ``Format``, ...), and one alias per command option, named command + option (``StatsBy`` is
``stats --by``). Imports no torch (``--help`` and completion stay fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ticketctl.cli_options import choices, policy_choices, print_version
from ticketctl.data.task_table import TASKS
from ticketctl.hparams import DataOptions, RunOptions, TrainConfig

# ---------------------------------------------------------------------------------------------- shared

Version = Annotated[bool, typer.Option("--version", callback=print_version, is_eager=True,
                                       help="Print ticketctl's version and exit.")]
Task = Annotated[Optional[str], typer.Option(
    "--task", "-t", autocompletion=choices(*TASKS),
    help=f"GLUE task: {', '.join(TASKS)}; with --train-file or --dataset, the name of your task.")]
Seed = Annotated[int, typer.Option(help="Random seed (task head, data order, dropout, policy masks).")]
TrainFraction = Annotated[float, typer.Option(
    help="Search on a seed-dependent fraction of the training set (e.g. the phase transition with less data).")]
TRAINING = {"train": TrainConfig, "data": (DataOptions, {"eval_files", "eval_splits", "ood_file", "calibration_file"}),
            "run": RunOptions}
CUSTOM_DATA = {"train_file", "validation_file", "dataset", "dataset_config", "validation_split", "text_columns",
               "label_column", "metric"}
SHARING = {"train": TrainConfig, "data": (DataOptions, {"eval_files", "eval_splits", "ood_file", "calibration_file",
                                                       "subset_seed", *CUSTOM_DATA}),
           "run": RunOptions}
Paths = Annotated[list[str], typer.Argument(help="Artifact files; - reads whitespace-separated paths from stdin.")]
Format = Annotated[str, typer.Option("--format", "-f", autocompletion=choices("table", "tsv", "json", "markdown"),
                                     help="table | tsv | json | markdown.")]
Combine = Annotated[str, typer.Option(autocompletion=choices("probs", "logits", "vote"),
                                      help="How classification members are averaged: probs | logits | vote.")]

# ---------------------------------------------------------------------------------------------- per command

FinetuneMask = Annotated[Optional[str], typer.Option(help="Mask artifact from `search`: finetune that ticket.")]
FinetuneBagging = Annotated[float, typer.Option(help="Train on a seed-dependent random fraction of the training set.")]
FinetuneSaveModel = Annotated[Optional[Path], typer.Option(
        help="Also save the finetuned model as a transformers folder (a structured ticket at the full model's "
        "shapes with zeros for its pruned heads and FFNs: stock transformers loads it, ticketctl prunes it again); "
        "a rerun into a folder holding the same member reuses it.")]
FinetuneInit = Annotated[Optional[str], typer.Option(
        help="Start from the encoder saved in this folder (finetune/share --save-model) instead of the pretrained "
        "one, with a fresh task head (transfer).")]
FinetuneTrainFraction = Annotated[Optional[str], typer.Option(
        help="Train on a seed-dependent fraction of the training set (nested across fractions); a comma-separated "
        "list runs one finetune per fraction.")]
SearchMethod = Annotated[str, typer.Option(autocompletion=choices("imp", "structured"),
        help="imp: iterative magnitude pruning of weights (Multi-Ticket Ensemble). structured: one-shot pruning of "
        "attention heads and FFN sublayers by importance (Super Tickets).")]
SearchPolicy = Annotated[str, typer.Option(
        autocompletion=policy_choices,
        help="imp: base | active | random (the paper's BASE-LT, ACTIVE-LT, RANDOM-LT). structured: base (plain winning "
        "tickets) | perturbed (seed-perturbed importance) | active (prefer the heads and FFNs --prior masks dropped): "
        "diverse winning tickets of the same size.")]
SearchSparsity = Annotated[str, typer.Option(
        help="Target fraction to prune: of prunable weights (imp), of heads and of FFN sublayers (structured; a "
        "comma-separated list writes one mask per level).")]
SearchTicket = Annotated[str, typer.Option(autocompletion=choices("winning", "random", "losing"),
        help="structured: winning | random | losing, or a comma-separated list (one mask per kind and level).")]
SearchPruneStep = Annotated[float, typer.Option(help="Fraction of the original prunable weights pruned per round.")]
SearchL1 = Annotated[Optional[float], typer.Option(
        "--l1", help="tau of the L1 regularizer (random/active); decays with the learning rate. Default 1e-4 for "
        "random/active, 0 for base.")]
SearchDiversity = Annotated[Optional[float], typer.Option(
        help="structured --policy perturbed: sigma of the log-normal noise on the importance scores (default 0.5); "
        "active: weight of the earlier members' drops (default 1.0).")]
SearchPrior = Annotated[Optional[list[str]], typer.Option(
        "--prior", help="Earlier members' masks for --policy active (repeatable; - reads paths from stdin; none for "
        "the first member, which is plain IMP recorded as active).")]
ShareTask = Annotated[list[str], typer.Option("--task", "-t",
                                              help="A task to train on (repeat: --task rte --task mrpc).")]
ShareMask = Annotated[Optional[list[str]], typer.Option(
        help="The structured mask of each --task, in the same order (repeat). None: dense multi-task baseline.")]
ShareSampling = Annotated[str, typer.Option(autocompletion=choices("proportional", "equal"),
        help="proportional: tasks drawn in proportion to their training examples; equal: uniformly.")]
ShareSaveModel = Annotated[Optional[Path], typer.Option(
        help="Save the shared encoder (a transformers folder usable as --model) with the task heads and masks.")]
PredictDataFile = Annotated[Path, typer.Argument(
        help="New text: .csv, .tsv, .json or .jsonl with the task's text columns (a GLUE task also reads its TSV "
        "layout); a label column, where present, is scored.")]
PredictModelDir = Annotated[list[Path], typer.Option(
        "--model-dir", "-m", help="A member saved by `finetune --save-model` (repeat for an ensemble).")]
PredictEnsemble = Annotated[bool, typer.Option(
        help="Also average the members and print id<TAB>prediction<TAB>p_<label>... and, for classification, "
        "total_entropy<TAB>mutual_information (nats: the row's uncertainty and the members' disagreement) (to "
        "--output FILE if given).")]
PredictOutput = Annotated[Optional[Path], typer.Option(
    help="With --ensemble: write the predictions here, not to stdout.")]
PredictCombine = Annotated[str, typer.Option(autocompletion=choices("probs", "logits", "vote"),
                                             help="How --ensemble averages classification members: probs | logits | "
                                             "vote.")]
PredictBatchSize = Annotated[int, typer.Option(help="Examples per forward pass.")]
PredictSplit = Annotated[Optional[str], typer.Option(help="Split name in the artifacts (default: the file's stem).")]
ConvertSource = Annotated[Path, typer.Argument(help="A ticketctl mask artifact, or a file of torch prune '*_mask' "
                                                "tensors (.safetensors, .pt: e.g. a pruned model's state dict).")]
ConvertTarget = Annotated[Path, typer.Argument(help="Where to write: torch prune masks (.safetensors or .pt), or the "
                                                "ticketctl mask artifact (.safetensors).")]
ConvertModel = Annotated[Optional[str], typer.Option(help="The model the masks are for (import; a structured export "
                                                      "reads its parameter names). Default: a structured export uses "
                                                      "the model the mask records, an import the default model.")]
ConvertTask = Annotated[Optional[str], typer.Option("--task", "-t", help="Import: the task recorded in the mask "
                                                                     "(default: imported).")]
ShowArtifacts = Annotated[list[str], typer.Argument(help="Artifact files (- reads paths from stdin).")]
ShowJsonOutput = Annotated[bool, typer.Option("--json", help="One JSON object per artifact, one per line.")]
ShowVerify = Annotated[bool, typer.Option(help="Recompute the parents' content hashes; exit 3 if any changed or "
                                              "is missing.")]
ShowPlot = Annotated[Optional[str], typer.Option(
        help="Draw the training curves (loss every 10 steps) of the logits artifacts to FILE.png / .svg.")]
EnsembleSize = Annotated[Optional[str], typer.Option(
    help="Score every k-member combination: k, a list 2,3,5, or a range 2-5 (mean, std, min, max).")]
EnsembleGroups = Annotated[int, typer.Option(help="Split the members (in seed order, as stats does) into this many "
                                                  "groups and pool combinations within groups (the paper's Appendix "
                                                  "C).")]
EnsembleOut = Annotated[Optional[Path], typer.Option(help="Write the ensemble's logits artifact into this folder and "
                                                          "print its path.")]
EnsembleSubmission = Annotated[Optional[Path], typer.Option(help="Write GLUE's index<TAB>prediction file.")]
EnsembleScores = Annotated[Optional[str], typer.Option(
    help="Further columns after the task's metrics, comma-separated, or 'all': probability calibration (nll, brier, "
         "ece, adaptive_ece; ts_nll, ts_ece and the temperature after cross-fitted temperature scaling), selective "
         "prediction (aurc, eaurc), uncertainty (total_entropy, expected_entropy, mutual_information); regression: "
         "gaussian_nll, spread_error_corr (docs/calibration.md).")]
EnsembleFitSample = Annotated[int, typer.Option(
    help="--size with the temperature-fitted --scores (ts_nll, ts_ece, temperature) only: where a group has more "
         "k-member combinations than this, they are averaged over a seeded random sample of this many per group "
         "(their cost: one temperature fit per ensemble), and a note gives each mean's Monte Carlo standard error; "
         "0 scores every combination. Every other column is over all combinations (docs/calibration.md).")]
EnsembleOod = Annotated[Optional[str], typer.Option(
    "--ood", metavar="SPLIT",
    help="Out-of-distribution detection: the artifacts given of this split (finetune --ood-file's are 'ood') are the "
         "same members' outputs on texts from another distribution, paired member by member; adds AUROC and FPR at "
         "95% TPR of 1 - max probability (msp), entropy and mutual information (mi, for >1 member) at telling them "
         "from the evaluation split's texts (docs/calibration.md).")]
CalibrationSplit = Annotated[Optional[str], typer.Option(
    "--calibration-split", metavar="SPLIT",
    help="Temperature scaling's calibration split: the artifacts given of this split (finetune --eval-file FILE's "
         "are named after FILE) are the same members' outputs on labelled examples apart from the scored ones, "
         "paired member by member; ts_nll, ts_ece and temperature fit each ensemble's one temperature on all of them "
         "instead of cross-fitting over the evaluation split's folds (docs/calibration.md).")]
EnsembleEceBins = Annotated[int, typer.Option(help="Bins of ece, adaptive_ece and ts_ece (equal width; adaptive: "
                                                   "equal mass).")]
DiversityMatrix = Annotated[bool, typer.Option(help="Print every pair instead of the averages.")]
IouLayers = Annotated[bool, typer.Option(help="Per-parameter mean IoU over pairs instead of the matrix.")]
IouImportance = Annotated[bool, typer.Option(
        help="Structured masks of several tasks: per head and FFN, importance averaged over tasks and each task's "
        "share (Super Tickets' Figure 6); --plot draws it.")]
IouRemaining = Annotated[bool, typer.Option(
        help="Structured masks: heads, FFNs and fraction of encoder weights each keeps (Super Tickets' Figure 3).")]
IouPlot = Annotated[Optional[str], typer.Option(help="Draw the IoU heatmap (or --importance bars) to FILE.png / .svg.")]
IouCrossTask = Annotated[bool, typer.Option(
        help="Compare masks of different tasks (refused otherwise, as in the other analysis commands; --importance "
        "and --remaining compare tasks anyway).")]
StatsBy = Annotated[str, typer.Option(autocompletion=choices("policy", "scheme", "sparsity", "bagging", "seed",
                                                           "train_fraction", "method"),
                                    help="Metadata key to group by: policy, scheme (policy, and the level of "
                                    "structured tickets), sparsity, bagging, seed, ...")]
StatsRef = Annotated[Optional[str], typer.Option(
    help="Reference group of the comparisons (default: dense, else base).")]
StatsSize = Annotated[Optional[int], typer.Option(help="Ensemble size k (default: min(5, smallest group)).")]
StatsPlot = Annotated[Optional[str], typer.Option(
    help="Draw ensemble gain over the reference vs k (Figure 3) to FILE.")]
StatsGroups = Annotated[int, typer.Option(help="The paper's protocol: split each scheme's seeds (in seed order) into G "
                                             "equal groups and average the ensembles within groups, then over groups "
                                             "(Kobayashi et al. use 2 groups of 10 seeds).")]
StatsTest = Annotated[str, typer.Option(autocompletion=choices("permutation", "paper"),
                                        help="permutation: paired permutation test over seeds (calibrated); paper: "
                                        "the paper's t-test over combinations (optimistic).")]
StatsScore = Annotated[Optional[str], typer.Option(
        help="Compare by this registered metric instead of the task's own (--metric is the own data's "
        "headline metric): nll, brier, ece, adaptive_ece, ts_nll, ts_ece, aurc, eaurc, accuracy, f1, ...; regression "
        "gaussian_nll, spread_error_corr. Table 1, --cost, --by sparsity/train_fraction: same protocol and tests; "
        "differences stay group minus --ref in the metric's units (for lower-is-better metrics a negative one "
        "favours the group), Table 1 gets a verdict column and --cost an on_frontier column that follow the "
        "metric's direction, and --select best picks the level best in that direction (docs/calibration.md).")]
StatsOod = Annotated[Optional[str], typer.Option(
        "--ood", metavar="SPLIT",
        help="Table 1 of out-of-distribution detection: the artifacts given of this split are the same members' "
        "outputs on other texts (as ensemble --ood); --score is then an OOD column, default auroc_msp: auroc_ or "
        "fpr95_ of msp, entropy, mi (ensembles only); regression auroc_spread, fpr95_spread (ensembles only). Same "
        "protocol and seed test; AUROC higher, FPR95 lower is better (docs/calibration.md).")]
StatsResamples = Annotated[int, typer.Option(help="Permutations of the test.")]
StatsBootstrap = Annotated[int, typer.Option(help="Resample the evaluation examples N times for a 95% interval of "
                                                "each group's ensemble mean (0: off).")]
StatsSelect = Annotated[Optional[str], typer.Option(autocompletion=choices("best"),
        help="best: with --by sparsity, print the mask path(s) of the best winning level (the super ticket), chosen "
        "on a seeded part of the evaluation examples and reported on the rest.")]
StatsSelectFraction = Annotated[float, typer.Option(help="With --select best: the fraction of the evaluation "
                                                        "examples the level is chosen on.")]
StatsCost = Annotated[bool, typer.Option(
        "--cost", help="The frontier at equal inference cost instead: per budget of dense-member equivalents (analytic "
        "FLOPs), each scheme's largest ensemble within it and its difference to --ref at the same budget; --plot draws "
        "the metric against cost.")]

# ---------------------------------------------------------------------------------------------- protocol

ProtocolPlan = Annotated[Optional[Path], typer.Option(
        help="A TOML plan: option = value for any option of this command (e.g. seeds = \"1-20\", epochs = 2); "
             "options given on the command line win.")]
ProtocolDryRun = Annotated[bool, typer.Option("--dry-run", help="Print the jobs (id, done/todo, dependencies, "
                                                            "artifact) and 'N to run, M done'; run nothing.")]
ProtocolStatus = Annotated[bool, typer.Option("--status", help="Print each job's state (done, its Slurm state while an "
                                                          "earlier run's job is queued or running, todo); run "
                                                          "nothing.")]
ProtocolCancel = Annotated[bool, typer.Option("--cancel", help="scancel the Slurm jobs earlier runs of this plan "
                                                          "submitted that are still queued or running.")]
ProtocolDetach = Annotated[bool, typer.Option("--detach", help="slurm: submit every job and the report as a job that "
                                                          "runs after them, print JOB<TAB>SLURM_ID lines (the last "
                                                          "one: report) and exit; --status shows them, a rerun "
                                                          "re-attaches.")]
