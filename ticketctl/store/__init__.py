"""Artifacts on disk: every file name (``paths``), atomic writes (``atomic``), the safetensors artifact format
(``artifacts``), and the provenance and config hashes every artifact carries (``provenance``). numpy only."""
