"""One rule for column names with surrounding whitespace, in every format: the name is read stripped, with a
notice, and every column option (also stripped) finds it by any spelling."""

import json

import pytest

from ticketctl.data.custom import infer_task, parse_columns, read_table
from ticketctl.errors import InputError

ROWS = [("good film", "pos"), ("bad film", "neg"), ("fine film", "pos"), ("dull film", "neg")]


def write(path, fmt, text_name=" review ", label_name="label "):
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        path.write_text("\n".join([f"{text_name}{sep}{label_name}"] + [f"{t}{sep}{y}" for t, y in ROWS]) + "\n")
    elif fmt == "json":
        path.write_text(json.dumps([{text_name: t, label_name: y} for t, y in ROWS]))
    else:
        path.write_text("\n".join(json.dumps({text_name: t, label_name: y}) for t, y in ROWS) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
@pytest.mark.parametrize("text_option, label_option", [("review", "label"), (" review ", "label "),
                                                       ("review ", " label")])
def test_padded_header_is_found_by_any_spelling(tmp_path, fmt, text_option, label_option):
    notices = []
    columns, rows = read_table(write(tmp_path / f"train.{fmt}", fmt), warn=notices.append)
    assert columns == ["review", "label"] and rows[0] == {"review": "good film", "label": "pos"}
    assert len(notices) == 1 and "' review ', 'label '" in notices[0] and "as 'review', 'label'" in notices[0]
    task = infer_task("own", columns, rows, parse_columns(text_option), label_option.strip(), None, "train",
                      warn=notices.append)
    assert task.text_columns == ("review",) and task.label_column == "label" and task.labels == ("neg", "pos")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_a_clean_header_gives_no_notice(tmp_path, fmt):
    notices = []
    columns, _ = read_table(write(tmp_path / f"train.{fmt}", fmt, "review", "label"), warn=notices.append)
    assert columns == ["review", "label"] and notices == []


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json"])
def test_two_names_that_strip_to_one_are_refused(tmp_path, fmt):
    with pytest.raises(InputError, match="twice"):
        read_table(write(tmp_path / f"train.{fmt}", fmt, "label", "label "), warn=lambda _: None)


def test_label_column_option_is_stripped_on_the_command_path(tmp_path):
    """``--label-column "label "`` on a clean header: the option follows the same rule (own_task_data)."""
    from ticketctl.data.custom import own_task_data
    from ticketctl.hparams import DataOptions

    train = write(tmp_path / "train.csv", "csv", "review", "label")
    opts = DataOptions(train_file=str(train), validation_file=str(train), text_columns="review ",
                       label_column="label ")
    task, *_ = own_task_data("own", opts, warn=lambda _: None)
    assert task.label_column == "label" and task.text_columns == ("review",)
