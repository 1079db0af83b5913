"""Fixtures: a tiny BERT built in code (saved like a hub folder) and tiny GLUE data in GLUE's TSV layout."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models run fastest on one thread, and tests that start several processes must not oversubscribe the cores
# (OpenMP threads spinning against each other made a 1 s tiny search take 100 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# --precision auto resolves the same on every CPU (issue #30): the suite counts the CPU as having no AMX (fp32), as
# on the AMD EPYC it was first written on, unless the variable is set already; the tests about precision take the
# ``amx`` fixture and run both ways on any machine.
os.environ.setdefault("TICKETCTL_CPU_AMX", "0")

MRPC_ROWS = [
    ("1", "The cat sat on the mat.", "A cat was sitting on the mat."),
    ("0", 'He said "no" to the offer.', "The offer was accepted at once."),
    ("1", "Stocks rose sharply on Monday.", "Shares climbed steeply on Monday."),
    ("0", "The dog barked all night.", "It rained in the morning."),
    ("1", "She bought a new car.", "A new car was bought by her."),
    ("0", "The meeting was cancelled.", 'Everyone said "great meeting".'),
    ("1", "Prices fell by ten percent.", "Prices dropped ten percent."),
    ("0", "He plays the piano.", "The river is long."),
    ("1", "The company hired new staff.", "New staff were hired by the company."),
    ("0", "Birds fly south in winter.", "The shop opens at nine."),
    ("1", "They won the game.", "The game was won by them."),
    ("0", "The book is red.", "Coffee is hot."),
]


def _write_mrpc(path: Path, rows, trailing_newline=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i, (label, a, b) in enumerate(rows):
        lines.append(f"{label}\t{100 + i}\t{200 + i}\t{a}\t{b}")
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    path.write_text(text, encoding="utf-8")


def _write_stsb(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"]
    for i, (label, a, b) in enumerate(rows):
        lines.append(f"{i}\tmain-news\tx\t2012\t{i:04d}\tnone\tnone\t{a}\t{b}\t{float(label) * 4 + 0.5:.3f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_rte(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i, (label, a, b) in enumerate(rows):
        lines.append(f"{i}\t{a}\t{b}\t{'entailment' if label == '1' else 'not_entailment'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_glue(root: Path) -> Path:
    """Tiny MRPC, STS-B and RTE train/dev files in GLUE's layout under ``root``."""
    _write_mrpc(root / "MRPC" / "train.tsv", MRPC_ROWS * 2)
    _write_mrpc(root / "MRPC" / "dev.tsv", MRPC_ROWS[:8], trailing_newline=False)
    _write_stsb(root / "STS-B" / "train.tsv", MRPC_ROWS * 2)
    _write_stsb(root / "STS-B" / "dev.tsv", MRPC_ROWS[:8])
    _write_rte(root / "RTE" / "train.tsv", MRPC_ROWS * 2)
    _write_rte(root / "RTE" / "dev.tsv", MRPC_ROWS[:8])
    return root


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return write_glue(tmp_path_factory.mktemp("glue"))


def _vocab() -> list[str]:
    words = set()
    for _, a, b in MRPC_ROWS:
        words.update(re.findall(r"\w+|[^\w\s]", (a + " " + b).lower()))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)


def _bert_weights(vocab: int, hidden: int, layers: int, intermediate: int, positions: int):
    """(name, shape) of every tensor a ``BertModel`` checkpoint holds, in the names ``save_pretrained`` writes."""
    yield "embeddings.word_embeddings.weight", (vocab, hidden)
    yield "embeddings.position_embeddings.weight", (positions, hidden)
    yield "embeddings.token_type_embeddings.weight", (2, hidden)
    yield "embeddings.LayerNorm.weight", (hidden,)
    yield "embeddings.LayerNorm.bias", (hidden,)
    for i in range(layers):
        pre = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            yield pre + name + ".weight", (hidden, hidden)
            yield pre + name + ".bias", (hidden,)
        yield pre + "attention.output.LayerNorm.weight", (hidden,)
        yield pre + "attention.output.LayerNorm.bias", (hidden,)
        yield pre + "intermediate.dense.weight", (intermediate, hidden)
        yield pre + "intermediate.dense.bias", (intermediate,)
        yield pre + "output.dense.weight", (hidden, intermediate)
        yield pre + "output.dense.bias", (hidden,)
        yield pre + "output.LayerNorm.weight", (hidden,)
        yield pre + "output.LayerNorm.bias", (hidden,)
    yield "pooler.dense.weight", (hidden, hidden)
    yield "pooler.dense.bias", (hidden,)


def write_safetensors(path: Path, tensors: dict) -> None:
    """A safetensors file written byte by byte from float32 numpy arrays (the format: an 8-byte little-endian header
    length, a JSON header with sorted keys padded with spaces to 8 bytes, the raw little-endian data in key order),
    so its bytes do not depend on the safetensors release."""
    import json
    import struct

    import numpy as np

    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


def build_tiny_bert(folder: Path, seed: int = 0, hidden: int = 16, layers: int = 2, heads: int = 2) -> Path:
    """A tiny BERT as a hub folder, written from fixed bytes (issue #30): config and tokenizer files by hand, weights
    drawn with numpy's legacy ``RandomState`` (its stream is frozen by numpy's policy) and written by
    :func:`write_safetensors`. No transformers, tokenizers, torch or safetensors release can change these bytes, so
    the model fingerprint, and every name pinned from it, moves only when ticketctl's own rules do.

    Weights as BERT initialises them: normal(0, 0.02) matrices and embeddings, zero biases, LayerNorm (1, 0)."""
    import json

    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "hidden_size": hidden, "initializer_range": 0.02,
              "intermediate_size": hidden * 2, "layer_norm_eps": 1e-12, "max_position_embeddings": 128,
              "model_type": "bert", "num_attention_heads": heads, "num_hidden_layers": layers, "pad_token_id": 0,
              "type_vocab_size": 2, "vocab_size": len(vocab)}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer = {"cls_token": "[CLS]", "do_lower_case": True, "mask_token": "[MASK]", "model_max_length": 128,
                 "pad_token": "[PAD]", "sep_token": "[SEP]", "tokenizer_class": "BertTokenizer", "unk_token": "[UNK]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer, indent=2, sort_keys=True) + "\n")
    rng = np.random.RandomState(seed)
    tensors = {}
    for name, shape in _bert_weights(len(vocab), hidden, layers, hidden * 2, 128):
        if name.endswith("LayerNorm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        elif name.endswith("bias"):
            tensors[name] = np.zeros(shape, np.float32)
        else:
            tensors[name] = rng.normal(0.0, 0.02, shape).astype(np.float32)
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def cli(capsys, monkeypatch):
    """Run the real CLI in-process: returns (exit code, stdout, stderr)."""
    from ticketctl.cli import main

    def run(*args: str, stdin: str | None = None):
        if stdin is not None:
            import io

            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture()
def tiny_args(tiny_model, glue_dir):
    """Common options that make a finetune or search take a second on the tiny model."""
    return ["--model", str(tiny_model), "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8",
            "--quiet", "--device", "cpu"]


@pytest.fixture(params=["no-amx", "amx"])
def amx(request, monkeypatch) -> str:
    """Runs a test twice, with this CPU counted as lacking and as having AMX (``TICKETCTL_CPU_AMX``, read where
    ``--precision auto`` is resolved, so subprocesses see it too); the value is the precision ``auto`` gives on the
    CPU then, ``fp32`` or ``bf16``."""
    monkeypatch.setenv("TICKETCTL_CPU_AMX", "1" if request.param == "amx" else "0")
    return "bf16" if request.param == "amx" else "fp32"


# How close a model's outputs computed in fp32 must be to the same model's outputs computed in this precision (the
# finetune evaluates in its own precision, predict in fp32). fp32: kernels differ in summation order only. bf16: the
# O(1) hidden states after LayerNorm carry 8 significant bits, and the tiny models' classifiers sum 16 of them with
# O(0.02) weights, so a logit moves by about 16 * 0.02 * 2**-9 = 6e-4 at worst; measured at most 6.5e-5 over the six
# model families on an AMX Xeon (2026-12-06); 2e-4 keeps a 3x margin.
ATOL = {"fp32": 1e-5, "bf16": 2e-4}


def logits_artifact(path, outputs, split, seed, labels=None, task="mrpc", data="d1", **meta):
    """A logits artifact of ``outputs`` (n, C) for the member of ``seed`` on ``split``: what finetune writes,
    with ``meta`` overriding its metadata; labels only when given. Returns its path."""
    import numpy as np

    from ticketctl.store.artifacts import write_artifact

    tensors = {"outputs": np.asarray(outputs, dtype=np.float32), "ids": np.arange(len(outputs))}
    if labels is not None:
        tensors["labels"] = np.asarray(labels)
    base = {"task": task, "split": split, "data_fingerprint": data, "model_fingerprint": "m1", "seed": str(seed),
            "policy": "dense", "config": {"task": task, "seed": seed, "lr": 1e-4}, "config_hash": f"{split}{seed}"}
    return str(write_artifact(path, "logits", tensors, {**base, **meta}))
