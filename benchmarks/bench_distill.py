"""What a student costs: the training time of ``finetune --teacher`` against the plain finetune of the same options,
in one run, on the default model (issue #34).

The teacher is a member finetuned once with ``--eval-file`` of the training examples (its outputs on them: the
teacher file). Then, for each of ``--repeats`` seeds, interleaved: the plain finetune and the student of the same
options (``--force``: both train). Each artifact records its training loop's seconds (``train_seconds``); the script
prints both, the wall time of each call, and their ratios (median over seeds). The teacher's inference over the
training examples is counted apart: one forward pass of the model over them (``ticketctl.train.loop.predict``,
the pretrained weights: speed depends on the shapes, not on the values), which a member made with ``--eval-file
TRAIN`` pays once at the end of its training.

    python benchmarks/bench_distill.py [--samples 512] [--epochs 1] [--repeats 3] [--precision auto]
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

from ticketctl.data.files import EMBEDDED_DIR
from ticketctl.hparams import DataOptions, DistillOptions, RunOptions, TrainConfig
from ticketctl.stages.finetune import finetune
from ticketctl.store.artifacts import read_artifact


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def teacher_inference_seconds(data: DataOptions, train: TrainConfig) -> float:
    """One forward pass of the default model over the training examples (tokenised first, not timed)."""
    from ticketctl.stages import context, inputs
    from ticketctl.model.loading import pad_id
    from ticketctl.train.loop import predict

    ctx, cfg, device = context.start("mrpc", train, data, RunOptions(out=Path(tempfile.mkdtemp()), quiet=True))
    model = inputs.load_model(ctx, cfg, 0, device)
    tokenizer = inputs.load_tokenizer(ctx, cfg, model)
    enc = ctx.encoded(tokenizer, ctx.train, cfg.max_length)
    _, seconds = timed(lambda: predict(model, enc, device, pad_id(tokenizer), cfg.precision))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512, help="MRPC training examples (the first N)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3, help="seeds, each a plain finetune and a student")
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    lines = gzip.open(EMBEDDED_DIR / "MRPC" / "train.tsv.gz", "rt", encoding="utf-8").read().splitlines()
    train_file = work / "train.tsv"  # the first N training rows: the same ids, texts and labels as the student's
    train_file.write_text("\n".join(lines[: args.samples + 1]) + "\n", encoding="utf-8")
    train = TrainConfig(epochs=args.epochs, precision=args.precision)
    data = DataOptions(max_train_samples=args.samples)
    teacher_paths, teacher_wall = timed(lambda: finetune(
        "mrpc", 0, train=train, data=DataOptions(max_train_samples=args.samples, eval_files=[str(train_file)]),
        run=RunOptions(out=work / "teacher", quiet=True)))
    teacher = str(teacher_paths[1])
    rows = []
    for seed in range(1, args.repeats + 1):
        run = RunOptions(out=work / "runs", quiet=True, force=True)
        plain, plain_wall = timed(lambda: finetune("mrpc", seed, train=train, data=data, run=run))
        student, student_wall = timed(lambda: finetune("mrpc", seed, train=train, data=data, run=run,
                                                       distill=DistillOptions(teacher=teacher)))
        p, s = read_artifact(plain[0]).meta, read_artifact(student[0]).meta
        rows.append({"seed": seed, "plain_train_s": float(p["train_seconds"]),
                     "student_train_s": float(s["train_seconds"]), "plain_wall_s": round(plain_wall, 2),
                     "student_wall_s": round(student_wall, 2), "precision": p["config"]["precision"]})
        print(json.dumps(rows[-1]), flush=True)
    inference = teacher_inference_seconds(data, train)
    summary = {
        "samples": args.samples, "epochs": args.epochs, "repeats": args.repeats,
        "teacher_member_wall_s": round(teacher_wall, 2), "teacher_inference_s": round(inference, 2),
        "train_ratio_median": round(statistics.median(r["student_train_s"] / r["plain_train_s"] for r in rows), 3),
        "wall_ratio_median": round(statistics.median(r["student_wall_s"] / r["plain_wall_s"] for r in rows), 3),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
