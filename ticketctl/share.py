"""``ticketctl share``: multi-task ticket sharing (Liang et al., 2021, Section 6).

One encoder, one classification head per task, mixed task batches. Each task's batches run through that task's
structured mask (gates on heads and FFN sublayers), and after every optimizer step the parameters the task's ticket
does not keep are put back as they were, optimizer moments included: a structure kept by several tasks is updated by
exactly those tasks, one kept by a single task only by it, one kept by none never changes and is never used. Without
masks this is the dense multi-task baseline.

Task sampling: ``proportional`` (default; every task's batches of an epoch are shuffled together, so a task is drawn
in proportion to its number of examples, as in MT-DNN) or ``equal`` (each step draws a task uniformly, cycling
through its batches).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ticketctl import artifacts
from ticketctl.context import Context
from ticketctl.errors import InputError, UsageError
from ticketctl.finetune import check_model_folder, load_mask, logits_paths, training_identity
from ticketctl.train import TrainConfig, derive_seed

SAMPLING = ("proportional", "equal")


@dataclass
class Member:
    ctx: Context
    mask_art: artifacts.Artifact | None

    @property
    def name(self) -> str:
        return self.ctx.task.name


def task_plan(n_batches: dict[str, int], epochs: float, sampling: str, rng: np.random.Generator) -> list[str]:
    """The task of every optimizer step. One epoch = as many steps as all tasks have batches."""
    per_epoch = sum(n_batches.values())
    total = max(1, int(round(epochs * per_epoch)))
    names = sorted(n_batches)
    plan: list[str] = []
    while len(plan) < total:
        if sampling == "proportional":
            epoch = [t for t in names for _ in range(n_batches[t])]
            plan.extend(epoch[i] for i in rng.permutation(len(epoch)))
        else:
            plan.extend(names[i] for i in rng.integers(0, len(names), per_epoch))
    return plan[:total]


def share(members: list[Member], cfg: TrainConfig, seed: int, out: Path, sampling: str = "proportional",
          device_name: str = "auto", force: bool = False, save_model: Path | None = None) -> list[Path]:
    cfg.validate()
    if sampling not in SAMPLING:
        raise UsageError(f"--sampling must be one of {', '.join(SAMPLING)}")
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UsageError(f"--task {sorted(n for n in names if names.count(n) > 1)[0]} is given twice")
    if len(members) < 2:
        raise UsageError("share needs at least two --task")
    fps = {m.ctx.model_fp for m in members}
    assert len(fps) == 1
    artifacts.ensure_writable(out)
    if save_model is not None:
        check_model_folder(save_model)
    masks = {m.name: (m.mask_art.structured() if m.mask_art else None) for m in members}
    scheme = "share" if members[0].mask_art else "share-dense"
    shared_id = [{"task": m.name, "train_data": m.ctx.train.fingerprint,
                  "mask": masks[m.name].digest() if masks[m.name] is not None else None} for m in sorted(
                      members, key=lambda m: m.name)]
    rows = {}
    identities = {}
    for m in members:
        digest = masks[m.name].digest() if masks[m.name] is not None else None
        identity = {**training_identity(m.ctx, cfg, seed, m.ctx.train, digest), "share": shared_id,
                    "sampling": sampling}
        identities[m.name] = identity
        rows[m.name] = logits_paths(m.ctx, identity, scheme, seed, out)
    every = [p for r in rows.values() for _, p, _ in r]
    if not force and save_model is None and all(artifacts.existing(p, "logits") for p in every):
        members[0].ctx.log.info("finished already (same config): reusing " + ", ".join(map(str, every)))
        return every

    import torch

    from ticketctl import modeling, train
    from ticketctl.finetune import write_outputs
    from ticketctl.fastcpu import training_fastpath

    log = members[0].ctx.log
    from ticketctl import distributed

    if distributed.world_size() > 1:
        raise UsageError("share does not run data-parallel (torchrun) yet; run it as one process")
    device = train.pick_device(device_name)
    tokenizer = modeling.load_tokenizer(members[0].ctx.model_dir)
    shared = Shared.build(members, masks, cfg, seed, device)
    modeling.check_max_length(cfg.max_length, shared.first, tokenizer)
    if shared.gates is not None:
        report_overlap(log, masks)
    pad = tokenizer.pad_token_id or 0
    encs = {m.name: train.encode(tokenizer, m.ctx.train, cfg.max_length) for m in members}
    labels = {m.name: torch.from_numpy(m.ctx.train.labels) for m in members}

    torch.manual_seed(derive_seed(seed, "dropout"))
    rng = np.random.default_rng(derive_seed(seed, "data-order"))
    streams = {n: iter(()) for n in names}
    n_batches = {n: math.ceil(len(encs[n]) / cfg.batch_size) for n in names}
    plan = task_plan(n_batches, cfg.epochs, sampling, np.random.default_rng(derive_seed(seed, "task-order")))
    total = len(plan)
    log.info(f"share {'+'.join(names)} seed={seed} ({scheme}, {sampling} sampling): {total} steps over "
             + ", ".join(f"{n} {len(encs[n])}" for n in names) + f" examples, {device.type}/{cfg.precision}")
    shared.train()
    start = time.perf_counter()
    with training_fastpath(list(shared.models.values()), derive_seed(seed, "dropout"), device):
        with log.progress(f"share s{seed}", total) as advance:
            for step, task in enumerate(plan):
                idx = next(streams[task], None)
                if idx is None:
                    streams[task] = iter(train.length_grouped_batches(encs[task].lengths, cfg.batch_size, rng))
                    idx = next(streams[task])
                lr = cfg.lr * train.lr_factor(step, total, int(cfg.warmup * total))
                loss = shared.step(task, train.collate(encs[task], idx, pad, device), labels[task][idx].to(device), lr)
                advance(step + 1, total, float(loss) if (step + 1) % 10 == 0 or step + 1 == total else None)
    train_time = time.perf_counter() - start
    log.info(f"trained in {train_time:.1f}s")
    models, gates, gate_values, encoder = shared.models, shared.gates, shared.gate_values, shared.first.base_model

    paths = []
    for m in members:
        if gates is not None:
            gates.set(*gate_values[m.name])
        meta = {"seed": str(seed), "policy": scheme, "sparsity": f"{masks[m.name].sparsity:.6f}" if masks[m.name]
                is not None else "0", "bagging": "1.0", "config": identities[m.name], "method": "share",
                "tasks": names, "sampling": sampling, "train_seconds": f"{train_time:.1f}",
                "parents": [m.mask_art.parent_ref()] if m.mask_art else []}
        write_outputs(m.ctx, models[m.name], tokenizer, cfg, device, rows[m.name], meta)
        paths.extend(p for _, p, _ in rows[m.name])
    if save_model is not None:
        save_shared(log, models, names, encoder, tokenizer, masks, save_model)
    return paths


class Shared:
    """One encoder with a classifier per task; ``step`` trains on one task's batch through that task's gates and
    leaves every parameter (and its optimizer moments) outside the task's ticket as it was."""

    def __init__(self, models, masks, cfg: TrainConfig, device):
        import torch

        from ticketctl import structured, train

        self.models, self.cfg, self.device = models, cfg, device
        self.names = list(models)
        self.first = models[self.names[0]]
        self.gates = None
        self.gate_values: dict = {}
        self.frozen: dict[str, list] = {}
        named = dict(self.first.named_parameters())
        if masks[self.names[0]] is not None:
            lay = structured.layout(self.first)
            for n in self.names:
                masks[n].check_fits(lay, n)
                self.gate_values[n] = (torch.from_numpy(masks[n].heads).float().to(device),
                                       torch.from_numpy(masks[n].ffn).float().to(device))
                keep = structured.expand(self.first, masks[n])
                # flat positions outside the ticket, found once: gathering and scattering them by index costs
                # 7.6 ms a step for a 10% MiniLM ticket, boolean-mask indexing 62-73 ms (a nonzero() per tensor)
                self.frozen[n] = [(named[p], (~k).reshape(-1).nonzero().squeeze(1).to(device))
                                  for p, k in keep.items() if not k.all()]
            self.gates = structured.Gates(self.first)
        params: dict[int, torch.nn.Parameter] = {}
        for model in models.values():
            for p in model.parameters():
                params.setdefault(id(p), p)
        plist = list(params.values())
        groups = [{"params": [p for p in plist if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in plist if p.ndim < 2], "weight_decay": 0.0}]
        self.opt = train.make_adamw(groups, cfg.lr)

    @classmethod
    def build(cls, members: list[Member], masks: dict, cfg: TrainConfig, seed: int, device) -> "Shared":
        import torch

        from ticketctl import modeling

        models = {}
        for m in members:
            torch.manual_seed(derive_seed(seed, f"head:{m.name}"))  # each task's head from its own stream
            models[m.name] = modeling.load_model(m.ctx.model_dir, m.ctx.task.num_labels, cfg.dropout,
                                                 modeling.attention_for(device.type))
        first = models[members[0].name]
        for name in list(models)[1:]:  # one encoder: every task's classifier runs on the first one's
            setattr(models[name], models[name].base_model_prefix, first.base_model)
        for model in models.values():
            model.to(device)
        return cls(models, masks, cfg, device)

    def train(self) -> None:
        for model in self.models.values():
            model.train()

    def use(self, task: str) -> None:
        """Route the forward pass through ``task``'s gates (no-op for the dense baseline)."""
        if self.gates is not None:
            self.gates.set(*self.gate_values[task])

    def step(self, task: str, batch: dict, target, lr: float):
        import torch

        from ticketctl import structured, train

        for g in self.opt.param_groups:
            g["lr"] = lr
        self.use(task)
        with train.autocast(self.device, self.cfg.precision):
            logits = self.models[task](**batch).logits
        loss = structured.example_losses(logits.float(), target).mean()
        loss.backward()
        saved = [(p, i, p.detach().view(-1).index_select(0, i), [s.view(-1).index_select(0, i)
                                                                  for s in _moments(self.opt, p)])
                 for p, i in self.frozen.get(task, [])]
        self.opt.step()
        with torch.no_grad():
            for p, i, value, moments in saved:
                p.view(-1).index_copy_(0, i, value)
                for s, v in zip(_moments(self.opt, p), moments):
                    s.view(-1).index_copy_(0, i, v)
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


def _moments(opt, p):
    state = opt.state.get(p, {})
    return [state[k] for k in ("exp_avg", "exp_avg_sq") if k in state]


def report_overlap(log, masks) -> None:
    heads = np.stack([m.heads for m in masks.values()])
    ffn = np.stack([m.ffn for m in masks.values()])
    counts = heads.sum(0)
    log.info(f"heads kept by all tasks {int((counts == len(masks)).sum())}, by some {int(((counts > 0) & (counts < len(masks))).sum())}, "
             f"by none (pruned) {int((counts == 0).sum())} of {counts.size}; FFNs kept by none "
             f"{int((ffn.sum(0) == 0).sum())} of {ffn.shape[1]}")


def save_shared(log, models, names, encoder, tokenizer, masks, folder: Path) -> None:
    """The shared encoder as a transformers folder (usable as ``--model``), each task's head in
    ``task_heads.safetensors`` and the tasks' masks in ``ticketctl_share.json``."""
    from safetensors.torch import save_file

    with artifacts.atomic_folder(folder) as tmp:
        encoder.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        heads = {}
        prefix = models[names[0]].base_model_prefix + "."
        for n in names:
            for k, v in models[n].state_dict().items():
                if not k.startswith(prefix):
                    heads[f"{n}.{k}"] = v.detach().cpu().contiguous()
        save_file(heads, str(tmp / "task_heads.safetensors"))
        spec = {n: None if masks[n] is None else {"heads": masks[n].heads.astype(int).tolist(),
                                                  "ffn": masks[n].ffn.astype(int).tolist()} for n in names}
        (tmp / "ticketctl_share.json").write_text(json.dumps({"tasks": names, "masks": spec}, indent=1) + "\n")
    log.info(f"saved the shared model -> {folder}")


def load_members(contexts: list[Context], mask_paths: list[str]) -> list[Member]:
    if mask_paths and len(mask_paths) != len(contexts):
        raise UsageError(f"give one --mask per --task ({len(contexts)} tasks, {len(mask_paths)} masks), or none for "
                         f"the dense multi-task baseline")
    members = []
    for i, ctx in enumerate(contexts):
        art = load_mask(ctx, mask_paths[i]) if mask_paths else None
        if art is not None and art.method != "structured":
            raise InputError(f"{art.path}: share needs structured masks (search --method structured)")
        if art is not None and art.meta.get("task") != ctx.task.name:
            raise InputError(f"{art.path}: mask is for {art.meta.get('task')}, given for --task {ctx.task.name}")
        members.append(Member(ctx, art))
    return members
