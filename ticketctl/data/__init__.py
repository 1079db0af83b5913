"""Task data: GLUE tasks and their metrics (``tasks``), reading splits (``files``), training-set subsets
(``sampling``), and tokenised, length-grouped, dynamically padded batches (``batching``)."""
