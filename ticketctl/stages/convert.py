"""``convert``: masks between ticketctl and ``torch.nn.utils.prune``'s convention.

torch's pruning keeps, for a pruned parameter ``P`` of a module, the buffer ``P_mask`` (1 = kept, 0 = pruned, the
parameter's dtype and shape) beside ``P_orig``; a model's ``state_dict()`` then holds ``...query.weight_mask``.
Export writes those buffers under the model's parameter names (``{name}_mask``), so ``prune.custom_from_mask`` applies
a ticketctl ticket elsewhere; import reads any file of ``*_mask`` tensors (a pruned model's state dict too) and
writes a ticketctl mask artifact for ``finetune --mask``, ``iou`` and ``search --prior``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ticketctl.errors import InputError, UsageError
from ticketctl.hparams import RunOptions
from ticketctl.masks.weights import Mask
from ticketctl.store import atomic
from ticketctl.store.artifacts import read_artifact, write_artifact
from ticketctl.store.provenance import file_sha256, provenance

SUFFIX = "_mask"


def convert(source: str | Path, target: str | Path, *, task: str | None = None, run: RunOptions | None = None) -> Path:
    """A ticketctl mask artifact -> torch prune masks (``.safetensors`` or ``.pt``), or torch prune masks -> a
    ticketctl mask artifact (for ``--model``). Returns ``target``."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    try:
        art = read_artifact(source, "mask")
    except InputError:  # not a ticketctl mask: torch prune masks to import
        return import_mask(source, target, task, run or RunOptions())
    return export_mask(art, target, run or RunOptions())


def _writer(target: Path):
    suffix = target.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise UsageError(f"{target}: write torch prune masks as .safetensors or .pt")
    return suffix


def export_mask(art, target: Path, run: RunOptions) -> Path:
    suffix = _writer(target)
    if art.method == "structured":
        element = _structured_elements(art, run)
    else:
        element = art.mask().keep
    tensors = {f"{name}{SUFFIX}": keep.astype(np.float32) for name, keep in element.items()}
    atomic.ensure_writable(target.parent if target.parent != Path("") else Path("."))
    if suffix == ".safetensors":
        from safetensors.numpy import save

        atomic.atomic_write_bytes(target, save(tensors, metadata={"source": str(art.path), "source_sha256": art.sha256,
                                                                  "convention": "torch.nn.utils.prune"}))
    else:
        import io

        import torch

        buf = io.BytesIO()
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, buf)
        atomic.atomic_write_bytes(target, buf.getvalue())
    return target


def _structured_elements(art, run: RunOptions) -> dict[str, np.ndarray]:
    """Element masks of a structured ticket: the rows and columns its heads and FFNs own (needs the model's
    parameter names: ``--model``, else the model the mask was made for)."""
    from ticketctl.model import loading
    from ticketctl.model.units import expand

    _, folder = loading.resolve_model(run.model or art.meta.get("model"))
    model = loading.load_model(folder, 2, None, "eager")
    return {n: m.numpy() for n, m in expand(model, art.structured()).items()}


def _read_masks(source: Path) -> dict[str, np.ndarray]:
    if source.suffix.lower() == ".safetensors":
        from safetensors.numpy import load

        try:
            raw = load(source.read_bytes())
        except Exception as e:
            raise InputError(f"{source}: not a safetensors file ({type(e).__name__})") from None
    else:
        import torch

        try:
            state = torch.load(str(source), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"{source}: not a torch state dict ({type(e).__name__})") from None
        if not isinstance(state, dict):
            raise InputError(f"{source}: not a state dict (a dict of tensors)")
        raw = {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy") and k.endswith(SUFFIX)}
    masks = {k[: -len(SUFFIX)]: v for k, v in raw.items() if k.endswith(SUFFIX)}
    if not masks:
        raise InputError(f"{source}: no '*_mask' tensors (torch.nn.utils.prune's convention)")
    return masks


def import_mask(source: Path, target: Path, task: str | None, run: RunOptions) -> Path:
    """A ticketctl weight mask from torch prune masks of ``--model``'s prunable weights: a weight without a mask is
    kept whole; a mask of anything else (a bias, the task head, an unknown name) or of another shape is refused."""
    from ticketctl.model import loading
    from ticketctl.model.units import prunable_parameters

    if target.suffix != ".safetensors":
        raise UsageError(f"{target}: a ticketctl mask artifact is a .safetensors file")
    masks = _read_masks(source)
    model_name, folder = loading.resolve_model(run.model)
    model = loading.load_model(folder, 2, None, "eager")
    prunable = prunable_parameters(model)
    prefix = model.base_model_prefix + "."
    keep = {n: np.ones(tuple(p.shape), dtype=bool) for n, p in prunable.items()}
    for name, m in masks.items():
        full = name if name in prunable else prefix + name  # masks of the bare encoder lack the prefix
        if full not in prunable:
            raise InputError(f"{source}: {name}{SUFFIX} is not a prunable weight of {model_name} (ticketctl prunes the "
                             f"encoder's Linear weights)")
        if tuple(m.shape) != tuple(prunable[full].shape):
            raise InputError(f"{source}: {name}{SUFFIX} has shape {tuple(m.shape)}, {model_name}'s is "
                             f"{tuple(prunable[full].shape)}")
        if not np.isin(m, (0, 1)).all():
            raise InputError(f"{source}: {name}{SUFFIX} holds values other than 0 and 1")
        keep[full] = m.astype(bool)
    mask = Mask(keep)
    tensors, shapes = mask.pack()
    meta = provenance(task or "imported", model_name, loading.model_fingerprint(folder), method="imp", seed="0",
                      policy="imported", sparsity=f"{mask.sparsity:.6f}", target_sparsity=f"{mask.sparsity:.6f}",
                      shapes=shapes, prunable_total=str(mask.total), imported_from=str(source),
                      parents=[{"path": str(source), "sha256": file_sha256(source), "kind": "torch-prune"}])
    atomic.ensure_writable(target.parent if target.parent != Path("") else Path("."))
    write_artifact(target, "mask", tensors, meta)
    return target
