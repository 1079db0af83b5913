"""The package's shape (docs/architecture.md "Architecture"): measured from the source by benchmarks/layout.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _layout():
    spec = importlib.util.spec_from_file_location("layout", ROOT / "benchmarks" / "layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure()


LAYOUT = _layout()
ROWS = {r["module"]: r for r in LAYOUT["rows"]}


def test_import_levels_stay_at_eight_or_fewer():
    """Eight since ``protocol``: its runner stands on the training stages and its report on the analysis commands,
    one level above both (the command line above it, ``__main__`` above that)."""
    worst = max(LAYOUT["rows"], key=lambda r: r["level"])
    assert LAYOUT["levels"] <= 8, f"{worst['module']} stands on level {worst['level']}"


SHARED = {"ticketctl.stages.context", "ticketctl.stages.inputs", "ticketctl.stages.outputs"}  # what stages share


def test_no_stage_imports_another_stage():
    stages = {m for m in ROWS if m.startswith("ticketctl.stages.") and m not in SHARED}
    for m in stages:
        others = sorted(set(ROWS[m]["imports"]) & (stages - {m}))
        assert not others, f"{m} imports the stage(s) {others}: shared work belongs in {', '.join(sorted(SHARED))}"
    for m in SHARED:  # side by side, one level: the stages stand one above them
        others = sorted(set(ROWS[m]["imports"]) & (SHARED - {m}))
        assert not others, f"{m} imports {others}: the shared modules stand side by side"


def test_layers_point_down_the_pipeline():
    """Lower layers never import higher ones: data, masks, model, store and train know nothing of the stages, the
    analysis commands or the command line; the analysis commands know nothing of training."""
    lower = ("ticketctl.data", "ticketctl.masks", "ticketctl.model", "ticketctl.store", "ticketctl.train")
    higher = ("ticketctl.stages", "ticketctl.analysis", "ticketctl.cli")
    for m, row in ROWS.items():
        if m.startswith(lower):
            bad = [d for d in row["imports"] if d.startswith(higher)]
            assert not bad, f"{m} imports {bad}"
        if m.startswith("ticketctl.analysis"):
            bad = [d for d in row["imports"] if d.startswith(("ticketctl.stages", "ticketctl.train", "ticketctl.model"))]
            assert not bad and "torch" not in row["third_party"], f"{m} reaches training code: {bad}"


def test_artifact_names_live_in_one_module():
    """Every artifact file name is made in ticketctl.store.paths (OpenLTH's paths.py): no other module spells one."""
    for m, row in ROWS.items():
        if m == "ticketctl.store.paths":
            continue
        text = Path(ROOT, *m.split(".")).with_suffix(".py").read_text() if (
            ROOT / Path(*m.split("."))).with_suffix(".py").exists() else ""
        assert '-logits-' not in text and '-mask-' not in text, f"{m} builds an artifact name itself"
