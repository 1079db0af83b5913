"""The ticketctl artifact: a safetensors file whose header metadata carries its provenance.

Every artifact carries its provenance in the safetensors header metadata (str -> str): flat strings for the scalar
fields, JSON text for the structured ones (``JSON_FIELDS``). Masks are bit-packed, one uint8 tensor per pruned
parameter, named as the model's parameter; logits carry ``outputs``, ``ids`` and (when known) ``labels``.

Writes are atomic (``ticketctl.store.atomic``); reads validate and name the file in every error. numpy only: no
torch import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticketctl.errors import InputError, UsageError
from ticketctl.masks.structured import StructuredMask
from ticketctl.masks.weights import Mask
from ticketctl.store.atomic import atomic_write_bytes

FORMAT = "ticketctl"
FORMAT_VERSION = "1"
KINDS = ("mask", "logits", "weights", "tokens")  # in the cache folder: "weights" (reusable trained weights) and
# "tokens" (a tokenised split)
JSON_FIELDS = ("config", "parents", "versions", "shapes", "metrics", "layer_sparsity", "weights", "tasks",
               "loss_curve", "task_spec", "cost", "runtime")


@dataclass
class Artifact:
    path: Path
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray]
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def method(self) -> str:
        return self.meta.get("method", "imp")

    def mask(self) -> Mask:
        if self.method != "imp":
            raise InputError(f"{self.path}: a {self.method} mask, not a weight mask")
        return Mask.unpack(self.tensors, self.meta["shapes"])

    def structured(self):
        """The head/FFN keep-vectors of a structured mask (``search --method structured``)."""
        if self.method != "structured":
            raise InputError(f"{self.path}: an {self.method} weight mask, not a structured (head/FFN) mask")
        return StructuredMask(self.tensors["heads_keep"].astype(bool), self.tensors["ffn_keep"].astype(bool))

    def parent_ref(self) -> dict[str, str]:
        return {"path": str(self.path), "sha256": self.sha256, "kind": self.kind}


def _encode_meta(meta: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in meta.items():
        if v is None:
            continue
        out[k] = json.dumps(v, sort_keys=True) if k in JSON_FIELDS else str(v)
    return out


def _decode_meta(raw: dict[str, str], path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = dict(raw)
    for k in JSON_FIELDS:
        if k in meta:
            try:
                meta[k] = json.loads(meta[k])
            except json.JSONDecodeError:
                raise InputError(f"{path}: corrupt metadata field {k!r}") from None
    return meta


def write_artifact(path: str | os.PathLike, kind: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write atomically; the final name appears only once the whole file is on disk."""
    from safetensors.numpy import save

    assert kind in KINDS
    path = Path(path)
    if os.environ.get("RANK", "0") != "0":  # data-parallel run (torchrun): process 0 writes, the others agree
        return path
    full_meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, **meta}
    data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=_encode_meta(full_meta))
    atomic_write_bytes(path, data)
    return path


def read_artifact(path: str | os.PathLike, kind: str | None = None) -> Artifact:
    """Read and validate an artifact; any problem is an InputError naming the file."""
    from safetensors.numpy import load

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an artifact")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    raw_meta = _header_metadata(data, path)
    if raw_meta.get("format") != FORMAT:
        raise InputError(f"{path}: a safetensors file, but not a ticketctl artifact")
    if raw_meta.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: artifact format version {raw_meta.get('format_version')} is not supported "
                         f"(this ticketctl reads version {FORMAT_VERSION})")
    try:
        tensors = load(data)
    except Exception as e:
        raise InputError(f"{path}: corrupt or truncated artifact ({e})") from None
    meta = _decode_meta(raw_meta, path)
    art = Artifact(path, meta, tensors, hashlib.sha256(data).hexdigest())
    if kind is not None and art.kind != kind:
        raise InputError(f"{path}: is a {art.kind} artifact, expected a {kind} artifact")
    if art.kind == "logits":
        _check_logits(art)
    elif art.kind == "mask" and art.method == "imp" and "shapes" not in meta:
        raise InputError(f"{path}: mask artifact without shapes")
    elif art.kind == "mask" and art.method == "structured":
        if "heads_keep" not in tensors or "ffn_keep" not in tensors:
            raise InputError(f"{path}: structured mask without heads_keep or ffn_keep")
        art.structured()  # validates the shapes
    return art


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    if len(data) < 8:
        raise InputError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", data[:8])
    if n <= 0 or 8 + n > len(data):
        raise InputError(f"{path}: not a safetensors file, or truncated")
    try:
        header = json.loads(data[8 : 8 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}: not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a safetensors file (bad header)")
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def _check_logits(art: Artifact) -> None:
    t = art.tensors
    if "outputs" not in t or "ids" not in t:
        raise InputError(f"{art.path}: logits artifact without outputs or ids")
    if t["outputs"].ndim != 2 or len(t["outputs"]) != len(t["ids"]):
        raise InputError(f"{art.path}: outputs and ids disagree in length")
    if not np.isfinite(t["outputs"]).all():
        raise InputError(f"{art.path}: outputs contain NaN or inf")
    if "labels" in t and len(t["labels"]) != len(t["ids"]):
        raise InputError(f"{art.path}: labels and ids disagree in length")


def existing(path: Path, kind: str) -> Artifact | None:
    """The finished artifact at path, or None if there is none (or it is unreadable and must be redone)."""
    if not path.is_file():
        return None
    try:
        return read_artifact(path, kind)
    except InputError:
        return None


def read_paths(paths: list[str], stdin_text: str | None = None) -> list[str]:
    """Expand ``-`` into the whitespace-separated paths read from stdin."""
    out: list[str] = []
    for p in paths:
        if p == "-":
            import sys

            text = stdin_text if stdin_text is not None else sys.stdin.read()
            out.extend(text.split())
        else:
            out.append(p)
    if not out:
        raise UsageError("no artifacts given (pass paths, or - to read them from stdin)")
    return out
