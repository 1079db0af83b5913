"""The cost of ``--deterministic`` on this machine, in one run: training steps of the default model on MRPC with
torch's deterministic algorithms off and on, in alternating blocks (so drift in the machine's speed hits both).

    python benchmarks/bench_deterministic.py [--blocks 4] [--steps 10] [--precision fp32|bf16] [--device cpu]

Prints JSON: seconds per step off and on, and their ratio (on / off).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from ticketctl.data import files
from ticketctl.data.batching import encode, length_grouped_batches
from ticketctl.data.tasks import get_task
from ticketctl.hparams import TrainConfig
from ticketctl.model import loading
from ticketctl.train.device import describe, set_deterministic
from ticketctl.train.loop import Loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", type=int, default=4, help="blocks of each setting, alternating")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before any CUDA work, as --deterministic does
    device = torch.device(args.device)
    _, folder = loading.resolve_model(None)
    split = files.load_split(get_task("mrpc"), "train", None)
    tok = loading.load_tokenizer(folder)
    enc = encode(tok, split, 128)
    torch.manual_seed(0)
    model = loading.load_model(folder, 2, 0.1, loading.attention_for(device.type)).to(device).train()
    loop = Loop({None: model}, {None: (enc, split.labels)}, TrainConfig(precision=args.precision), 0, device,
                tok.pad_token_id)
    batches = length_grouped_batches(enc.lengths, 32, np.random.default_rng(0))
    times = {False: [], True: []}
    blocks: list[float] = []
    step = 0
    for i in range(3):  # warm-up
        loop.step(None, batches[i], 1.0)
    for block in range(2 * args.blocks):
        on = block % 2 == 1
        if on:
            set_deterministic(True)
        else:
            torch.use_deterministic_algorithms(False)
        for _ in range(args.steps):
            idx = batches[(3 + step) % len(batches)]
            step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            loop.step(None, idx, 1.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[on].append(time.perf_counter() - t)
        blocks.append(round(float(np.mean(times[on][-args.steps:])), 4))
    off, on = float(np.mean(times[False])), float(np.mean(times[True]))
    machine = describe(device, 1, False) | {"deterministic": None}  # both settings ran
    print(json.dumps({"machine": machine, "threads": torch.get_num_threads(),
                      "precision": args.precision, "steps_each": len(times[True]), "s_per_step_off": round(off, 4),
                      "s_per_step_on": round(on, 4), "ratio_on_over_off": round(on / off, 3),
                      "blocks_off_on_alternating": blocks}, indent=1))


if __name__ == "__main__":
    main()
