"""GPU smoke test (#24): one script, under 10 minutes on one GPU, that checks what no CPU test can and records it.

    python benchmarks/gpu_smoke.py OUT.json [--model PATH] [--train-samples 512] [--steps 30] [--skip-bert-base]

Checks, each recorded in OUT.json (rewritten after every check, so a run cut short keeps what it finished) with
``ok``, its figures and its seconds:

- ``cuda_index``: ``finetune --device cuda:0`` works and records the GPU; ``--device cuda:N`` for a GPU that is not
  there is one line on stderr and exit 2.
- ``fastpath``: the CPU fast path (``train/fastcpu.py``, ticketctl's own dropout) is never entered on CUDA (and is
  entered in a ``--cpu`` dry run, which shows the check can see it).
- ``logits``: CPU fp32 vs CUDA logits of the same model with dropout off, in fp32, bf16 and fp16 (max |diff|,
  argmax agreement).
- ``deterministic``: two ``search --deterministic`` runs (RANDOM-LT: the L1 term too) give identical masks; one
  run without it is recorded beside them.
- ``structured``: a structured ticket trains physically pruned (fewer parameters than dense) and ``predict`` runs
  the saved member on the GPU.
- ``speed``: step time, examples/s, peak memory and achieved matmul FLOP/s as a fraction of the measured bf16/fp32
  matmul peak, for the default model and a BERT-base-shaped one, in fp32 and bf16.
- ``torchrun``: 2 processes (DDP over nccl) give the one-process result with dropout off, where 2 GPUs are visible;
  else skipped, with the reason.

Exit status: 0 when every check passed (or was skipped with a reason), 1 when one failed, 2 without CUDA (one line,
nothing written). ``--cpu`` runs the same plumbing on the CPU (a check of this script, not of a GPU; the CUDA-only
parts are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="JSON file for the results")
    parser.add_argument("--model", default=None, help="model folder (default: the default model)")
    parser.add_argument("--train-samples", type=int, default=512, help="training examples of each small run")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per speed measurement")
    parser.add_argument("--skip-bert-base", action="store_true", help="time the default model only")
    parser.add_argument("--cpu", action="store_true", help="check this script's plumbing on the CPU")
    args = parser.parse_args(argv)

    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.stderr.write("gpu_smoke: no CUDA device is available here; run it on a machine with a GPU\n")
        return 2
    smoke = Smoke(args)
    return smoke.run()


class Smoke:
    def __init__(self, args):
        import torch

        self.args = args
        self.device = "cpu" if args.cpu else "cuda"
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
        from ticketctl.model import loading
        from ticketctl.train.device import describe

        self.model_name, self.model_dir = loading.resolve_model(args.model)
        dev = torch.device(self.device, 0) if self.device == "cuda" else torch.device("cpu")
        self.results = {"machine": describe(dev, 1, False), "gpus_visible": torch.cuda.device_count(),
                        "model": self.model_name, "cpu_dry_run": bool(args.cpu), "checks": {}}
        self.small = ["--task", "mrpc", "--max-train-samples", str(args.train_samples), "--max-eval-samples", "200",
                      "--epochs", "1", "-q"] + (["--model", str(args.model)] if args.model else [])

    # ------------------------------------------------------------------------------------------ plumbing

    def save(self) -> None:
        tmp = self.args.out.with_name(self.args.out.name + ".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.args.out)

    def cli(self, *args, torchrun: int = 0, timeout: int = 300):
        prefix = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                      str(torchrun)] if torchrun else [])
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        run = subprocess.run(prefix + ["-m", "ticketctl", *map(str, args)], capture_output=True, text=True,
                             timeout=timeout, env=env)
        return run.returncode, run.stdout, run.stderr

    def run(self) -> int:
        checks = [("cuda_index", self.cuda_index), ("fastpath", self.fastpath), ("logits", self.logits),
                  ("deterministic", self.deterministic), ("structured", self.structured), ("speed", self.speed),
                  ("torchrun", self.torchrun)]
        start = time.perf_counter()
        for name, check in checks:
            t = time.perf_counter()
            try:
                record = check()
            except Exception as e:  # a failed check is a result; the others still run
                record = {"ok": False, "error": f"{type(e).__name__}: {e}",
                          "traceback": traceback.format_exc()[-3000:]}
            record["seconds"] = round(time.perf_counter() - t, 1)
            self.results["checks"][name] = record
            self.results["seconds"] = round(time.perf_counter() - start, 1)
            self.save()
            status = "skipped" if record.get("skipped") else "ok" if record["ok"] else "FAILED"
            sys.stderr.write(f"gpu_smoke: {name}: {status} ({record['seconds']} s)\n")
        failed = [n for n, r in self.results["checks"].items() if not r["ok"]]
        sys.stderr.write(f"gpu_smoke: {len(checks) - len(failed)}/{len(checks)} passed in "
                         f"{self.results['seconds']} s -> {self.args.out}\n")
        return 1 if failed else 0

    # ------------------------------------------------------------------------------------------ checks

    def cuda_index(self) -> dict:
        from ticketctl.store.artifacts import read_artifact

        if self.device != "cuda":
            return {"ok": True, "skipped": "--cpu"}
        import torch

        code, out, err = self.cli("finetune", *self.small, "--device", "cuda:0", "--seed", "1",
                                  "--out", self.scratch / "cuda0")
        runtime = read_artifact(out.split()[0]).meta["runtime"] if code == 0 else None
        missing = f"cuda:{torch.cuda.device_count()}"
        code2, out2, err2 = self.cli("finetune", *self.small, "--device", missing, "--out", self.scratch / "missing")
        one_line = err2.strip().splitlines()
        ok = (code == 0 and runtime["device"] == "cuda" and code2 == 2 and out2 == "" and len(one_line) == 1
              and one_line[0].startswith("ticketctl: error:"))
        return {"ok": ok, "cuda0_exit": code, "cuda0_runtime": runtime, "cuda0_stderr": err[-500:],
                f"{missing}_exit": code2, f"{missing}_stderr": err2[-500:]}

    def _data(self, split: str, n: int):
        from ticketctl.data import files
        from ticketctl.data.tasks import get_task

        task = get_task("mrpc")
        s = files.load_split(task, split, None)
        import numpy as np

        return s.subset(np.arange(min(n, len(s))))

    def fastpath(self) -> dict:
        import torch

        from ticketctl.data.batching import encode
        from ticketctl.hparams import TrainConfig
        from ticketctl.model import loading
        from ticketctl.train import fastcpu, loop

        calls = {"keep": 0, "fastpath_streams": []}
        original_keep, original_path = fastcpu.Stream.keep, loop.training_fastpath

        def counting_keep(stream, *a, **k):
            calls["keep"] += 1
            return original_keep(stream, *a, **k)

        from contextlib import contextmanager

        @contextmanager
        def recording_path(*a, **k):
            with original_path(*a, **k) as stream:
                calls["fastpath_streams"].append(stream is not None)
                yield stream

        fastcpu.Stream.keep, loop.training_fastpath = counting_keep, recording_path
        try:
            device = torch.device("cuda", 0) if self.device == "cuda" else torch.device("cpu")
            split = self._data("train", 128)
            torch.manual_seed(0)
            model = loading.load_model(self.model_dir, 2, 0.1, loading.attention_for(device.type)).to(device)
            tok = loading.load_tokenizer(self.model_dir)
            swapped = []
            cfg = TrainConfig(epochs=1, batch_size=32, precision="bf16")
            loop.train(model, encode(tok, split, 128), split.labels, cfg, 0, device, tok.pad_token_id,
                       on_step=lambda *a: swapped.append(any(isinstance(m, fastcpu.Dropout) for m in model.modules())))
        finally:
            fastcpu.Stream.keep, loop.training_fastpath = original_keep, original_path
        entered = calls["keep"] > 0 or calls["fastpath_streams"] != [False] or any(swapped)
        ok = entered == (self.device == "cpu")  # on CUDA never; a --cpu dry run shows the check can see it
        return {"ok": ok, "fastpath_entered": entered, "cpu_mask_draws": calls["keep"],
                "fast_dropout_modules_seen": any(swapped),
                "steps": len(swapped)}

    def logits(self) -> dict:
        import numpy as np
        import torch

        from ticketctl.data.batching import collate, encode
        from ticketctl.model import loading
        from ticketctl.train.loop import autocast

        split = self._data("dev", 128)
        tok = loading.load_tokenizer(self.model_dir)
        enc = encode(tok, split, 128)
        idx = np.arange(len(enc))

        def outputs(device_type: str, precision: str) -> np.ndarray:
            device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
            torch.manual_seed(0)  # the same task head on both devices
            model = loading.load_model(self.model_dir, 2, 0.0, loading.attention_for(device_type)).to(device).eval()
            with torch.inference_mode(), autocast(device, precision):
                out = model(**collate(enc, idx, tok.pad_token_id, device)).logits
            return out.float().cpu().numpy()

        reference = outputs("cpu", "fp32")
        tolerance = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 1e-2}
        record: dict = {"ok": True, "examples": len(idx), "reference": "CPU fp32", "max_abs_logit":
                        float(np.abs(reference).max())}
        for precision, tol in tolerance.items():
            got = outputs(self.device, precision)
            diff = float(np.abs(got - reference).max())
            agree = float((got.argmax(1) == reference.argmax(1)).mean())
            record[precision] = {"max_abs_diff": diff, "argmax_agreement": agree, "tolerance": tol}
            record["ok"] &= diff <= tol
        return record

    def deterministic(self) -> dict:
        from ticketctl.store.artifacts import read_artifact

        args = ["search", *self.small, "--policy", "random", "--sparsity", "0.2", "--device", self.device]
        masks, records = [], {}
        for name, extra in (("det1", ["--deterministic"]), ("det2", ["--deterministic"]), ("plain", [])):
            code, out, err = self.cli(*args, *extra, "--out", self.scratch / name)
            if code != 0:
                return {"ok": False, "failed_run": name, "stderr": err[-2000:]}
            art = read_artifact(out.split()[0])
            masks.append(art.mask().flat())
            records[name] = {"deterministic": art.meta["runtime"]["deterministic"], "name": art.path.name}
        identical = bool((masks[0] == masks[1]).all())
        return {"ok": identical and records["det1"]["deterministic"], "identical_masks": identical,
                "agreement_with_plain_run": float((masks[0] == masks[2]).mean()), "runs": records}

    def structured(self) -> dict:
        from ticketctl.store.artifacts import read_artifact

        code, out, err = self.cli("search", "--method", "structured", *self.small, "--sparsity", "0.3",
                                  "--device", self.device, "--out", self.scratch / "st")
        if code != 0:
            return {"ok": False, "step": "search", "stderr": err[-2000:]}
        mask = out.split()[0]
        member = self.scratch / "member"
        code, out, err = self.cli("finetune", *self.small, "--mask", mask, "--save-model", member,
                                  "--device", self.device, "--out", self.scratch / "st")
        if code != 0:
            return {"ok": False, "step": "finetune", "stderr": err[-2000:]}
        cost = read_artifact(out.split()[0]).meta["cost"]
        dev_file = self.scratch / "dev.tsv"
        import gzip

        from ticketctl.data import files

        dev_file.write_bytes(gzip.open(Path(files.__file__).parent / "glue" / "MRPC" / "dev.tsv.gz").read())
        code, out, err = self.cli("predict", "--model-dir", member, dev_file, "--device", self.device,
                                  "--out", self.scratch / "pred")
        if code != 0:
            return {"ok": False, "step": "predict", "stderr": err[-2000:]}
        pred = read_artifact(out.split()[0])
        ok = cost["params"] < cost["dense_params"] and pred.meta["runtime"]["device"] == self.device
        return {"ok": ok, "params": cost["params"], "dense_params": cost["dense_params"],
                "relative_flops": cost["relative_flops"], "predict_examples": pred.meta.get("examples"),
                "predict_metrics": pred.meta.get("metrics")}

    def speed(self) -> dict:
        import torch

        shapes = ["default"] if self.args.skip_bert_base or self.device != "cuda" else ["default", "bert-base"]
        record: dict = {"ok": True, "steps": self.args.steps, "batch_size": 32, "max_length": 128,
                        "matmul_peak_tflops": {p: round(self._peak(p) / 1e12, 2) for p in ("fp32", "bf16")}}
        for shape in shapes:
            folder = self.model_dir
            if shape == "bert-base":
                sys.path.insert(0, str(HERE))
                from bench_train import bert_base_shaped

                folder = bert_base_shaped(self.model_dir, self.scratch / "bert-base")
            for precision in ("fp32", "bf16"):
                record[f"{shape}/{precision}"] = self._time(folder, precision)
                if self.device == "cuda":
                    torch.cuda.empty_cache()
        return record

    def _peak(self, precision: str) -> float:
        import torch

        n, reps = (4096, 20) if self.device == "cuda" else (512, 3)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        for _ in range(3):
            a @ b
        self._sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        self._sync()
        return 2 * n**3 * reps / (time.perf_counter() - t)

    def _sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def _time(self, folder: Path, precision: str) -> dict:
        import numpy as np
        import torch

        from ticketctl.data.batching import encode, length_grouped_batches
        from ticketctl.hparams import TrainConfig
        from ticketctl.model import loading
        from ticketctl.train.loop import Loop

        device = torch.device(self.device, 0) if self.device == "cuda" else torch.device("cpu")
        split = self._data("train", 4000)
        tok = loading.load_tokenizer(folder)
        enc = encode(tok, split, 128)
        torch.manual_seed(0)
        model = loading.load_model(folder, 2, 0.1, loading.attention_for(device.type)).to(device)
        cfg = TrainConfig(batch_size=32, precision=precision)
        loop = Loop({None: model}, {None: (enc, split.labels)}, cfg, 0, device, tok.pad_token_id)
        batches = length_grouped_batches(enc.lengths, 32, np.random.default_rng(0))
        warmup, steps = 5, self.args.steps
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.train()
        for i in range(warmup):
            loop.step(None, batches[i % len(batches)], 1.0)
        self._sync()
        t = time.perf_counter()
        tokens = 0
        for i in range(warmup, warmup + steps):
            idx = batches[i % len(batches)]
            tokens += int(enc.lengths[idx].sum())
            loop.step(None, idx, 1.0)
        self._sync()
        seconds = (time.perf_counter() - t) / steps
        memory = torch.cuda.max_memory_allocated(device) / 2**30 if self.device == "cuda" else None
        matmul_params = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embeddings" not in n)
        flops = 6 * matmul_params * tokens / steps  # forward 2, backward 4 FLOPs per weight and real token
        peak = self._peak(precision)
        return {"s_per_step": round(seconds, 5), "examples_per_s": round(32 / seconds, 1),
                "achieved_tflops": round(flops / seconds / 1e12, 3),
                "fraction_of_matmul_peak": round(flops / seconds / peak, 4),
                "peak_memory_gib": None if memory is None else round(memory, 3),
                "params": sum(p.numel() for p in model.parameters())}

    def torchrun(self) -> dict:
        import numpy as np
        import torch

        from ticketctl.store.artifacts import read_artifact

        if self.device != "cuda" or torch.cuda.device_count() < 2:
            return {"ok": True, "skipped": f"{torch.cuda.device_count()} GPU(s) visible; 2 processes need 2"}
        args = ["finetune", *self.small, "--dropout", "0", "--precision", "fp32", "--device", "cuda", "--seed", "3"]
        code1, out1, err1 = self.cli(*args, "--out", self.scratch / "one")
        code2, out2, err2 = self.cli(*args, "--out", self.scratch / "two", torchrun=2)
        if code1 != 0 or code2 != 0:
            return {"ok": False, "stderr_one": err1[-1000:], "stderr_two": err2[-2000:]}
        a, b = read_artifact(out1.split()[0]), read_artifact(out2.split()[0])
        diff = float(np.abs(a.tensors["outputs"] - b.tensors["outputs"]).max())
        ok = a.path.name == b.path.name and diff < 1e-3 and b.meta["runtime"]["world_size"] == 2
        return {"ok": ok, "same_name": a.path.name == b.path.name, "max_abs_logit_diff": diff,
                "world_size": b.meta["runtime"]["world_size"]}


if __name__ == "__main__":
    sys.exit(main())
