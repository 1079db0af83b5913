"""Run identity: everything a run's result depends on, the config hash that names its artifacts, and those names.

One :class:`RunIdentity` per run, whatever made it: a finetune (dense, bagging, ``--init``, a ticket), an IMP search,
a structured search, a member of ``share``, a ``predict`` of a saved member. Its fields are the JSON every artifact
records as ``config``; :meth:`RunIdentity.hash` is their ``config_hash`` with the fields at their default left out
(open_lth's ``foundations/desc.py``: a field added later, at the value older runs were made with, keeps every earlier
name); :meth:`RunIdentity.paths` names the artifacts through ``ticketctl.store.paths``. Every artifact name is pinned
by ``tests/test_identity.py``: change a field here and the test says which users' runs would no longer be found.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ticketctl.hparams import TRAIN_DEFAULTS
from ticketctl.store import paths
from ticketctl.store.provenance import config_hash
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
# An IMP search's own fields at the values of its first release. Only the search hashes with these: a structured
# search of policy perturbed has always hashed its empty ``priors`` list, so one table for both would rename it.
SEARCH_DEFAULTS = {**IDENTITY_DEFAULTS, "prune_step": 0.1, "l1": 0.0, "priors": []}

LOGITS, MASK = "logits", "mask"


@dataclass(frozen=True, eq=False)  # two identities are the same run when their .hash() agree, not by ==
class RunIdentity:
    """One run's identity. ``fields`` (JSON-able, read-only by convention) is what the hash covers and what artifacts
    record as ``config``; ``defaults`` the values left out of the hash; ``scheme`` the run's name in its file names
    (dense, bagging, init, a mask's policy, an IMP policy, a structured kind, share, ...); ``artifact`` what it
    writes: ``"logits"`` (one per evaluation split, each hashed with the split's fingerprint under ``split_key``;
    ``split_key`` None: the split is among the fields already, as in ``predict``) or ``"mask"`` (one, named by its
    target ``sparsity``)."""

    task: str
    seed: int
    scheme: str
    fields: dict = field(compare=False)
    defaults: dict = field(default_factory=lambda: IDENTITY_DEFAULTS, compare=False, repr=False)
    artifact: str = LOGITS
    sparsity: float | None = None
    split_key: str | None = "eval_data"

    # ------------------------------------------------------------------------------------------ constructors

    @classmethod
    def training(cls, task: str, model: str, seed: int, train_data: str, config: dict, *, mask: str | None = None,
                 bagging: float = 1.0, task_spec: dict | None = None, model_head: bool = False,
                 dropout_stream: str = CPU_STREAM, scheme: str = "dense", **extra: Any) -> "RunIdentity":
        """A training run: the task, the model's fingerprint, the seed, the training data's fingerprint, the training
        config (``TrainConfig.as_dict()``, resolved), the ticket's ``mask`` digest, the ``bagging`` fraction and the
        computation version, then ``extra`` (``train_fraction``, ``init``, ``share``, ...). The dense finetune of
        ``finetune`` and the first round of a ``base`` search share it, so either reuses the other's work.
        ``model_head`` (the model folder had a head of its own, redrawn) and ``dropout_stream`` enter only when
        they differ from the values older artifacts were made with, so their names and metadata are unchanged."""
        head = {"model_head": "redrawn"} if model_head else {}
        stream = {"dropout_stream": dropout_stream} if dropout_stream != CPU_STREAM else {}
        fields = {"task": task, "model": model, "seed": seed, "train_data": train_data, **config, "mask": mask,
                  "bagging": bagging, "computation": COMPUTATION, "task_spec": task_spec, **head, **stream, **extra}
        return cls(task, seed, scheme, fields)

    def imp_search(self, policy: str, sparsity: float, prune_step: float, l1: float,
                   priors: Sequence[str]) -> "RunIdentity":
        """The IMP search that starts from this (dense) training run: its mask is named by ``policy``."""
        return replace(self.extend(policy=policy, sparsity=sparsity, prune_step=prune_step, l1=l1,
                                   priors=sorted(priors)),
                       scheme=policy, defaults=SEARCH_DEFAULTS, artifact=MASK, sparsity=sparsity)

    def importance(self, version: int) -> "RunIdentity":
        """The importance scores of a structured search after this dense training run (cached per seed)."""
        return replace(self.extend(method="structured", importance=version), scheme="importance")

    def structured_ticket(self, kind: str, sparsity: float, policy: str = "base",
                          diverse: dict | None = None) -> "RunIdentity":
        """One structured mask of these importance scores: a ``kind`` (winning, random, losing) at ``sparsity``,
        made diverse by ``policy`` (its fields in ``diverse``); named ``kind`` or ``kind-policy``."""
        return replace(self.extend(ticket=kind, sparsity=sparsity, **(diverse or {})),
                       scheme=structured_scheme(kind, policy), artifact=MASK, sparsity=sparsity)

    @classmethod
    def prediction(cls, task: str, seed: int, scheme: str, member: str, data: str, max_length: int,
                   precision: str) -> "RunIdentity":
        """``predict`` of a saved member (its content fingerprint) on new data (its fingerprint)."""
        fields = {"member": member, "data": data, "max_length": max_length, "precision": precision}
        return cls(task, seed, scheme, fields, defaults={}, split_key=None)

    def extend(self, **more: Any) -> "RunIdentity":
        """This identity with more fields (a run that starts from this one)."""
        return replace(self, fields={**self.fields, **more})

    # ------------------------------------------------------------------------------------------ hash and names

    def as_dict(self) -> dict:
        """The fields, as the artifacts record them (``config``)."""
        return dict(self.fields)

    def hash(self, **extra: Any) -> str:
        """sha256 (hex) of the fields (and ``extra``) with those at their default left out."""
        return config_hash({**self.fields, **extra}, self.defaults)

    def split_hash(self, split_fingerprint: str) -> str:
        """The hash of this run's logits on one evaluation split."""
        return self.hash(**{self.split_key: split_fingerprint}) if self.split_key else self.hash()

    def logits(self, out: Path, splits: Sequence[tuple[str, str]]) -> list[tuple[Path, str]]:
        """(path, config hash) of the logits artifact of each evaluation split, given as (name, fingerprint)."""
        rows = []
        for name, fingerprint in splits:
            h = self.split_hash(fingerprint)
            rows.append((Path(out) / paths.logits_name(self.task, name, self.scheme, self.seed, h), h))
        return rows

    def paths(self, out: Path, splits: Sequence[tuple[str, str]] = ()) -> list[Path]:
        """The artifacts this run writes into ``out``: one logits file per split of ``splits`` ((name,
        fingerprint) pairs), or its mask."""
        if self.artifact == MASK:
            return [Path(out) / paths.mask_name(self.task, self.scheme, self.seed, self.sparsity, self.hash())]
        return [p for p, _ in self.logits(out, splits)]

    def round_path(self, out: Path, round_: int) -> Path:
        """An IMP search's checkpoint after ``round_`` (in ``out/cache``)."""
        return Path(out) / paths.CACHE_DIR / paths.round_mask_name(self.task, self.scheme, self.seed, round_,
                                                                   self.hash())

    def dense_weights_path(self, out: Path) -> Path:
        """The weights a dense training run keeps for reuse (in ``out/cache``)."""
        return Path(out) / paths.CACHE_DIR / paths.dense_weights_name(self.task, self.seed, self.hash())

    def importance_path(self, out: Path) -> Path:
        """A structured search's importance scores (in ``out/cache``)."""
        return Path(out) / paths.CACHE_DIR / paths.importance_name(self.task, self.seed, self.hash())


def finetune_scheme(mask_policy: str | None, bagging: float = 1.0, init: str | None = None) -> str:
    """A finetune's name in its files: its ticket's policy (``ticket`` if the mask records none), else ``bagging``,
    ``init`` (from a saved encoder) or ``dense``."""
    if mask_policy is not None:
        return mask_policy
    return "bagging" if bagging < 1 else "init" if init else "dense"


def student_scheme(scheme: str) -> str:
    """A distilled finetune's name (``finetune --teacher``): ``student``, or ``student-NAME`` after the name the
    same finetune has without a teacher (``student-random``, ``student-bagging``), so it never shares a plain
    finetune's name or its group in the analysis commands."""
    return "student" if scheme == "dense" else f"student-{scheme}"


def structured_scheme(kind: str, policy: str = "base") -> str:
    """A structured mask's name: its kind (winning, random, losing), with the diversity policy unless base."""
    return kind if policy == "base" else f"{kind}-{policy}"


def share_scheme(masked: bool) -> str:
    """A ``share`` member's name: ``share`` through structured tickets, ``share-dense`` without."""
    return "share" if masked else "share-dense"
