"""Training: the one optimisation loop (``loop``), importance scores (``importance``), device and precision
(``device``), seeded streams (``seeds``), data parallelism (``distributed``) and the CPU fast path (``fastcpu``)."""
