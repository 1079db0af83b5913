"""The model: loading a pretrained sequence classifier and its tokenizer (``loading``), its prunable weights and
structured units, and physical pruning (``units``), gates on heads and FFN sublayers (``gates``)."""
