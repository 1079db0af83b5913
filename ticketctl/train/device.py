"""Where a run computes: the device (``--device``), its precision (``--precision auto``), CPU threads,
``--deterministic``, and the record of all that every artifact carries (:func:`describe`)."""

from __future__ import annotations

import os

from ticketctl.errors import UsageError
from ticketctl.train import distributed
from ticketctl.train.seeds import CPU_STREAM  # one CPU process's dropout stream: the identity's default

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def pick_device(device: str):
    """The ``torch.device`` of a ``--device`` value: ``auto`` is CUDA, then MPS, then CPU; ``cuda`` the current GPU
    (``cuda:I``); ``cuda:N`` GPU N, made the current one. Raises UsageError, one line, for a device that is not
    there (``--device cuda:3: only 2 GPU(s) (cuda:0..cuda:1)``) or an unknown name."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda:"):
        index = device[5:]
        if not index.isdigit():
            raise UsageError(f"--device {device}: give cuda:N with N a GPU index")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index) >= count:
            have = "no CUDA device is available" if count == 0 else f"only {count} GPU(s) (cuda:0..cuda:{count - 1})"
            raise UsageError(f"--device {device}: {have}")
        torch.cuda.set_device(int(index))
        return torch.device(device)
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: no MPS device is available")
    if device not in ("cpu", "cuda", "mps"):
        raise UsageError("--device must be auto, cpu, cuda, cuda:N or mps")
    return torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device(device)


def resolve_precision(precision: str, device) -> str:
    """``auto``: bf16 where the hardware computes it natively and faster, else fp32. CUDA: compute capability >= 8.0
    (Ampere and later; ``torch.cuda.is_bf16_supported()`` also counts the slow emulation of V100 and T4). CPU: AMX.
    A CPU with AVX-512 BF16 but no AMX trained MiniLM 1.48x slower in bf16 than in fp32 (1.098 vs 0.742 s/step,
    benchmarks/README.md), so it gets fp32. ``auto`` never picks fp16. Raises UsageError for an unknown name."""
    if precision not in PRECISIONS:
        raise UsageError("--precision must be fp32, bf16, fp16 or auto")
    if precision != "auto":
        return precision
    import torch

    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "bf16" if major >= 8 else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_amx() else "fp32"
    return "fp32"


AMX_ENV = "TICKETCTL_CPU_AMX"


def cpu_has_amx() -> bool:
    """Whether this CPU counts as having AMX (``amx_bf16`` in ``/proc/cpuinfo``) for ``--precision auto``.

    The environment variable ``TICKETCTL_CPU_AMX`` overrides the reading: ``1`` counts the CPU as having AMX, ``0``
    as lacking it, anything else (or unset) reads ``/proc/cpuinfo``. Being an environment variable, it reaches every
    process that resolves ``auto`` (subprocesses, pool workers, torchrun ranks, Slurm jobs): the tests use it to
    run both precision paths on any CPU, and a planner can be given other hardware than its workers. Raises nothing;
    an unreadable ``/proc/cpuinfo`` (macOS, Windows) counts as no AMX."""
    forced = os.environ.get(AMX_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            return "amx_bf16" in f.read()
    except OSError:
        return False


def set_deterministic(on: bool) -> None:
    """``--deterministic``: torch's deterministic algorithms (an operation without one raises), with what CUDA needs
    for them: a fixed cuBLAS workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, unless set already; read when cuBLAS
    starts, so this runs before any CUDA work) and no cuDNN autotuning. Off: torch's settings are left as they are."""
    if not on:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def dropout_stream(device, world: int, dropout: float) -> str:
    """Which random stream a training run's dropout masks come from, for its identity: ticketctl's CPU stream
    (``ticketctl-cpu``) or torch's on CUDA/MPS (``torch-cuda``), suffixed ``xN`` when N processes each draw their
    own. Without dropout nothing is drawn: ``ticketctl-cpu`` (the identity's default) on every device."""
    return stream_of(device.type, world, dropout)


def stream_of(device_type: str, world: int, dropout: float) -> str:
    """:func:`dropout_stream` by device type (``cpu``, ``cuda``, ``mps``), for a planner that names the stream a
    job would get on a device it does not have (``ticketctl.protocol.hardware``)."""
    if dropout <= 0:
        return CPU_STREAM
    base = CPU_STREAM if device_type == "cpu" else f"torch-{device_type}"
    return base if world <= 1 else f"{base}x{world}"


def describe(device, world: int, deterministic: bool) -> dict:
    """What an artifact records about where it was computed: device type and name (the GPU's, or the CPU model),
    world size (processes), torch, CUDA and cuDNN versions (None without them), and whether deterministic
    algorithms were on (``torch.are_deterministic_algorithms_enabled()``, however they were switched on)."""
    import platform

    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"device": device.type, "device_name": name, "world_size": world, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": None if cudnn is None else str(cudnn),
            "deterministic": bool(deterministic or torch.are_deterministic_algorithms_enabled())}


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise UsageError("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)


def runtime(device: str, precision: str, threads: int | None, data_parallel: bool = True,
            deterministic: bool = False):
    """The one place a run's device is decided: CPU threads, ``--deterministic``, the process group under torchrun
    (when the command runs data-parallel), the device, and the precision ``auto`` resolves to on it. Returns
    (device, precision). Raises UsageError for a device that is not there or a bad name."""
    if precision not in PRECISIONS:
        raise UsageError("--precision must be fp32, bf16, fp16 or auto")
    set_threads(threads)
    set_deterministic(deterministic)
    dev = pick_device(distributed.setup(device) if data_parallel else device)
    return dev, resolve_precision(precision, dev)
