"""Which speed levers pay: time the real ``ticketctl.train.loop.train`` step on MRPC with the default model, changing one
thing at a time from ticketctl's defaults.

    python benchmarks/levers.py [--steps 30] [--warmup 5] [--variants ticketctl,torch-dropout,...]

Variants: padding to 128 instead of dynamic padding; fp32 instead of bf16; masks by ``torch.nn.utils.prune`` hooks
instead of masked gradients; the per-tensor AdamW loop instead of the fused kernel; SDPA attention instead of eager
(ticketctl's CPU choice); torch's dropout (``bernoulli_``) instead of ticketctl.train.fastcpu's masks; and (only when
asked for: it compiles for a minute or more) ``torch.compile`` (dynamic shapes, torch's dropout). Each variant runs
in its own process, so none inherits another's memory state or compiled kernels.
Prints seconds per step and examples/s for each, as JSON on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time

import numpy as np
import torch

import ticketctl.train.loop as T
from ticketctl.data import files
from ticketctl.data.batching import encode
from ticketctl.data.tasks import get_task
from ticketctl.model import loading

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_train import thirty_percent_mask  # noqa: E402


def run(variant: str, folder, split, keep, steps: int, warmup: int) -> dict:
    precision = "fp32" if variant == "fp32" else "bf16"
    attn = {"attn_implementation": "sdpa" if variant == "sdpa-attention" else loading.attention_for("cpu")}
    torch.manual_seed(0)
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(str(folder), num_labels=2, **attn)
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), config=config)
    tok = loading.load_tokenizer(folder)
    enc = encode(tok, split, 128)
    mask = {n: k.float() for n, k in keep.items()}
    if variant == "prune-hooks":
        from torch.nn.utils import prune

        names = dict(model.named_modules())
        for n, k in mask.items():
            prune.custom_from_mask(names[n.rsplit(".", 1)[0]], "weight", k)
        mask = None
    original_collate, original_adamw = T.collate, T.make_adamw
    if variant == "pad-128":
        def padded(enc_, idx, pad_id, device):
            batch = original_collate(enc_, idx, pad_id, device)
            width = 128 - batch["input_ids"].shape[1]
            return {k: torch.nn.functional.pad(v, (0, width), value=pad_id if k == "input_ids" else 0)
                    for k, v in batch.items()}
        T.collate = padded
    if variant == "adamw-loop":
        T.make_adamw = lambda groups, lr: torch.optim.AdamW(groups, lr=lr, foreach=False)
    from ticketctl.train import fastcpu

    if variant in ("torch-dropout", "compile"):
        fastcpu.Stream.apply = lambda self, x, p: torch.nn.functional.dropout(x, p, True)
    if variant == "compile":  # the fast path's numpy masks would break the graph: torch's dropout, compiled
        T.training_fastpath = lambda *a: contextlib.nullcontext()
        model.compile(dynamic=True)  # in place: train() calls the module as usual
    marks = {"begin": time.perf_counter()}

    def on_step(step, total, loss):
        if step == warmup:
            marks["start"] = time.perf_counter()
        if step == warmup + steps:
            marks["end"] = time.perf_counter()

    steps_per_epoch = int(np.ceil(len(split) / 32))
    cfg = T.TrainConfig(epochs=(steps + warmup) / steps_per_epoch, precision=precision)
    try:
        T.train(model, enc, split.labels, cfg, 0, torch.device("cpu"), tok.pad_token_id or 0, keep=mask,
                on_step=on_step)
    finally:
        T.collate, T.make_adamw = original_collate, original_adamw
    seconds = (marks["end"] - marks["start"]) / steps
    return {"variant": variant, "seconds_per_step": seconds, "examples_per_s": 32 / seconds,
            "warmup_seconds": marks["start"] - marks["begin"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--variants", default="ticketctl,pad-128,fp32,prune-hooks,adamw-loop,sdpa-attention,"
                    "torch-dropout")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # run one variant in this process, print its JSON
    args = ap.parse_args()
    if args.one:
        loading.quiet_transformers()
        _, folder = loading.resolve_model(None)
        split = files.load_split(get_task("mrpc"), "train")
        keep = thirty_percent_mask(loading.load_model(folder, 2, 0.1))
        print(json.dumps(run(args.one, folder, split, keep, args.steps, args.warmup)))
        return
    rows = []
    for v in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--one", v, "--steps", str(args.steps),
                              "--warmup", str(args.warmup)], check=True, stdout=subprocess.PIPE, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(f"{v:20} {r['seconds_per_step']:.3f} s/step  {r['examples_per_s']:.1f} ex/s  "
              f"(warm-up {r['warmup_seconds']:.0f} s)", file=sys.stderr)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
