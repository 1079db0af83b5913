"""The GLUE task table: each task's name, files, text and label columns, labels and metrics; custom tasks from
their recorded spec. Plain data, importing nothing of ticketctl or numpy: the CLI reads the task names from here at
start-up (``--task``'s help and completion); ``ticketctl.data.tasks`` re-exports it beside the metrics and
``get_task``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # CLI name, e.g. "mrpc"
    folder: str  # GLUE download folder, e.g. "MRPC"
    text_columns: tuple[str, ...]  # header names of the text columns
    label_column: str | None  # header name of the label column
    labels: tuple[str, ...] | None  # label strings in class-index order; None for regression
    metrics: tuple[str, ...]  # first one is the headline metric
    # Files without a header row (CoLA's train/dev): column positions for text and label.
    headerless: tuple[tuple[int, ...], int] | None = None
    dev_file: str = "dev.tsv"
    hub_name: str | None = None  # config name in the hub's "nyu-mll/glue"
    hub_columns: tuple[str, ...] | None = None  # the hub's text columns where they differ from the TSV header
    source_kind: str = "glue"  # "custom": a task inferred from the user's data (--train-file, --dataset)

    @property
    def is_custom(self) -> bool:
        return self.source_kind == "custom"

    def spec(self) -> dict | None:
        """What defines a custom task, recorded in its artifacts (None for a GLUE task: its name says it all)."""
        if not self.is_custom:
            return None
        return {"name": self.name, "text_columns": list(self.text_columns), "label_column": self.label_column,
                "labels": None if self.labels is None else list(self.labels), "metrics": list(self.metrics)}

    @classmethod
    def from_spec(cls, spec: dict) -> "Task":
        labels = spec.get("labels")
        return cls(spec["name"], "", tuple(spec["text_columns"]), spec.get("label_column"),
                   None if labels is None else tuple(labels), tuple(spec["metrics"]), source_kind="custom")

    @property
    def hub_text_columns(self) -> tuple[str, ...]:
        return self.hub_columns or self.text_columns

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def headline(self) -> str:
        return self.metrics[0]


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("accuracy", "f1"), hub_name="mrpc",
             hub_columns=("sentence1", "sentence2")),
        Task("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, ("pearson", "spearman"), hub_name="stsb"),
        Task("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), ("accuracy",),
             hub_name="rte"),
        Task("cola", "CoLA", ("sentence",), "label", ("0", "1"), ("matthews",), headerless=((3,), 1),
             hub_name="cola"),
        Task("sst2", "SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",), hub_name="sst2"),
        Task("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("0", "1"), ("accuracy",), hub_name="wnli"),
        Task("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"), ("accuracy",),
             hub_name="qnli"),
        Task("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), ("accuracy", "f1"),
             hub_name="qqp"),
        Task("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), dev_file="dev_matched.tsv", hub_name="mnli", hub_columns=("premise", "hypothesis")),
    ]
}


CLASSIFICATION_METRICS = ("accuracy", "f1", "matthews")
REGRESSION_METRICS = ("pearson", "spearman")
