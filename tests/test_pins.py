"""Behaviour pinned before the #23 refactor, each against a literal or a computation done here by hand.

Only public entry points that survive the refactor: the training loop (``ticketctl.train.loop``), the CLI, and the
artifacts read back from disk. Spies sit on torch's optimizer-step hook, on parameters' gradient hooks and on
``Loop`` (the one training loop every stage runs), never on a stage's private helpers.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

from ticketctl.data.batching import Encoded
from ticketctl.hparams import TrainConfig
from ticketctl.train import loop as loop_mod

# ---------------------------------------------------------------------------------------------- the training step


class _Linear(torch.nn.Module):
    """A classifier small enough to redo its step by hand: logits = W x + b, x = the first 4 token ids / 2."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = torch.nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask, **_):
        return SimpleNamespace(logits=self.inner(input_ids.float()[:, :4] / 2))


def _data():
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 10, size=8) for _ in range(8)]
    return Encoded(ids, None, np.full(8, 8), 16), np.array([0, 1] * 4)


def _spied_train(model, cfg, keep=None, l1=None):
    """Train ``model`` with ``loop.train``; per optimizer step: (raw gradients from backward, parameters, the
    gradients the optimizer sees, its learning rate), all float64."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    named = dict(model.named_parameters())
    raw: dict[str, torch.Tensor] = {}
    for n, p in named.items():  # the gradient backward() produced: before L1, mask and clipping
        p.register_hook(lambda g, n=n: raw.__setitem__(n, g.detach().double().clone()))
    steps = []

    def at_step(opt, args, kwargs):
        steps.append(({n: raw[n] for n in named}, {n: p.detach().double().clone() for n, p in named.items()},
                      {n: p.grad.detach().double().clone() for n, p in named.items()}, opt.param_groups[0]["lr"]))

    enc, labels = _data()
    handle = register_optimizer_step_pre_hook(at_step)
    try:
        loop_mod.train(model, enc, labels, cfg, 0, torch.device("cpu"), 0, keep=keep, l1=l1)
    finally:
        handle.remove()
    return steps


def _clip(grads: dict[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """torch.nn.utils.clip_grad_norm_'s rule, by hand in float64: scale by max_norm / (norm + 1e-6) when below 1."""
    norm = float(torch.sqrt(sum((g**2).sum() for g in grads.values())))
    scale = min(1.0, max_norm / (norm + 1e-6))
    return {n: g * scale for n, g in grads.items()}, norm


def test_l1_term_added_to_the_gradient_decays_with_the_learning_rate():
    """At every optimizer step the gradient is the loss gradient plus tau * f_t * l_s * sign(theta), with f_t the
    linear decay (T - t) / T: 1, 0.75, 0.5, 0.25 over T = 4 steps (8 examples, batch 4, 2 epochs, no warm-up).
    A tau that never decays, or of another scale, fails the per-step comparison."""
    model = _Linear()
    coef = torch.linspace(0.0, 1.0, 8).view(2, 4)  # l_s: a different weight on every entry, one entry 0
    tau, lr = 0.5, 1e-2
    cfg = TrainConfig(epochs=2, batch_size=4, lr=lr, dropout=0.0, max_grad_norm=0.0, precision="fp32")
    steps = _spied_train(model, cfg, l1=loop_mod.L1Regularizer(tau, {"inner.weight": coef}))
    factors = [1.0, 0.75, 0.5, 0.25]
    assert len(steps) == 4
    for (raw, theta, seen, step_lr), f in zip(steps, factors):
        assert step_lr == pytest.approx(lr * f, rel=1e-12)
        term = tau * f * coef.double() * torch.sign(theta["inner.weight"])
        torch.testing.assert_close(seen["inner.weight"], raw["inner.weight"] + term, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(seen["inner.bias"], raw["inner.bias"], rtol=0, atol=0)  # no L1 on biases
        # the part added is tau * f_t on every penalised entry: it shrinks with the learning rate
        added = (seen["inner.weight"] - raw["inner.weight"])[coef > 0] / (coef.double() * torch.sign(
            theta["inner.weight"]))[coef > 0]
        torch.testing.assert_close(added, torch.full_like(added, tau * f), rtol=1e-5, atol=1e-6)


def test_gradient_is_clipped_after_the_mask_and_the_l1_term():
    """The optimizer sees clip(mask * (g + tau_t * l_s * sign(theta))), clipped over every parameter (weight and
    bias) to --max-grad-norm, computed here by hand from the raw gradient. The other orders give other numbers,
    checked below: clipping before the mask leaves a norm below the limit (the masked entry's share is removed
    after scaling), and clipping before the L1 term lets the full L1 term through unscaled; both are far outside
    the tolerance, so an implementation in either order fails this test."""
    model = _Linear()
    keep = torch.tensor([[0.0, 1, 1, 1], [1, 1, 0, 1]])  # two pruned weights
    coef = torch.ones(2, 4)
    tau, max_norm = 0.5, 0.5
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, dropout=0.0, max_grad_norm=max_norm, precision="fp32")
    steps = _spied_train(model, cfg, keep={"inner.weight": keep}, l1=loop_mod.L1Regularizer(tau, {"inner.weight": coef}))
    assert len(steps) == 4
    k = keep.double()
    for t, (raw, theta, seen, _) in enumerate(steps):
        f = (4 - t) / 4
        l1 = {"inner.weight": tau * f * coef.double() * torch.sign(theta["inner.weight"]),
              "inner.bias": torch.zeros(2, dtype=torch.float64)}
        mask = {"inner.weight": k, "inner.bias": torch.ones(2, dtype=torch.float64)}
        want, norm = _clip({n: mask[n] * (raw[n] + l1[n]) for n in raw}, max_norm)
        assert norm > 2 * max_norm  # clipping is active at every step
        for n in raw:
            torch.testing.assert_close(seen[n], want[n], rtol=1e-5, atol=1e-7)
        got_norm = float(torch.sqrt(sum((g**2).sum() for g in seen.values())))
        assert got_norm == pytest.approx(max_norm, rel=1e-5)  # exactly the limit, masked entries exactly zero
        assert float(seen["inner.weight"][0, 0]) == 0.0 and float(seen["inner.weight"][1, 2]) == 0.0
        # the orders this test rules out
        before_mask = {n: mask[n] * g for n, g in _clip({n: raw[n] + l1[n] for n in raw}, max_norm)[0].items()}
        before_l1 = {n: mask[n] * (g + l1[n]) for n, g in _clip({n: raw[n] for n in raw}, max_norm)[0].items()}
        for other in (before_mask, before_l1):
            assert max(float((other[n] - want[n]).abs().max()) for n in raw) > 1e-3
    # the pruned weights never moved from zero
    w = model.inner.weight.detach()
    assert float(w[0, 0]) == 0.0 and float(w[1, 2]) == 0.0


# ---------------------------------------------------------------------------------------------- IMP through the CLI

PRUNABLE = [f"bert.encoder.layer.{i}.{m}.weight" for i in range(2)
            for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                      "intermediate.dense", "output.dense")] + ["bert.pooler.dense.weight"]


def _pretrained(tiny_model) -> dict[str, torch.Tensor]:
    """The tiny model's pretrained encoder read from its file, under the classifier's parameter names."""
    return {(k if k.startswith("bert.") else f"bert.{k}"): v for k, v in
            load_file(str(tiny_model / "model.safetensors")).items()}


@pytest.fixture()
def spy_loops(monkeypatch):
    """Every ``Loop`` built while the test runs: its L1 regularizer, and its model's parameters when ``run`` starts
    (after the mask is applied: what the round trains from)."""
    seen: list[dict] = []
    init, run = loop_mod.Loop.__init__, loop_mod.Loop.run

    def spy_init(self, *args, **kwargs):
        bound = inspect.signature(init).bind(self, *args, **kwargs)
        seen.append({"l1": bound.arguments.get("l1")})
        init(self, *args, **kwargs)

    def spy_run(self, *args, **kwargs):
        model = next(iter(self.models.values()))
        seen[-1]["start"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return run(self, *args, **kwargs)

    monkeypatch.setattr(loop_mod.Loop, "__init__", spy_init)
    monkeypatch.setattr(loop_mod.Loop, "run", spy_run)
    return seen


def _keep(path) -> dict[str, np.ndarray]:
    """A mask artifact's keep-masks, unpacked here from the file (bits little-endian, shapes in the metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        shapes = json.loads(f.metadata()["shapes"])
    tensors = load_numpy(str(path))
    return {n: np.unpackbits(tensors[n], count=int(np.prod(s)), bitorder="little").astype(bool).reshape(s)
            for n, s in shapes.items()}


def test_every_imp_round_starts_from_the_pretrained_weights_times_the_mask_and_the_seeds_head(
        cli, tiny_args, tiny_model, tmp_path, spy_loops):
    """Rewinding: round r trains from pretrained x (round r-1's mask), bit for bit, with the task head the seed's
    dense finetune starts from; nothing else of round r-1's training survives."""
    code, out, err = cli("search", "--task", "mrpc", "--seed", "5", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    rounds = [s["start"] for s in spy_loops]
    assert len(rounds) == 3
    pre = _pretrained(tiny_model)
    keeps = [None] + [_keep(next((tmp_path / "cache").glob(f"mrpc-round{r}-base-s5-*"))) for r in (1, 2)]
    assert [1 - sum(k.sum() for k in m.values()) / sum(k.size for k in m.values()) for m in keeps[1:]] == \
        pytest.approx([0.1, 0.2], abs=1e-3)
    head = {n: p for n, p in rounds[0].items() if n.startswith("classifier.")}
    assert set(head) == {"classifier.weight", "classifier.bias"}
    for start, keep in zip(rounds, keeps):
        assert set(start) == set(pre) - {"bert.embeddings.position_ids"} | set(head)
        for n, p in start.items():
            if n in head:
                assert torch.equal(p, head[n]), n
            elif keep is not None and n in keep:
                assert torch.equal(p, pre[n] * torch.from_numpy(keep[n]).float()), n
            else:
                assert torch.equal(p, pre[n]), n
        if keep is not None:
            assert set(keep) == set(PRUNABLE)
    # the head is the seed's: the dense finetune of seed 5 starts from the same one, seed 6 from another
    for seed, same in ((5, True), (6, False)):
        spy_loops.clear()
        code, out, err = cli("finetune", "--task", "mrpc", "--seed", seed, "--out", tmp_path / f"ft{seed}",
                             *tiny_args)
        assert code == 0, err
        start = spy_loops[0]["start"]
        assert torch.equal(start["classifier.weight"], head["classifier.weight"]) == same
        assert all(torch.equal(start[n], pre[n]) for n in PRUNABLE)


def _random_draw(shapes: dict[str, tuple], sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """RANDOM-LT's l_s drawn here: the stream seeded with sha256("{seed}:random-policy")'s first 8 bytes
    (little-endian, 63 bits), one uniform per weight in sorted name order, 0 where below the sparsity."""
    stream = int.from_bytes(hashlib.sha256(f"{seed}:random-policy".encode()).digest()[:8], "little") & (2**63 - 1)
    g = torch.Generator().manual_seed(stream)
    return {n: (torch.rand(shapes[n], generator=g) >= sparsity).float() for n in sorted(shapes)}


def test_random_policy_regularizer_is_the_seeded_draw_and_changes_the_ticket(cli, tiny_args, tiny_model, tmp_path,
                                                                              spy_loops):
    """--policy random: every round's L1 term has tau = 1e-4 (the default) and the seed's Bernoulli l_s with
    P(0) = the target sparsity in each layer; the ticket differs from base's of the same seed."""
    code, out, err = cli("search", "--task", "mrpc", "--seed", "3", "--policy", "random", "--out", tmp_path,
                         *tiny_args)
    assert code == 0, err
    random_mask = _keep(out.strip())
    assert len(spy_loops) == 3
    shapes = {n: tuple(t.shape) for n, t in _pretrained(tiny_model).items() if n in PRUNABLE}
    want = _random_draw(shapes, 0.3, 3)
    for s in spy_loops:
        l1 = s["l1"]
        assert l1.tau == 1e-4 and set(l1.coef) == set(PRUNABLE)
        for n in PRUNABLE:
            assert torch.equal(l1.coef[n].float(), want[n]), n
    for n, c in want.items():  # P(0) per layer: within 5 sigma of 0.3 (256 to 512 weights a layer)
        zero = float((c == 0).float().mean())
        assert abs(zero - 0.3) < 5 * np.sqrt(0.3 * 0.7 / c.numel()), (n, zero)
    assert not torch.equal(want[PRUNABLE[0]], _random_draw(shapes, 0.3, 4)[PRUNABLE[0]])  # seed-dependent
    code, out, err = cli("search", "--task", "mrpc", "--seed", "3", "--out", tmp_path, *tiny_args)
    assert code == 0, err
    base_mask = _keep(out.strip())
    differ = sum(int((random_mask[n] != base_mask[n]).sum()) for n in PRUNABLE)
    assert differ > 0
    # the regularizer pushes the weights it penalises (l_s = 1) out: of the weights one ticket prunes and the
    # other keeps, those only random prunes are penalised more often than those only base prunes
    only_random = np.concatenate([want[n].numpy()[~random_mask[n] & base_mask[n]] for n in PRUNABLE])
    only_base = np.concatenate([want[n].numpy()[random_mask[n] & ~base_mask[n]] for n in PRUNABLE])
    assert only_random.mean() > only_base.mean()


def test_active_policy_regularizer_is_the_mean_of_the_prior_masks(cli, tiny_args, tmp_path, spy_loops):
    """--policy active with two priors: l_s is the mean of their keep-masks (1 where both kept a weight, 0.5 where
    one did, 0 where neither), unpacked here from the prior files; the ticket differs from base's of its seed."""
    priors = []
    for seed in (1, 2):
        code, out, err = cli("search", "--task", "mrpc", "--seed", seed, "--out", tmp_path, *tiny_args)
        assert code == 0, err
        priors.append(out.strip())
    code, base, err = cli("search", "--task", "mrpc", "--seed", "3", "--out", tmp_path, *tiny_args)
    spy_loops.clear()
    code, out, err = cli("search", "--task", "mrpc", "--seed", "3", "--policy", "active", "--prior", priors[0],
                         "--prior", priors[1], "--out", tmp_path, *tiny_args)
    assert code == 0, err
    a, b = _keep(priors[0]), _keep(priors[1])
    assert len(spy_loops) == 3
    for s in spy_loops:
        assert s["l1"].tau == 1e-4 and set(s["l1"].coef) == set(PRUNABLE)
        for n in PRUNABLE:
            want = (a[n].astype(np.float64) + b[n].astype(np.float64)) / 2
            assert np.array_equal(s["l1"].coef[n].double().numpy(), want), n
    assert sum(int((a[n] != b[n]).sum()) for n in PRUNABLE) > 0  # the priors differ: some coefficients are 0.5
    active, base_mask = _keep(out.strip()), _keep(base.strip())
    assert sum(int((active[n] != base_mask[n]).sum()) for n in PRUNABLE) > 0


# ---------------------------------------------------------------------------------------------- seed order


def _members(tmp_path, seeds, n_ex=60):
    """Dense and random logits for these seeds; a seed's two members share a seed effect (so pairing matters)."""
    from test_analysis import logits_file

    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, n_ex)
    sign = 2 * labels - 1
    files, margins = {}, {}
    for s in seeds:
        effect = rng.normal(0, 1.0, n_ex)
        for policy, signal in (("dense", 0.4), ("random", 0.6)):
            m = sign * signal + effect + rng.normal(0, 0.7, n_ex)
            margins[policy, s] = m
            files[policy, s] = logits_file(tmp_path / f"{policy}-s{s}.safetensors", np.stack([-m / 2, m / 2], -1),
                                           labels, policy=policy, seed=str(s))
    return files, margins, labels


def test_stats_groups_follow_seed_order_whatever_the_argument_order(cli, tmp_path):
    """Seeds 1, 2, 3, 10 given in a shell glob's order (s1, s10, s2, s3) and in another scrambled order give the
    sorted order's output byte for byte; --groups 2 puts seeds {1, 2} and {3, 10} together."""

    seeds = [1, 2, 3, 10]
    files, margins, labels = _members(tmp_path, seeds)
    args = ["--groups", "2", "--size", "2", "--format", "json"]
    order = {"sorted": [files[p, s] for p in ("dense", "random") for s in seeds],
             "glob": [files[p, s] for p in ("dense", "random") for s in (1, 10, 2, 3)],
             "mixed": [files["random", 10], files["dense", 3], files["random", 1], files["dense", 10],
                       files["random", 3], files["dense", 1], files["random", 2], files["dense", 2]]}
    outs = {}
    for name, paths in order.items():
        code, out, err = cli("stats", *paths, *args)
        assert code == 0, err
        outs[name] = out
    assert outs["glob"] == outs["sorted"] and outs["mixed"] == outs["sorted"]
    rows = {r["group"]: r for r in map(json.loads, outs["sorted"].splitlines())}

    def pair_acc(policy, a, b):  # a 2-member ensemble of probabilities: class 1 where the mean p1 > 0.5
        p = (1 / (1 + np.exp(-margins[policy, a])) + 1 / (1 + np.exp(-margins[policy, b]))) / 2
        return np.mean((p > 0.5) == (labels == 1))

    groups = [(1, 2), (3, 10)]
    for policy in ("dense", "random"):
        assert rows[policy]["ensemble_mean"] == pytest.approx(np.mean([pair_acc(policy, *g) for g in groups]))
        assert rows[policy]["combinations"] == 2
    d = {g: pair_acc("random", *g) - pair_acc("dense", *g) for g in groups}
    assert rows["random"]["vs_ref"] == pytest.approx(np.mean(list(d.values())))
    # k = the group size: every ensemble of a seed's group holds that seed, so leaving it out leaves the group no
    # ensemble; the leave-one-seed-out interval is undefined (blank), not one computed from the other group alone
    assert rows["random"]["diff_low"] is None and rows["random"]["diff_high"] is None
    assert rows["random"]["test"] == "paired permutation (seeds)"


def test_ensemble_groups_follow_seed_order_whatever_the_argument_order(cli, tmp_path):
    """ensemble --groups 2 over seeds 1, 2, 3, 10: groups {1, 2} and {3, 10} in any argument order (as stats)."""
    files, margins, labels = _members(tmp_path, [1, 2, 3, 10])
    glob = [files["random", s] for s in (1, 10, 2, 3)]
    code, out, err = cli("ensemble", *glob, "--groups", "2", "--size", "2", "--format", "json")
    assert code == 0, err
    row = json.loads(out.splitlines()[-1])

    def pair_acc(a, b):
        p = (1 / (1 + np.exp(-margins["random", a])) + 1 / (1 + np.exp(-margins["random", b]))) / 2
        return np.mean((p > 0.5) == (labels == 1))

    assert row["mean"] == pytest.approx(np.mean([pair_acc(1, 2), pair_acc(3, 10)]))
    sorted_ = [files["random", s] for s in (1, 2, 3, 10)]
    code, out2, err = cli("ensemble", *sorted_, "--groups", "2", "--size", "2", "--format", "json")
    assert out2 == out
