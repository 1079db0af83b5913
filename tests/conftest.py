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


def build_tiny_bert(folder: Path, seed: int = 0, hidden: int = 16, layers: int = 2, heads: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(folder))
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=128)
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
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
