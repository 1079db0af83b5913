"""Which hardware a protocol job may run on, as the planner sees it without deciding it.

A job decides its device, precision (``--precision auto``) and dropout stream where it runs, as ``search`` and
``finetune`` do; those enter its artifact's name (``ticketctl.store.identity``). The planner cannot know them (a login
node without a GPU plans jobs that run on GPU nodes; a partition may mix V100 and A100 nodes), so it computes the
names of every *variant* the plan's ``--device`` and ``--precision`` allow and looks for what a job wrote under any
of them. A variant is ``(precision, dropout stream)``: the two identity fields the hardware decides.

The variants are listed in a fixed order, the same on every machine (CPU fp32 first: the names made before this
module existed), and where a job's result exists under several variants the first one found in that order is used.
"""

from __future__ import annotations

from ticketctl.train.device import stream_of

# --device value -> the device types a job given it may end up on
_DEVICE_TYPES = {"cpu": ("cpu",), "cuda": ("cuda",), "mps": ("mps",), "auto": ("cpu", "cuda", "mps")}
# --precision auto -> what it resolves to on each device type (ticketctl.train.device.resolve_precision)
_AUTO_PRECISIONS = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16"), "mps": ("fp32",)}


def device_types(device: str) -> tuple[str, ...]:
    """``--device`` (auto, cpu, cuda, cuda:N, mps) -> the device types a job may run on: ``auto`` may be any."""
    return _DEVICE_TYPES.get("cuda" if device.startswith("cuda") else device, ("cpu",))


def variants(device: str, precision: str, dropout: float) -> list[tuple[str, str]]:
    """Every ``(precision, dropout stream)`` a job of these options may be computed with, in the fixed order of
    preference (CPU fp32 first). ``precision`` other than ``auto`` and ``device`` other than ``auto`` pin them; the
    dropout stream is ``ticketctl-cpu`` on CPU and without dropout, ``torch-cuda`` / ``torch-mps`` otherwise
    (``ticketctl.train.device.stream_of``; protocol jobs run one process each)."""
    out: list[tuple[str, str]] = []
    for kind in device_types(device):
        precisions = _AUTO_PRECISIONS[kind] if precision == "auto" else (precision,)
        stream = stream_of(kind, 1, dropout)
        for p in precisions:
            if (p, stream) not in out:
                out.append((p, stream))
    return out


def local_variant(device: str, precision: str, dropout: float) -> tuple[str, str]:
    """The variant a job would get on *this* machine (what a dry run shows as a job's target). Never raises: a
    device that is not here gives the first variant of :func:`variants`."""
    options = variants(device, precision, dropout)
    try:
        import torch

        from ticketctl.train.device import pick_device, resolve_precision

        if device == "auto" or device.startswith("cuda") and torch.cuda.is_available():
            dev = pick_device(device)
        else:
            dev = torch.device("cpu" if device not in ("mps",) else device)
            if device.startswith("cuda"):
                return options[0]
        p = resolve_precision(precision, dev)
        stream = stream_of(dev.type, 1, dropout)
        return (p, stream) if (p, stream) in options else options[0]
    except Exception:  # noqa: BLE001 - a guess for display only
        return options[0]
