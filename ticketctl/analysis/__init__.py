"""Analysis of finished artifacts, numpy/scipy only (no torch): members as ensembles (``members``, ``combine``,
``ensemble``), their diversity, mask overlap (``iou``), the paper's tables and tests (``stats``), ``show``, and
the tables and plots they print and draw."""
