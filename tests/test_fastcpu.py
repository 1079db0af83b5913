"""The CPU fast path of the training step (ticketctl.fastcpu): dropout with torch's mathematics, seeded, the
attention computation and padding mask unchanged, and nothing left behind."""

import pytest
import torch
from torch import nn

from ticketctl.model import loading
from ticketctl.train import fastcpu


def test_mask_drops_at_the_quantised_rate_and_preserves_the_mean():
    keep = fastcpu.Stream(1).keep(torch.Size([1000, 1000]), 0.1, torch.float32)
    q = round(0.1 * 65536) / 65536
    scale = 1 / (1 - q)
    values = torch.unique(keep).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale, rel=1e-7)
    dropped = float((keep == 0).float().mean())
    sigma = (q * (1 - q) / keep.numel()) ** 0.5
    assert abs(dropped - q) < 5 * sigma
    assert abs(float(keep.double().mean()) - 1) < 5 * sigma * scale
    assert abs(q - 0.1) <= 2**-17


def test_masks_are_seeded_and_in_the_activation_dtype():
    a = fastcpu.Stream(7).keep(torch.Size([64, 33]), 0.3, torch.bfloat16)
    b = fastcpu.Stream(7).keep(torch.Size([64, 33]), 0.3, torch.bfloat16)
    c = fastcpu.Stream(8).keep(torch.Size([64, 33]), 0.3, torch.bfloat16)
    assert a.dtype == torch.bfloat16 and a.shape == (64, 33)
    assert torch.equal(a, b) and not torch.equal(a, c)
    s = fastcpu.Stream(7)
    assert not torch.equal(s.keep(torch.Size([64, 33]), 0.3, torch.float32),
                           s.keep(torch.Size([64, 33]), 0.3, torch.float32))  # the stream moves on


def test_kept_values_equal_torchs_in_each_dtype():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.ones(20000, dtype=dtype)
        ours = fastcpu.Stream(5).apply(x, 0.1)
        theirs = torch.nn.functional.dropout(x, 0.1, True)
        assert ours.dtype == dtype
        torch.testing.assert_close(ours[ours > 0].unique(), theirs[theirs > 0].unique(), rtol=1e-4, atol=0)


def test_dropout_backward_uses_the_forward_mask():
    x = (torch.rand(50, 40) + 0.5).requires_grad_()
    y = fastcpu.Dropout(0.25, fastcpu.Stream(3)).train()(x)
    y.sum().backward()
    assert torch.allclose(x.grad * x.detach(), y.detach())
    sigma = (0.25 * 0.75 / y.numel()) ** 0.5  # p = 0.25 is exact in 1/65536 steps
    assert abs(float((y == 0).float().mean()) - 0.25) < 5 * sigma
    drop = fastcpu.Dropout(0.25, fastcpu.Stream(3)).eval()
    assert torch.equal(drop(x), x)


def _model(tiny_model, dropout):
    torch.manual_seed(0)
    return loading.load_model(tiny_model, 2, dropout, "eager")


def _batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (4, 9), generator=g)
    att = torch.ones_like(ids)
    ids[2, 6:], att[2, 6:] = 0, 0  # padding
    ids[0, 3] = ids[1, 3]  # a repeated token: gradients must add up
    return {"input_ids": ids, "attention_mask": att, "token_type_ids": torch.zeros_like(ids)}


def _grads(model, batch, passes=1):
    for _ in range(passes):
        model(**batch).logits.square().sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_without_dropout_training_is_torchs(tiny_model):
    """With dropout off, the fast path's model (its attention function, its padding mask) computes exactly what
    transformers' eager model computes, gradients included."""
    batch = _batch()
    model = _model(tiny_model, 0.0).train()
    stock = _grads(model, batch)
    model.zero_grad(set_to_none=True)
    with fastcpu.training_fastpath(model, 1, torch.device("cpu")):
        fast = _grads(model, batch)
    assert stock.keys() == fast.keys()
    for name in stock:
        assert torch.equal(stock[name], fast[name]), name


def test_dropout_is_seeded_covers_attention_and_eval_is_untouched(tiny_model):
    batch = _batch()
    model = _model(tiny_model, 0.1)
    model.eval()
    plain = model(**batch).logits

    def train_logits(seed):
        with fastcpu.training_fastpath(model, seed, torch.device("cpu")):
            model.train()
            out = model(**batch).logits
            model.eval()
            assert torch.equal(model(**batch).logits, plain)
        return out

    a, b, c = train_logits(1), train_logits(1), train_logits(2)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.allclose(a, plain)
    model.config.hidden_dropout_prob = 0.0
    for m in model.modules():  # only attention-probability dropout left
        if isinstance(m, nn.Dropout) and m is not model.bert.encoder.layer[0].attention.self.dropout:
            m.p = 0.0
    assert not torch.equal(train_logits(1), train_logits(2))


def test_everything_is_restored_and_other_devices_are_left_alone(tiny_model):
    model = _model(tiny_model, 0.1)
    before = {n: type(m) for n, m in model.named_modules()}
    keys = list(model.state_dict())
    with fastcpu.training_fastpath(model, 1, torch.device("cpu")) as stream:
        assert isinstance(stream, fastcpu.Stream)
        assert model.config._attn_implementation == fastcpu.ATTENTION
        assert any(isinstance(m, fastcpu.Dropout) for m in model.modules())
        assert list(model.state_dict()) == keys
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert model.config._attn_implementation == "eager"
    with fastcpu.training_fastpath(model, 1, torch.device("cuda")) as stream:  # never touches the device
        assert stream is None
        assert {n: type(m) for n, m in model.named_modules()} == before


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "electra", "albert"])
def test_other_architectures_train_as_with_torch(arch):
    """--model takes any Hugging Face encoder: with dropout off, the fast path changes nothing in what they compute
    (attention function, padding mask), and it restores them."""
    from transformers import (AlbertConfig, AutoModelForSequenceClassification, BertConfig, DistilBertConfig,
                              ElectraConfig, RobertaConfig)

    small = dict(vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    config = {"bert": lambda: BertConfig(**small),
              "roberta": lambda: RobertaConfig(**small, pad_token_id=1),
              "distilbert": lambda: DistilBertConfig(vocab_size=60, dim=16, n_layers=2, n_heads=2, hidden_dim=32),
              "electra": lambda: ElectraConfig(**small, embedding_size=16),
              "albert": lambda: AlbertConfig(**small, embedding_size=16)}[arch]()
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                "classifier_dropout_prob", "seq_classif_dropout"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").train()
    ids = torch.randint(3, 60, (3, 7), generator=torch.Generator().manual_seed(1))
    att = torch.ones_like(ids)
    att[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": att}
    stock = _grads(model, batch)
    model.zero_grad(set_to_none=True)
    with fastcpu.training_fastpath(model, 1, torch.device("cpu")):
        assert model.config._attn_implementation == fastcpu.ATTENTION
        fast = _grads(model, batch)
    assert model.config._attn_implementation == "eager"
    assert stock.keys() == fast.keys()
    for name in stock:
        assert torch.equal(stock[name], fast[name]), name
