import gzip
from pathlib import Path

import numpy as np
import pytest

from ticketctl.data import files, sampling
from ticketctl.errors import InputError, UsageError
from ticketctl.data.tasks import TASKS, get_task, score

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def _rows_in(raw: bytes, header: bool) -> int:
    text = raw.decode("utf-8-sig")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return len(lines) - (1 if header else 0)


@pytest.mark.parametrize("task", ["mrpc", "stsb", "rte"])
@pytest.mark.parametrize("split", ["train", "dev"])
def test_embedded_row_counts_match_files(task, split):
    t = get_task(task)
    raw = gzip.decompress((files.EMBEDDED_DIR / t.folder / f"{split}.tsv.gz").read_bytes())
    s = files.load_split(t, split)
    assert len(s) == _rows_in(raw, header=True)
    assert s.labels is not None and len(s.labels) == len(s)
    assert s.source.startswith("embedded:")


def test_embedded_known_sizes():
    # GLUE's published sizes for these splits.
    assert len(files.load_split(get_task("mrpc"), "train")) == 3668
    assert len(files.load_split(get_task("mrpc"), "dev")) == 408
    assert len(files.load_split(get_task("rte"), "dev")) == 277
    assert len(files.load_split(get_task("stsb"), "dev")) == 1500


# The first rows of GLUE's own dev files, with their quirks: MRPC's byte-order mark and a field opening with an
# unbalanced quote, CoLA without a header or a final newline, SST-2's space before the tab, STS-B's ten columns.
GLUE_LAYOUTS = {
    "mrpc": ("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
             "1\t1355540\t1355592\tHe said the business doesn't fit.\t\"The business does not fit our plans.\n"
             "0\t2029631\t2029565\tMagnarelli said Racicot hated the regime.\tHe said Racicot hated it.\n"
             "1\t2221603\t2221633\tThe \"tiny\" stock rose.\tThe stock rose.\n",
             3, ("He said the business doesn't fit.", '"The business does not fit our plans.'), 1),
    "stsb": ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
             "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man is dancing.\tA man dances.\t5.000\n"
             "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA child rides.\tA horse runs.\t1.250\n",
             2, ("A man is dancing.", "A man dances."), 5.0),
    "rte": ("index\tsentence1\tsentence2\tlabel\n0\tDana Reeve, 44, has died.\tReeve died.\tentailment\n"
            "1\tAntibiotics lose effect.\tThey work.\tnot_entailment\n", 2,
            ("Dana Reeve, 44, has died.", "Reeve died."), 0),
    "cola": ("gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tRode the.\n"
             "gj04\t1\t\tThe doll wriggled itself loose.", 3, ("The sailors rode the breeze clear of the rocks.",), 1),
    "sst2": ("sentence\tlabel\nthe expressive power of the camera \t1\ntoo bland and \t0\n", 2,
             ("the expressive power of the camera ",), 1),
    "wnli": ("index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair.\tThe hair has to go.\t0\n"
             "1\tJane knocked on Susan's door.\tSusan did not answer.\t1\n", 2,
             ("The drain is clogged with hair.", "The hair has to go."), 0),
}


@pytest.mark.parametrize("task", sorted(GLUE_LAYOUTS))
def test_glue_layouts_row_counts_and_first_row(task, tmp_path):
    """Each task's GLUE file layout read from a copy of its first rows written here (runs without the shared
    download): the row count, the first pair of texts and label, verbatim."""
    t = get_task(task)
    text, rows, first, label = GLUE_LAYOUTS[task]
    (tmp_path / t.folder).mkdir()
    (tmp_path / t.folder / "dev.tsv").write_text(text, encoding="utf-8")
    s = files.load_split(t, "dev", str(tmp_path))
    assert len(s) == rows == _rows_in(text.encode(), header=t.headerless is None)
    assert s.texts[0] == first and s.labels[0] == label


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared GLUE folder beside the checkout (the layouts are checked "
                                               "without it: test_glue_layouts_row_counts_and_first_row)")
@pytest.mark.parametrize("task", ["mrpc", "stsb", "rte", "cola", "sst2", "wnli"])
def test_shared_glue_row_counts(task):
    t = get_task(task)
    for split in ("train", "dev"):
        raw = (SHARED / t.folder / f"{split}.tsv").read_bytes()
        s = files.load_split(t, split, str(SHARED))
        assert len(s) == _rows_in(raw, header=t.headerless is None), (task, split)


def test_quotes_inside_sentences_survive(glue_dir):
    s = files.load_split(get_task("mrpc"), "train", str(glue_dir))
    assert s.texts[1][0] == 'He said "no" to the offer.'
    assert s.labels[:4].tolist() == [1, 0, 1, 0]


def test_last_line_without_newline(glue_dir):
    s = files.load_split(get_task("mrpc"), "dev", str(glue_dir))
    assert len(s) == 8
    assert s.texts[-1][1] == "The river is long."


def test_rte_string_labels_and_index(glue_dir):
    s = files.load_split(get_task("rte"), "dev", str(glue_dir))
    assert s.labels[:2].tolist() == [0, 1]  # entailment = 0
    assert s.ids.tolist() == list(range(8))


def test_cola_headerless_and_test_file_with_header(tmp_path):
    t = get_task("cola")
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text('gj04\t1\t\tThe "sailors" rode.\ngj04\t0\t*\tRode the.\n')
    s = files.load_split(t, "train", str(tmp_path))
    assert s.texts == [('The "sailors" rode.',), ("Rode the.",)] and s.labels.tolist() == [1, 0]
    test = tmp_path / "test.tsv"
    test.write_text("index\tsentence\n7\tA sentence.\n8\tAnother.\n")
    s = files.read_tsv(t, test)
    assert s.labels is None and s.ids.tolist() == [7, 8] and s.name == "test"


def test_malformed_rows_are_refused_with_line_number(tmp_path):
    t = get_task("mrpc")
    bad = tmp_path / "bad.tsv"
    bad.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tonly one sentence\n")
    with pytest.raises(InputError, match=r"bad.tsv:2: expected 5"):
        files.read_tsv(t, bad)
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(InputError, match="no column"):
        files.read_tsv(t, wrong)
    label = tmp_path / "label.tsv"
    label.write_text("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n7\t1\t2\ta\tb\n")
    with pytest.raises(InputError, match="label '7'"):
        files.read_tsv(t, label)


def test_missing_data_dir_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        files.load_split(get_task("mrpc"), "train", str(tmp_path))


def test_unknown_task():
    with pytest.raises(UsageError, match="unknown task"):
        get_task("squad")
    assert get_task("STS-B").name == "stsb"


def test_bagging_subsets_differ_by_seed_and_reproduce():
    a = sampling.bagging_indices(1000, 0.9, seed=1)
    b = sampling.bagging_indices(1000, 0.9, seed=2)
    assert len(a) == len(b) == 900
    assert len(np.unique(a)) == 900
    assert not np.array_equal(a, b)
    assert np.array_equal(a, sampling.bagging_indices(1000, 0.9, seed=1))
    assert np.array_equal(sampling.bagging_indices(10, 1.0, seed=1), np.arange(10))


def test_metrics_hand_computed():
    mrpc, cola, stsb = TASKS["mrpc"], TASKS["cola"], TASKS["stsb"]
    pred, gold = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    m = score(mrpc, pred, gold)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # tp=2 fp=1 fn=1
    # MCC: tp=2 tn=1 fp=1 fn=1 -> (2-1)/sqrt(3*3*2*2) = 1/6
    assert score(cola, pred, gold)["matthews"] == pytest.approx(1 / 6)
    s = score(stsb, np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0]))
    assert s["pearson"] == pytest.approx(0.8)
    assert s["spearman"] == pytest.approx(0.8)


HUB_COLUMNS = {  # the text columns of the hub's nyu-mll/glue configs
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}


@pytest.mark.parametrize("name", sorted(HUB_COLUMNS))
def test_every_glue_task_reads_a_hub_shaped_dataset(name):
    """The hub's column names differ from GLUE's TSV headers (MNLI: premise/hypothesis, MRPC: sentence1/2): every
    task maps its own, from a datasets.Dataset built here (no network)."""
    import datasets

    from ticketctl.data.files import hub_split_of

    task = get_task(name)
    assert set(HUB_COLUMNS) == {t for t in TASKS}
    rows = 5
    table = {c: [f"{c} {i}" for i in range(rows)] for c in HUB_COLUMNS[name]}
    table["label"] = [1.5 * i for i in range(rows)] if task.is_regression else [i % task.num_labels for i in range(rows)]
    table["idx"] = list(range(10, 10 + rows))
    split = hub_split_of(task, datasets.Dataset.from_dict(table), "dev", "hub-test")
    assert split.texts[2] == tuple(f"{c} 2" for c in HUB_COLUMNS[name])
    assert split.ids.tolist() == list(range(10, 15)) and len(split) == rows
    assert split.labels.tolist() == table["label"]
    unlabelled = dict(table, label=[-1] * rows)
    if not task.is_regression:
        assert hub_split_of(task, datasets.Dataset.from_dict(unlabelled), "test", "hub-test").labels is None
    with pytest.raises(InputError, match="no column"):
        hub_split_of(task, datasets.Dataset.from_dict({"text": ["a"], "label": [0], "idx": [0]}), "dev", "hub-test")
