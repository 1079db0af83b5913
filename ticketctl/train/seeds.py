"""Seeded streams: one seed gives independent, reproducible random streams per purpose."""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, purpose: str) -> int:
    """Independent, reproducible streams per purpose (data order, dropout, random masks, ...)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:8], "little") & (2**63 - 1)


# The dropout stream of a one-process CPU run (ticketctl.train.fastcpu's masks): the value of an identity's
# ``dropout_stream`` that the config hash leaves out (ticketctl.store.identity.IDENTITY_DEFAULTS).
CPU_STREAM = "ticketctl-cpu"
