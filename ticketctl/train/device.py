"""Where a run computes: the device (``--device``), its precision (``--precision auto``) and CPU threads."""

from __future__ import annotations

from ticketctl.errors import UsageError
from ticketctl.train import distributed

DEVICES = ("auto", "cpu", "cuda", "mps")  # and cuda:N
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def pick_device(device: str):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
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
    return torch.device(device)


def resolve_precision(precision: str, device) -> str:
    """``auto``: bf16 where the hardware makes it faster (CUDA with bf16; CPUs with AMX), else fp32. A CPU with
    AVX-512 BF16 but no AMX trained MiniLM 1.48x slower in bf16 than in fp32 (1.098 vs 0.742 s/step,
    benchmarks/README.md), so it gets fp32."""
    if precision not in PRECISIONS:
        raise UsageError("--precision must be fp32, bf16, fp16 or auto")
    if precision != "auto":
        return precision
    import torch

    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return "fp32"
        return "bf16" if "amx_bf16" in flags else "fp32"
    return "fp32"


def set_threads(threads: int | None) -> None:
    if threads is None:
        return
    if threads < 1:
        raise UsageError("--threads must be >= 1")
    import torch

    torch.set_num_threads(threads)


def runtime(device: str, precision: str, threads: int | None, data_parallel: bool = True):
    """The one place a run's device is decided: CPU threads, the process group under torchrun (when the command runs
    data-parallel), the device, and the precision ``auto`` resolves to on it. Returns (device, precision)."""
    if precision not in PRECISIONS:
        raise UsageError("--precision must be fp32, bf16, fp16 or auto")
    set_threads(threads)
    dev = pick_device(distributed.setup(device) if data_parallel else device)
    return dev, resolve_precision(precision, dev)
