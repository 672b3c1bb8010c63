"""Head comparison: does an EBT action head beat the heads users would otherwise pick, at what training
and inference cost? One resumable command (``python -m recipes.compare``, :mod:`.cli`) tunes every
head the same way, trains each on several seeds, evaluates learning curves with equal inference
treatment and writes one small artifact per run; ``python -m recipes.results`` turns the artifacts into
tables, plots and the README's results section. Protocol: docs/comparison_protocol.md.

Modules: :mod:`.plan` (seeds, variants, run specs, configs), :mod:`.runner` (resumable parallel
execution, tuning choice), :mod:`.worker` (one run: train, evaluate checkpoints, artifact),
:mod:`.evaluation` (one policy under one variant, chunk costs), :mod:`.stats` (bootstrap, AUC,
``separates``), :mod:`.artifacts` (schema, publishing), :mod:`.report` (cells, tables, sentences),
:mod:`.study_summaries` (the summaries of the protocol studies published beside a comparison).
"""
