"""Real-world inputs (#22): every encoder family README names, users' files as they wrote them, and no silent change
to their data. Each test pins the right value, computed independently where there is one."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ATOL, MRPC_ROWS

# ---------------------------------------------------------------------------------------------- model families

FAMILIES = ("bert", "roberta", "distilbert", "electra", "albert", "deberta-v2")


def build_family(name: str, folder: Path, tiny: Path) -> Path:
    """A tiny random encoder of one family, with the tiny BERT's WordPiece tokenizer (which gives the second
    sentence of a pair token type 1, as some public RoBERTa checkpoints' tokenizers do)."""
    import torch
    import transformers as T

    folder.mkdir(parents=True, exist_ok=True)
    for f in tiny.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, folder / f.name)
    vocab = len((tiny / "vocab.txt").read_text().split())
    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=vocab)
    torch.manual_seed(0)
    if name == "bert":
        model = T.BertModel(T.BertConfig(hidden_size=16, max_position_embeddings=128, **small))
    elif name == "roberta":
        model = T.RobertaModel(T.RobertaConfig(hidden_size=16, max_position_embeddings=130, type_vocab_size=1,
                                               pad_token_id=0, **small), add_pooling_layer=False)
    elif name == "distilbert":
        model = T.DistilBertModel(T.DistilBertConfig(dim=16, hidden_dim=32, n_layers=2, n_heads=2, vocab_size=vocab,
                                                     max_position_embeddings=128, pad_token_id=0))
    elif name == "electra":  # a factorised embedding (8 -> 16), as ELECTRA-small
        model = T.ElectraModel(T.ElectraConfig(embedding_size=8, hidden_size=16, max_position_embeddings=128,
                                               **small))
    elif name == "albert":
        model = T.AlbertModel(T.AlbertConfig(embedding_size=8, hidden_size=16, max_position_embeddings=128,
                                             pad_token_id=0, **small))
    else:  # DeBERTa-v3's settings: relative attention over shared projections, no token types
        model = T.DebertaV2Model(T.DebertaV2Config(
            hidden_size=16, max_position_embeddings=128, relative_attention=True, position_buckets=16,
            pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm", type_vocab_size=0,
            position_biased_input=False, pad_token_id=0, **small))
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def family_models(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("families")
    return {name: build_family(name, root / name, tiny_model) for name in FAMILIES}


def _params_of(folder: Path, num_labels: int) -> int:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(folder), num_labels=num_labels)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_finetunes_searches_predicts(family, family_models, glue_dir, cli, tmp_path, amx):
    """finetune (a sentence-pair task: token types 1 from the tokenizer), IMP search, structured search (or one
    line saying why not), a structured ticket trained physically pruned, predict, and a cost record whose parameter
    count is the model's own."""
    from safetensors import safe_open

    model = family_models[family]
    out = tmp_path / "runs"
    common = ["--model", str(model), "--data-dir", str(glue_dir), "--epochs", "1", "--batch-size", "8",
              "--device", "cpu", "--out", str(out), "--seed", "1"]
    code, stdout, err = cli("finetune", "--task", "mrpc", *common, "--save-model", str(tmp_path / "member"))
    assert code == 0, err
    logits = stdout.split()[0]
    with safe_open(logits, "np") as f:
        cost = json.loads(f.metadata()["cost"])
    assert cost["params"] == _params_of(model, 2)  # the real count, whatever the family's other parts
    assert cost["dense_params"] == cost["params"]

    code, stdout, err = cli("search", "--task", "mrpc", "--policy", "base", "--sparsity", "0.1", *common)
    assert code == 0, err
    assert "mask" in Path(stdout.split()[0]).name

    code, stdout, err = cli("search", "--method", "structured", "--task", "mrpc", "--sparsity", "0.5",
                            "--ticket", "winning", *common)
    if family == "albert":
        assert code == 3
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err
        assert lines[-1].startswith("ticketctl: error: structured pruning cannot prune AlbertForSequenceClassification:")
        assert "shares one set of layer weights" in lines[-1]
    else:
        assert code == 0, err
        mask = stdout.split()[0]
        code, stdout, err = cli("finetune", "--task", "mrpc", *common, "--mask", mask)
        assert code == 0, err
        with safe_open(stdout.split()[0], "np") as f:
            ticket_cost = json.loads(f.metadata()["cost"])
        assert ticket_cost["dense_params"] == cost["params"]
        assert ticket_cost["params"] < cost["params"]

    code, stdout, err = cli("predict", str(glue_dir / "MRPC" / "dev.tsv"), "-m", str(tmp_path / "member"),
                            "--out", str(tmp_path / "p"), "--device", "cpu")
    assert code == 0, err
    with safe_open(stdout.split()[0], "np") as f:
        predicted = f.get_tensor("outputs")
    with safe_open(logits, "np") as f:
        trained = f.get_tensor("outputs")
        precision = json.loads(f.metadata()["config"])["precision"]
    assert precision == amx  # --precision auto, as TICKETCTL_CPU_AMX makes the CPU
    # the saved member is the trained one: predict (fp32) within the tolerance of the finetune's own precision
    np.testing.assert_allclose(predicted, trained, atol=ATOL[precision], rtol=0)


def test_token_types_dropped_where_the_model_has_one(family_models):
    """RoBERTa (one token type) and DistilBERT (none) get no token_type_ids; BERT keeps them."""
    from transformers import AutoModelForSequenceClassification

    from ticketctl.model.loading import fit_tokenizer, load_tokenizer

    for family, kept in (("bert", True), ("roberta", False), ("distilbert", False), ("deberta-v2", False)):
        model = AutoModelForSequenceClassification.from_pretrained(str(family_models[family]), num_labels=2)
        tok = load_tokenizer(family_models[family])
        assert "token_type_ids" in tok("a b", "c d")  # the BERT tokenizer emits them
        fit_tokenizer(tok, model)
        assert ("token_type_ids" in tok("a b", "c d")) is kept, family


# ---------------------------------------------------------------------------------------------- model folders


@pytest.fixture(scope="module")
def headed_model(tmp_path_factory, tiny_model):
    """The tiny BERT saved as a 2-class classifier: a --model folder that already holds a task head."""
    import torch
    from transformers import BertForSequenceClassification

    folder = tmp_path_factory.mktemp("headed")
    for f in tiny_model.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, folder / f.name)
    torch.manual_seed(123)
    model = BertForSequenceClassification.from_pretrained(str(tiny_model), num_labels=2)
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
        model.classifier.bias.fill_(-0.25)
    model.save_pretrained(str(folder))
    return folder


def test_a_head_in_the_model_folder_is_drawn_from_the_seed(headed_model, glue_dir, cli, tmp_path):
    from safetensors.numpy import load_file

    common = ["--task", "mrpc", "--model", str(headed_model), "--data-dir", str(glue_dir), "--epochs", "1",
              "--batch-size", "8", "--device", "cpu", "--lr", "1e-12", "--dropout", "0", "--out", str(tmp_path)]
    outputs = []
    for seed in (1, 2):
        code, stdout, err = cli("finetune", "--seed", str(seed), *common)
        assert code == 0, err
        assert "holds a task head of its own; it is dropped and each seed draws its own" in err
        outputs.append(load_file(stdout.split()[0])["outputs"])
    assert not np.allclose(outputs[0], outputs[1])  # each seed its own head
    # the checkpoint's head (weights 0.5, bias -0.25) gives equal logits in both classes: not what was used
    assert not np.allclose(outputs[0][:, 0], outputs[0][:, 1])
    # a task with another number of outputs (regression) works from the same folder
    code, _, err = cli("finetune", "--seed", "1", *common[:1], "stsb", *common[2:])
    assert code == 0, err


def test_identity_of_a_headed_folder_differs(headed_model, tiny_model, glue_dir):
    """Artifacts made from a folder with a head (redrawn) are named apart from those made before the fix."""
    from ticketctl.hparams import DataOptions, TrainConfig
    from ticketctl.log import Log
    from ticketctl.stages.context import Context

    log = Log(quiet=True)
    ctx = Context.create("mrpc", str(headed_model), DataOptions(data_dir=str(glue_dir)), log)
    assert ctx.model_head
    identity = ctx.identity(TrainConfig(), 1).as_dict()
    assert identity["model_head"] == "redrawn"
    plain = Context.create("mrpc", str(tiny_model), DataOptions(data_dir=str(glue_dir)), log)
    assert "model_head" not in plain.identity(TrainConfig(), 1).fields


def test_pruned_heads_checkpoint_is_one_line_naming_weight_and_shapes(tiny_model, glue_dir, cli, tmp_path):
    """A transformers-4 folder after prune_heads({0: [1]}): layer 0's query has 8 of 16 rows."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "pruned"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["pruned_heads"] = {"0": [1]}
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(str(folder / "model.safetensors"))
    p = "encoder.layer.0.attention."
    for n in ("query", "key", "value"):
        state[p + f"self.{n}.weight"] = state[p + f"self.{n}.weight"][:8].contiguous()
        state[p + f"self.{n}.bias"] = state[p + f"self.{n}.bias"][:8].contiguous()
    state[p + "output.dense.weight"] = state[p + "output.dense.weight"][:, :8].contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    code, _, err = cli("finetune", "--task", "mrpc", "--model", str(folder), "--data-dir", str(glue_dir),
                       "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "o"))
    assert code == 3
    assert err.strip().splitlines() == [
        f"ticketctl: error: {folder}: bert.encoder.layer.0.attention.self.query.weight has shape (8, 16), the model "
        f"needs (16, 16); config.json lists pruned_heads, which transformers 5 no longer supports (save the model "
        f"unpruned, or as a ticketctl structured ticket)"]


# ---------------------------------------------------------------------------------------------- users' data


def _pairs(n: int, labels) -> list[str]:
    plain = [(a, b) for _, a, b in MRPC_ROWS if '"' not in a + b]
    return [f"{a},{b},{labels[i % len(labels)]}" for i, (a, b) in enumerate((plain * n)[:n])]


def test_label_whitespace_is_stripped_with_a_notice(tmp_path):
    from ticketctl.data import custom

    notes = []
    rows = [{"text": f"t{i}", "label": v} for i, v in enumerate(["negative", "positive", "positive ", "negative",
                                                                  " positive"])]
    task = custom.infer_task("t", ["text", "label"], rows, None, "label", None, "train.csv", warn=notes.append)
    assert task.labels == ("negative", "positive")
    assert task.metrics == ("accuracy", "f1")
    assert notes == ["train.csv: labels ' positive', 'positive ' with surrounding whitespace in rows 3, 5: read as "
                     "'positive'"]
    split = custom.split_of(task, ["text", "label"], rows, "train.csv", "train", warn=notes.append)
    assert split.labels.tolist() == [0, 1, 1, 0, 1]


def test_labels_are_kept_as_written():
    from ticketctl.data import custom
    from ticketctl.errors import InputError

    def task(values):
        rows = [{"text": f"t{i}", "label": v} for i, v in enumerate(values)]
        return custom.infer_task("t", ["text", "label"], rows, None, "label", None, "f", warn=lambda m: None)

    assert task(["007", "010", "007"]).labels == ("007", "010")  # names, not the numbers 7 and 10
    assert task(["10", "2", "-1"]).labels == ("-1", "2", "10")  # integers, sorted as numbers
    assert task([1, 0, 1]).labels == ("0", "1")
    assert task(["1.0", "0.0"]).labels == ("0.0", "1.0")
    with pytest.raises(InputError, match="'1' and '1.0' are the same number written two ways"):
        task(["1", "1.0", "0"])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_a_column_named_twice_is_refused(fmt, tmp_path):
    from ticketctl.data import custom
    from ticketctl.errors import InputError

    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        path.write_text("text,text,label\na,b,0\n")
    elif fmt == "tsv":
        path.write_text("text\ttext\tlabel\na\tb\t0\n")
    elif fmt == "json":
        path.write_text('[{"text": "a", "text": "b", "label": 0}]')
    else:
        path.write_text('{"text": "a", "text": "b", "label": 0}\n')
    with pytest.raises(InputError, match="'text' twice"):
        custom.read_table(path)


def test_tsv_blank_lines_read_as_the_csv(tmp_path):
    from ticketctl.data import custom

    csv_rows = ["sentence1,sentence2,label", *_pairs(6, [0, 1])]
    (tmp_path / "d.csv").write_text("\n".join(csv_rows) + "\n\n")
    tsv = ["sentence1\tsentence2\tlabel"] + ["\t".join(r.split(",")) for r in csv_rows[1:]]
    (tmp_path / "d.tsv").write_text("\n".join(tsv[:3]) + "\n\n" + "\n".join(tsv[3:]) + "\n\n\n")
    assert custom.read_table(tmp_path / "d.tsv") == custom.read_table(tmp_path / "d.csv")


def test_text_ids_and_empty_text_are_kept_and_named(tmp_path):
    from ticketctl.data import custom
    from ticketctl.data.tasks import Task

    task = Task("t", "", ("text",), "label", ("0", "1"), ("accuracy",), source_kind="custom")
    notes = []
    rows = [{"id": "r101", "text": "good", "label": "1"}, {"id": "101.0", "text": "", "label": "0"},
            {"id": "7", "text": None, "label": "1"}]
    split = custom.split_of(task, ["id", "text", "label"], rows, "f.jsonl", "dev", warn=notes.append)
    assert split.texts == [("good",), ("",), ("",)]  # JSON null and "" alike
    assert split.id_names == ["r101", "101.0", "7"]
    assert split.ids.tolist() == [0, 1, 2]
    assert notes == ["f.jsonl: column 'text' is empty in rows 2, 3 of 3: kept as empty text",
                     "f.jsonl: ids in column 'id' are not plain integers (e.g. 'r101'): kept as written in "
                     "predictions, numbered by row inside artifacts"]
    plain = custom.split_of(task, ["id", "text", "label"], [{"id": "5", "text": "a", "label": "1"},
                                                            {"id": "3", "text": "b", "label": "0"}], "f", "dev")
    assert plain.ids.tolist() == [5, 3] and plain.id_names is None


def test_placeholder_labels_make_an_unlabelled_split(tmp_path):
    from ticketctl.data import custom, files
    from ticketctl.data.tasks import get_task

    regression = custom.infer_task("t", ["text", "label"], [{"text": "a", "label": "0.5"},
                                                           {"text": "b", "label": "2.5"}], None, "label", None, "f")
    notes = []
    split = custom.split_of(regression, ["text", "label"], [{"text": "a", "label": "-1.0"},
                                                           {"text": "b", "label": "-1"}], "test.csv", "test",
                            warn=notes.append)
    assert split.labels is None
    assert notes == ["test.csv: every label is -1, the placeholder of unlabelled test splits: read as unlabelled "
                     "(no metrics)"]
    tsv = tmp_path / "test.tsv"
    tsv.write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t-1.0\n1\tc\td\t-1.0\n")
    assert files.read_tsv(get_task("stsb"), tsv, warn=lambda m: None).labels is None


def test_correlation_against_constant_gold_is_undefined():
    from scipy.stats import pearsonr, spearmanr

    from ticketctl.data.tasks import get_task, metric, score, undefined_note
    from ticketctl.errors import UsageError

    pred = np.array([0.1, 0.5, 0.2, 0.9])
    assert np.isnan(metric("pearson", pred, np.full(4, 3.0)))
    assert np.isnan(metric("spearman", pred, np.full(4, 3.0)))
    gold = np.array([0.0, 1.0, 1.0, 2.0])
    assert metric("pearson", pred, gold) == pytest.approx(pearsonr(pred, gold)[0], abs=1e-12)
    assert metric("spearman", pred, gold) == pytest.approx(spearmanr(pred, gold)[0], abs=1e-12)
    task = get_task("stsb")
    assert undefined_note(task, score(task, pred, np.full(4, 3.0)), np.full(4, 3.0)) == \
        "pearson, spearman undefined: the gold scores are constant"
    with pytest.raises(UsageError, match="unknown metric 'pearsn'"):
        metric("pearsn", pred, gold)


def test_truncation_is_counted_per_split(tiny_model):
    from ticketctl.data.batching import encode
    from ticketctl.data.split import Split
    from ticketctl.data.tasks import get_task
    from ticketctl.model.loading import load_tokenizer

    tok = load_tokenizer(tiny_model)
    texts = [(" ".join(["cat"] * n), "the dog") for n in (3, 20, 40, 12)]
    split = Split(get_task("mrpc"), "dev", texts, None, np.arange(4), "x")
    full = [len(tok(a, b)["input_ids"]) for a, b in texts]  # independent: untruncated lengths
    enc = encode(tok, split, 16)
    assert enc.truncated == sum(n > 16 for n in full) == 3
    assert enc.longest == max(full) == 45
    assert enc.truncation_note("dev") == ("dev: 3 of 4 examples truncated to 16 tokens (longest 45); --max-length "
                                          "sets the limit")
    assert encode(tok, split, 64).truncation_note("dev") == ""


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_options_refuse_non_finite_values(value, cli):
    code, out, err = cli("finetune", "--task", "mrpc", "--lr", value)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [f"ticketctl: error: Invalid value for '--lr': {value} is not a finite number"]


def test_vote_prints_vote_shares(capsys):
    from ticketctl.analysis.combine import combined_outputs, vote_shares
    from ticketctl.data.tasks import get_task
    from ticketctl.stages.predict import write_predictions

    task = get_task("mrpc")
    # two members, both voting class 0 on example 0; split on example 1
    outputs = np.array([[[2.0, 1.0], [0.0, 3.0]], [[5.0, 0.0], [1.0, 0.0]]])
    write_predictions(task, ["a", "b"], combined_outputs(task, outputs, "vote"), None, vote_shares(outputs))
    assert capsys.readouterr().out == "id\tprediction\tp_0\tp_1\na\t0\t1.0000\t0.0000\nb\t1\t0.5000\t0.5000\n"


def test_tokenizer_digest_ignores_transient_state(tiny_model, tmp_path):
    from ticketctl.model.loading import load_tokenizer
    from ticketctl.stages.predict import tokenizer_digest

    a, b = tmp_path / "a", tmp_path / "b"
    tok = load_tokenizer(tiny_model)
    tok.save_pretrained(str(a))
    tok(["x y"] * 2, truncation=True, max_length=7, padding="max_length")  # leaves state in the backend
    tok.save_pretrained(str(b))
    assert (a / "tokenizer.json").read_bytes() != (b / "tokenizer.json").read_bytes()
    assert tokenizer_digest(a) == tokenizer_digest(b)
    vocab = json.loads((b / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zzz"] = len(vocab["model"]["vocab"])
    (b / "tokenizer.json").write_text(json.dumps(vocab))
    assert tokenizer_digest(a) != tokenizer_digest(b)


# ---------------------------------------------------------------------------------------------- a runs folder


def test_analysis_on_the_quick_start_runs_folder(tiny_args, cli, tmp_path):
    """README's quick start leaves masks and logits in one folder: each analysis command takes its own kind from
    runs/*.safetensors and says what it skipped."""
    out = tmp_path / "runs"
    for seed in ("1", "2"):
        code, stdout, err = cli("search", "--task", "mrpc", "--policy", "random", "--sparsity", "0.2", "--seed", seed,
                                *tiny_args, "--out", str(out))
        assert code == 0, err
        code, _, err = cli("finetune", "--task", "mrpc", "--seed", seed, "--mask", stdout.split()[0], *tiny_args,
                           "--out", str(out))
        assert code == 0, err
    files = sorted(glob.glob(str(out / "*.safetensors")))
    masks = [f for f in files if "-mask-" in f]
    logits = [f for f in files if "-logits-" in f]
    assert len(masks) == 2 and len(logits) >= 2
    code, table, err = cli("ensemble", *files, "--format", "tsv")
    assert code == 0, err
    assert err.splitlines()[0].startswith("skipped 2 mask artifacts (this command reads logits artifacts): ")
    code, direct, _ = cli("ensemble", *logits, "--format", "tsv")
    assert table == direct
    code, _, err = cli("diversity", *files)
    assert code == 0, err
    code, _, err = cli("stats", *files)
    assert code == 0, err
    code, ious, err = cli("iou", *files, "--format", "tsv")
    assert code == 0, err
    assert err.splitlines()[0].startswith(f"skipped {len(logits)} logits artifacts (this command reads mask "
                                          f"artifacts): ")
    assert ious == cli("iou", *masks, "--format", "tsv")[1]
    code, _, err = cli("iou", *logits)
    assert code == 3 and "no mask artifacts among the" in err


def test_only_the_labelled_split_is_taken(tmp_path):
    from ticketctl.analysis.members import select_artifacts
    from ticketctl.store.artifacts import write_artifact

    def logits(name, split, labelled):
        tensors = {"outputs": np.zeros((2, 2), np.float32), "ids": np.arange(2)}
        if labelled:
            tensors["labels"] = np.array([0, 1])
        return str(write_artifact(tmp_path / name, "logits", tensors, {"task": "mrpc", "split": split}))

    paths = [logits("a", "dev", True), logits("b", "test", False), logits("c", "dev", True)]
    notes = []
    chosen = select_artifacts(paths, "logits", note=notes.append)
    assert [a.path.name for a in chosen] == ["a", "c"]
    assert notes == ["skipped 1 logits artifact of other splits (using 'dev', the only labelled split): b"]
    assert [a.path.name for a in select_artifacts(paths, "logits", "test", note=notes.append)] == ["b"]
