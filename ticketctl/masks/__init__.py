"""Tickets as masks: weight masks and magnitude pruning (``weights``), structured head/FFN masks and their
selection from importance scores (``structured``). numpy types; torch only where weights are pruned."""
