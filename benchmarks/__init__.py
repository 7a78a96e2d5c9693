"""tesseract-fl benchmarks: each module times one part of the toolkit in one process, prints a
table and writes JSON (machine, torch version, threads, device, figures) under
``results/benchmarks/``. Run them all with ``python -m benchmarks`` from the repository root."""
