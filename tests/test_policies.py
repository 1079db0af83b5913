"""The pruning-policy registry (issue #23): a new policy is one object and one ``register`` call; the CLI's
``--policy`` accepts it, completes it and names its masks by it, with no other file touched."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from ticketctl.masks import policies


def uniform_coefficients(shapes, sparsity, seed, prior_keeps=()):
    """l_s = 1 on every prunable weight: plain L1 towards zero, the same for every seed."""
    import torch

    return {n: torch.ones(shape) for n, shape in shapes.items()}


def flipped_scores(head, ffn, strength, seed, priors=()):
    """Importance turned upside down: the 'winning' ticket keeps the least important units."""
    return -head, -ffn


@pytest.fixture()
def example_policies():
    imp = policies.register(policies.ImpPolicy("uniform", "plain L1 on every weight", uniform_coefficients))
    structured = policies.register(policies.StructuredPolicy("flipped", "least important first", flipped_scores,
                                                             diversity=1.0))
    yield imp, structured
    policies.unregister(policies.IMP, "uniform")
    policies.unregister(policies.STRUCTURED, "flipped")


def _keep(path):
    from ticketctl.store.artifacts import read_artifact

    keep = read_artifact(path, "mask").mask().keep
    return np.concatenate([keep[n].ravel() for n in sorted(keep)])


def test_an_example_imp_policy_runs_through_the_cli(example_policies, cli, tiny_args, tmp_path):
    from ticketctl.cli_options import policy_choices

    assert "uniform" in policy_choices("un") and policies.names(policies.IMP) == ("base", "active", "random",
                                                                                   "uniform")
    args = ["--task", "mrpc", "--seed", "1", "--sparsity", "0.2", "--out", tmp_path, *tiny_args]
    code, out, err = cli("search", "--policy", "uniform", "--l1", "0.5", *args)
    assert code == 0, err
    assert out.strip().rsplit("/", 1)[-1].startswith("mrpc-mask-uniform-20pct-s1-")
    code, base, err = cli("search", *args)
    assert code == 0, err
    # tau 0.5 on every weight moves the magnitudes IMP prunes by: another ticket than base's with the same seed
    assert not np.array_equal(_keep(out.strip()), _keep(base.strip()))
    code, _, err = cli("search", "--policy", "uniform", "--prior", base.strip(), *args)
    assert code == 2 and "--prior is only used by --policy active" in err  # the checks come with the class


def test_an_example_structured_policy_runs_and_is_removed(example_policies, cli, tiny_args, tmp_path):
    args = ["--method", "structured", "--task", "rte", "--seed", "1", "--sparsity", "0.5", "--out", tmp_path,
            *tiny_args]
    code, flipped, err = cli("search", "--policy", "flipped", *args)
    assert code == 0, err
    assert flipped.strip().rsplit("/", 1)[-1].startswith("rte-mask-winning-flipped-50pct-s1-")
    code, base, err = cli("search", *args)
    heads = [load_file(p.strip())["heads_keep"] for p in (flipped, base)]
    # upside-down scores keep other heads than the plain winning ticket of the same scores
    assert code == 0 and not np.array_equal(*heads)
    policies.unregister(policies.STRUCTURED, "flipped")
    code, _, err = cli("search", "--policy", "flipped", *args)
    assert code == 2 and "--policy must be one of base, perturbed, active" in err
    policies.register(example_policies[1])  # the fixture removes it again


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="registered already"):
        policies.register(policies.ImpPolicy("random", "again", policies.random_coefficients))


def test_a_policy_without_a_regularizer_needs_no_l1_and_refuses_one():
    from ticketctl.masks import policies

    plain = policies.ImpPolicy("plain", "IMP without a regularizer")
    assert plain.resolve_l1(None) == 0.0
    plain.check(plain.resolve_l1(None), [])  # no --l1 given: fine
    with pytest.raises(policies.UsageError, match="--policy plain has no regularizer; use --policy active or random"):
        plain.check(plain.resolve_l1(1e-4), [])
    assert policies.get("imp", "random").resolve_l1(None) == policies.DEFAULT_L1
