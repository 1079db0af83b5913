"""The one module that names, reads and writes ticketctl artifacts (safetensors files).

Every artifact carries its provenance in the safetensors header metadata (str -> str): flat strings for the scalar
fields, JSON text for the structured ones (``JSON_FIELDS``). Masks are bit-packed, one uint8 tensor per pruned
parameter, named as the model's parameter; logits carry ``outputs``, ``ids`` and (when known) ``labels``.

Writes are atomic: a temporary file in the destination folder, fsync, then ``os.replace``; a killed process never
leaves a file under a final name. numpy only: no torch import here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ticketctl.errors import InputError, UsageError

FORMAT = "ticketctl"
FORMAT_VERSION = "1"
KINDS = ("mask", "logits", "weights")  # "weights": reusable trained weights in the cache folder
JSON_FIELDS = ("config", "parents", "versions", "shapes", "metrics", "layer_sparsity", "weights", "tasks",
               "loss_curve")


# ---------------------------------------------------------------------------------------------- names


def short(h: str) -> str:
    return h[:10]


def mask_name(task: str, policy: str, seed: int, sparsity: float, config_hash: str) -> str:
    return f"{task}-mask-{policy}-{round(sparsity * 100)}pct-s{seed}-{short(config_hash)}.safetensors"


def logits_name(task: str, split: str, scheme: str, seed: int, config_hash: str) -> str:
    return f"{task}-logits-{split}-{scheme}-s{seed}-{short(config_hash)}.safetensors"


def ensemble_name(task: str, split: str, config_hash: str) -> str:
    return f"{task}-logits-{split}-ensemble-{short(config_hash)}.safetensors"


def round_mask_name(task: str, policy: str, seed: int, round_: int, config_hash: str) -> str:
    return f"{task}-round{round_}-{policy}-s{seed}-{short(config_hash)}.safetensors"


def importance_name(task: str, seed: int, config_hash: str) -> str:
    return f"{task}-importance-s{seed}-{short(config_hash)}.safetensors"


def dense_weights_name(task: str, seed: int, config_hash: str) -> str:
    return f"{task}-dense-weights-s{seed}-{short(config_hash)}.safetensors"


CACHE_DIR = "cache"  # inside --out: round checkpoints and reusable dense weights


# ---------------------------------------------------------------------------------------------- hashing


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
    from importlib.metadata import PackageNotFoundError, version
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("ticketctl", "torch", "transformers", "numpy", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


# ---------------------------------------------------------------------------------------------- masks


@dataclass
class Mask:
    """Keep-masks (True = weight survives) for the prunable parameters of one model."""

    keep: dict[str, np.ndarray]  # parameter name -> bool array of the parameter's shape

    def __post_init__(self) -> None:
        for name, m in self.keep.items():
            if m.dtype != np.bool_:
                uniq = np.unique(m)
                if not np.isin(uniq, (0, 1)).all():
                    raise InputError(f"mask for {name} has values other than 0 and 1")
                self.keep[name] = m.astype(bool)

    @property
    def total(self) -> int:
        return sum(m.size for m in self.keep.values())

    @property
    def pruned(self) -> int:
        return sum(int(m.size - np.count_nonzero(m)) for m in self.keep.values())

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - np.count_nonzero(m) / m.size for n, m in self.keep.items()}

    def flat(self) -> np.ndarray:
        return np.concatenate([self.keep[n].ravel() for n in sorted(self.keep)])

    def digest(self) -> str:
        """Content hash of the mask bits alone (not of the file): the mask's identity in config hashes."""
        h = hashlib.sha256()
        for n in sorted(self.keep):
            h.update(f"{n}:{list(self.keep[n].shape)}\n".encode())
            h.update(np.packbits(self.keep[n].ravel(), bitorder="little").tobytes())
        return h.hexdigest()

    def pack(self) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
        tensors = {n: np.packbits(m.ravel(), bitorder="little") for n, m in self.keep.items()}
        shapes = {n: list(m.shape) for n, m in self.keep.items()}
        return tensors, shapes

    @classmethod
    def unpack(cls, tensors: dict[str, np.ndarray], shapes: dict[str, list[int]]) -> "Mask":
        keep = {}
        for n, shape in shapes.items():
            if n not in tensors:
                raise InputError(f"mask has no tensor for {n}")
            size = int(np.prod(shape))
            bits = np.unpackbits(tensors[n], count=size, bitorder="little")
            keep[n] = bits.astype(bool).reshape(shape)
        return cls(keep)


# ---------------------------------------------------------------------------------------------- files


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
        from ticketctl.structured import StructuredMask

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise InputError(f"cannot write to {folder}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts are shared like any output file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


@contextlib.contextmanager
def atomic_folder(folder: Path):
    """Fill a temporary sibling folder, then rename it to ``folder`` (which must be absent or empty): a killed
    process never leaves a half-written model folder under the final name."""
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=str(folder.parent)))
    try:
        yield tmp
        if folder.exists():
            folder.rmdir()
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_writable(folder: Path) -> None:
    """Fail before hours of training, not after: the output folder must exist (or be creatable) and take files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"cannot write to {folder}: {e.strerror}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
