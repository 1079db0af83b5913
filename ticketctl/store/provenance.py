"""Provenance: what every artifact records about how it was made, and the config hash that names it.

One builder, :func:`provenance`, writes the fields every artifact shares (task, model and its fingerprint, package
versions); each command adds what is its own (seed, policy, config, parents, metrics, ...). The identity
defaults and the computation version that enter every config hash are defined here, once. numpy-free."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ticketctl.hparams import TRAIN_DEFAULTS
from ticketctl.train.seeds import CPU_STREAM

# Bump when the training computation changes its numbers for the same configuration (optimizer kernel, attention
# implementation, padding, ...): artifacts of the old computation are then not reused as if they were current.
# 1: first release; 2: fused AdamW, eager attention on CPU, padding to multiples of 8 (masks moved: IoU 0.978);
# 3: on CPU, dropout masks from ticketctl.train.fastcpu; structured tickets trained physically pruned;
# 4: the gradient is clipped to --max-grad-norm (default 1.0) before every optimizer step.
COMPUTATION = 4
# Identity fields at these values are left out of the config hash, so that a field added later (at the value older
# artifacts were made with) keeps every earlier name valid.
# precision: identities hold the resolved value (fp32 or bf16), never auto; fp32 is the value the first release's
# hashes were made with.
# max_grad_norm: artifacts made before the option existed were trained without clipping.
# task_spec: a custom task's definition (labels, columns, metrics); None for GLUE tasks.
# dropout_stream: where the dropout masks come from (ticketctl.train.device.dropout_stream): one CPU process's
# ticketctl stream, the value every artifact made before the field existed was trained with; torch's on a GPU, or
# one stream per process under torchrun, name a different computation.
IDENTITY_DEFAULTS = {**TRAIN_DEFAULTS, "precision": "fp32", "max_grad_norm": 0.0, "mask": None, "bagging": 1.0,
                     "computation": 1, "train_fraction": 1.0, "init": None, "task_spec": None,
                     "dropout_stream": CPU_STREAM}


def config_hash(config: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """sha256 of the config's JSON with the fields at their default value left out, so that adding a field whose
    default is a no-op keeps every earlier hash (and so every earlier artifact name) valid."""
    defaults = defaults or {}
    kept = {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("ticketctl", "torch", "transformers", "numpy", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def provenance(task: str, model: str, model_fingerprint: str, runtime: dict[str, Any] | None = None,
               **fields: Any) -> dict[str, Any]:
    """An artifact's metadata: the fields every artifact carries, where it was computed (``runtime``: device, its
    name, world size, torch/CUDA/cuDNN versions, determinism; ``ticketctl.train.device.describe``) when it was
    computed on one, then the command's own ``fields``."""
    where = {"runtime": runtime} if runtime is not None else {}
    return {"task": task, "model": model, "model_fingerprint": model_fingerprint, "versions": versions(), **where,
            **fields}
