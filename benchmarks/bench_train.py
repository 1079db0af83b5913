"""Training throughput of ticketctl's finetune step against a reference implementation, in one run.

(a) reference: the way public lottery-ticket code trains BERT — transformers ``Trainer``, every batch padded to
    max length 128, the mask applied by ``torch.nn.utils.prune`` forward hooks, fp32;
(b) ticketctl: ``ticketctl.train.loop.train`` with the same 30% mask, dynamic padding and length-grouped batches, masked
    gradients, in the chosen precision.

Same machine, model (the default all-MiniLM-L6-v2), task data (MRPC train), batch size, learning rate and number of
steps. Prints examples/s and tokens/s (real, unpadded tokens) of both and the ratio b/a, ticketctl's achieved FLOP/s
as a fraction of the matmul peak measured here for the dtype used, and the time of a small ``search`` against
``rounds x`` the matching ``finetune`` (pruning machinery overhead).

    python benchmarks/bench_train.py [--steps 60] [--warmup 10] [--precision bf16|fp32] [--skip-reference]
                                     [--profile-steps 10] [--shape default|bert-base]

``--shape bert-base`` runs the same measurement on a BERT-base-shaped model with random weights (speed depends on
the shapes, not on the weights), to see how the fraction of peak moves with the model's width.

Needs ``accelerate`` for the reference's Trainer: ``pip install accelerate``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ticketctl.data import files
from ticketctl.data.batching import encode
from ticketctl.data.tasks import get_task
from ticketctl.hparams import RunOptions, TrainConfig
from ticketctl.masks import weights
from ticketctl.model import loading, units
from ticketctl.train.loop import train


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def bert_base_shaped(default_folder: Path, scratch: Path) -> Path:
    """A BERT-base-shaped model (12 layers, 768 wide, 3072 FFN) with random weights and the default model's
    tokenizer: speed depends on shapes, not on weight values, and no model hub is reachable here."""
    import shutil

    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(str(scratch))
    for f in default_folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special_tokens")):
            shutil.copy(f, scratch / f.name)
    return scratch


def thirty_percent_mask(model) -> dict[str, torch.Tensor]:
    """A real 30% ticket shape: one-shot global magnitude pruning of the pretrained weights."""
    prunable = units.prunable_parameters(model)
    keep = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in prunable.items()}
    total = sum(p.numel() for p in prunable.values())
    return weights.magnitude_prune({n: p.detach() for n, p in prunable.items()}, keep, round(0.3 * total))


class ShapeCounter:
    """Counts the examples, real tokens and processed (padded) tokens of every training forward."""

    def __init__(self, model):
        self.examples = self.real = self.padded = 0
        self.active = False
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        if self.active and module.training:
            ids = kwargs.get("input_ids", args[0] if args else None)
            att = kwargs.get("attention_mask")
            self.examples += ids.shape[0]
            self.padded += ids.numel()
            self.real += int(att.sum()) if att is not None else ids.numel()


def step_flops(config, batch: int, width: int) -> float:
    """Training FLOPs of one step (forward + backward = 3 x forward) on a (batch, width) input: the encoder's
    Linear layers and attention score/context matmuls; embeddings and elementwise ops left out."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch * width
    linear = 2 * tokens * (4 * h * h + 2 * h * i) * layers
    attention = 2 * 2 * batch * width * width * h * layers
    pooler = 2 * batch * h * h
    return 3 * (linear + attention + pooler)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def run_ticketctl(folder, split, keep, steps, warmup, precision, batch_size, lr, profile_steps=10):
    """Time ``steps`` training steps after ``warmup``; then profile ``profile_steps`` more with torch's profiler to
    see how much of a step its matmuls take and how fast they run at the shapes this model and data give."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = loading.load_model(folder, 2, 0.1, loading.attention_for("cpu"))
    tok = loading.load_tokenizer(folder)
    enc = encode(tok, split, 128)
    counter = ShapeCounter(model)
    steps_per_epoch = int(np.ceil(len(split) / batch_size))
    cfg = TrainConfig(epochs=(steps + warmup + profile_steps) / steps_per_epoch, batch_size=batch_size, lr=lr,
                      precision=precision)
    marks = {}
    flops = {"timed": 0.0, "profiled": 0.0}
    widths = []
    window = [None]
    prof = profile(activities=[ProfilerActivity.CPU])

    def hook(module, args, kwargs):
        if window[0] is not None and module.training:
            ids = kwargs["input_ids"]
            flops[window[0]] += step_flops(model.config, ids.shape[0], ids.shape[1])
            if window[0] == "timed":
                widths.append(ids.shape[1])

    model.register_forward_pre_hook(hook, with_kwargs=True)

    def on_step(step, total, loss):
        if step == warmup:
            marks["start"] = time.perf_counter()
            counter.active = True
            window[0] = "timed"
        if step == warmup + steps:
            marks["end"] = time.perf_counter()
            counter.active = False
            if profile_steps:
                window[0] = "profiled"
                prof.start()
                marks["profile_start"] = time.perf_counter()
            else:
                window[0] = None
        if profile_steps and step == warmup + steps + profile_steps:
            marks["profile_end"] = time.perf_counter()
            prof.stop()
            window[0] = None

    train(model, enc, split.labels, cfg, 0, torch.device("cpu"), tok.pad_token_id or 0,
          keep={n: k.float() for n, k in keep.items()}, on_step=on_step)
    # The counters run from the forward of step warmup+1 to the one of step warmup+steps; the marks enclose
    # steps warmup+1 .. warmup+steps.
    seconds = marks["end"] - marks["start"]
    res = {"seconds": seconds, "steps": steps, "examples": counter.examples, "real_tokens": counter.real,
           "padded_tokens": counter.padded, "flops": flops["timed"], "mean_width": float(np.mean(widths))}
    if profile_steps:
        events = prof.key_averages()
        matmul_us = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
        wall = marks["profile_end"] - marks["profile_start"]
        res["profile"] = {"steps": profile_steps, "wall_seconds": wall, "matmul_seconds": matmul_us / 1e6,
                          "matmul_share": matmul_us / 1e6 / wall, "flops": flops["profiled"],
                          "matmul_flops_per_s": flops["profiled"] / (matmul_us / 1e6),
                          "top": [(e.key, e.self_cpu_time_total / 1e6) for e in
                                  sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]]}
    return res


def run_reference(folder, split, keep, steps, warmup, batch_size, lr):
    """transformers Trainer + padding to 128 + torch.nn.utils.prune hooks, fp32 (as public LTH-for-BERT code)."""
    from torch.nn.utils import prune
    from transformers import Trainer, TrainerCallback, TrainingArguments

    torch.manual_seed(0)
    model = loading.load_model(folder, 2, 0.1)
    tok = loading.load_tokenizer(folder)
    names = dict(model.named_modules())
    for pname, k in keep.items():
        prune.custom_from_mask(names[pname.rsplit(".", 1)[0]], "weight", k.float())
    a, b = zip(*split.texts)
    enc = tok(list(a), list(b), truncation=True, max_length=128, padding="max_length")

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(split)

        def __getitem__(self, i):
            return {"input_ids": torch.tensor(enc["input_ids"][i]),
                    "token_type_ids": torch.tensor(enc["token_type_ids"][i]),
                    "attention_mask": torch.tensor(enc["attention_mask"][i]),
                    "labels": torch.tensor(int(split.labels[i]))}

    counter = ShapeCounter(model)
    marks = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:
                marks["start"] = time.perf_counter()
                counter.active = True
            if state.global_step == warmup + steps:
                marks["end"] = time.perf_counter()
                counter.active = False

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch_size, learning_rate=lr,
                                 max_steps=warmup + steps, lr_scheduler_type="linear", warmup_steps=0,
                                 weight_decay=0.0, logging_strategy="no", save_strategy="no", report_to=[],
                                 use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=DS(), callbacks=[Timer()]).train()
    return {"seconds": marks["end"] - marks["start"], "steps": steps, "examples": counter.examples,
            "real_tokens": counter.real, "padded_tokens": counter.padded}


def time_search_vs_finetunes(folder, split, precision):
    """A 3-round search on a small subset against 3 x the same training, with the same process set-up."""
    from ticketctl.stages.finetune import FinetuneSpec, run_context
    from ticketctl.stages.imp import SearchSpec, search_context
    from ticketctl.log import Log
    from ticketctl.stages.context import Context

    task = split.task
    sub = split.subset(np.arange(256))
    dev = files.load_split(task, "dev").subset(np.arange(64))
    name, _ = loading.resolve_model(None)
    ctx = Context(task, name, folder, loading.model_fingerprint(folder), sub, [dev], Log(quiet=True))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-4, precision=precision)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        spec = SearchSpec(task.name, 0, policy="random", sparsity=0.3, prune_step=0.1, run=RunOptions(out=Path(out)))
        search_context(spec, ctx, cfg, torch.device("cpu"))
        search_s = time.perf_counter() - t
    ft = []
    for seed in range(3):
        with tempfile.TemporaryDirectory() as out:
            t = time.perf_counter()
            run_context(FinetuneSpec(task.name, seed, run=RunOptions(out=Path(out))), ctx, cfg, torch.device("cpu"))
            ft.append(time.perf_counter() - t)
    return {"search_seconds": search_s, "finetune_seconds": ft, "rounds": 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--profile-steps", type=int, default=10, help="steps profiled after the timed ones (0: none)")
    ap.add_argument("--shape", default="default", choices=["default", "bert-base"],
                    help="bert-base: a randomly initialised BERT-base-shaped model instead of the default model")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    loading.quiet_transformers()
    torch.use_deterministic_algorithms(False)

    _, folder = loading.resolve_model(None)
    scratch = None
    if args.shape == "bert-base":
        scratch = tempfile.TemporaryDirectory()
        folder = bert_base_shaped(folder, Path(scratch.name))
    task = get_task("mrpc")
    split = files.load_split(task, "train")
    model = loading.load_model(folder, 2, 0.1)
    keep = thirty_percent_mask(model)
    del model

    res = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
           "steps": args.steps, "warmup": args.warmup, "batch_size": args.batch_size, "shape": args.shape}
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    res["matmul_peak_flops"] = {"fp32": matmul_peak(torch.float32)}
    if dtype is torch.bfloat16:
        res["matmul_peak_flops"]["bf16"] = matmul_peak(torch.bfloat16)
    print("matmul peak: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in res["matmul_peak_flops"].items()),
          file=sys.stderr)

    tc = run_ticketctl(folder, split, keep, args.steps, args.warmup, args.precision, args.batch_size, args.lr,
                       args.profile_steps)
    tc["examples_per_s"] = tc["examples"] / tc["seconds"]
    tc["tokens_per_s"] = tc["real_tokens"] / tc["seconds"]
    tc["flops_per_s"] = tc["flops"] / tc["seconds"]
    tc["fraction_of_peak"] = tc["flops_per_s"] / res["matmul_peak_flops"][args.precision]
    res["ticketctl"] = tc
    print(f"ticketctl ({args.precision}): {tc['examples_per_s']:.1f} ex/s, {tc['tokens_per_s']:.0f} tok/s, "
          f"{tc['flops_per_s'] / 1e9:.0f} GFLOP/s = {tc['fraction_of_peak']:.0%} of {args.precision} matmul peak",
          file=sys.stderr)
    if "profile" in tc:
        pr = tc["profile"]
        pr["matmul_fraction_of_peak"] = pr["matmul_flops_per_s"] / res["matmul_peak_flops"][args.precision]
        print(f"  profiled {pr['steps']} steps: matmuls {pr['matmul_share']:.0%} of the step, running at "
              f"{pr['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s = {pr['matmul_fraction_of_peak']:.0%} of peak "
              f"(the ceiling of a step that did nothing else)", file=sys.stderr)
    if not args.skip_reference:
        ref = run_reference(folder, split, keep, args.steps, args.warmup, args.batch_size, args.lr)
        ref["examples_per_s"] = ref["examples"] / ref["seconds"]
        ref["tokens_per_s"] = ref["real_tokens"] / ref["seconds"]
        res["reference"] = ref
        res["ratio_examples_per_s"] = tc["examples_per_s"] / ref["examples_per_s"]
        print(f"reference (Trainer, pad 128, prune hooks, fp32): {ref['examples_per_s']:.1f} ex/s -> "
              f"ratio {res['ratio_examples_per_s']:.2f}x", file=sys.stderr)
    if not args.skip_search:
        s = time_search_vs_finetunes(folder, split, args.precision)
        s["ratio_vs_rounds_finetunes"] = s["search_seconds"] / (s["rounds"] * float(np.mean(s["finetune_seconds"])))
        res["search"] = s
        print(f"search (3 rounds, 256 examples): {s['search_seconds']:.1f}s vs 3 x finetune "
              f"{np.mean(s['finetune_seconds']):.1f}s -> {s['ratio_vs_rounds_finetunes']:.2f}", file=sys.stderr)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
