"""Provenance: what every artifact records about how it was made, and the config hash that names it.

One builder, :func:`provenance`, writes the fields every artifact shares (task, model and its fingerprint, package
versions); each command adds what is its own (seed, policy, config, parents, metrics, ...); :func:`config_hash` names
a configuration. What a run's identity holds, its defaults and the computation version are
``ticketctl.store.identity``. numpy-free."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


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
