"""Every artifact file name, one function each: a finished step is found again by computing its name.

``config_hash`` (``ticketctl.store.provenance``) names a run by everything its result depends on; the names carry
its first ten hex digits."""

from __future__ import annotations

CACHE_DIR = "cache"  # inside --out: round checkpoints, importance scores and reusable dense weights


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


def tokens_name(task: str, split: str, key: str) -> str:
    return f"{task}-tokens-{split}-{short(key)}.safetensors"
