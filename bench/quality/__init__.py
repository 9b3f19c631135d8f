"""The selection-quality benchmark (issue 7): every selector side by side on a real mixed pool, each arm run
through the toolkit's own `diverse-axolotl run` with an `eval:` block, aggregated into RESULTS.md and plots.

`python -m bench.quality --config bench/quality/default.yaml` (GPU), `--config bench/quality/cpu_small.yaml`
(a reduced CPU run), `--smoke` (two arms on a tiny random model, part of the tests). See README.md here.
"""
