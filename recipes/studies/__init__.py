"""The studies that turn the project's claims into numbers, one command each (table + plot):

- ``python -m recipes.studies.head_to_head``   EBT vs diffusion (DDPM-100, DDIM-10) vs regression at
  equal gradient steps and equal training wall-clock, on unimodal and multimodal (detour) data.
- ``python -m recipes.studies.dynamic_compute`` success, measured ms and forward-pass equivalents per chunk
  vs inference steps (every head with a step knob) and under a per-chunk latency budget (EBT anytime).
- ``python -m recipes.studies.uncertainty``     per-chunk signals read before the outcome (the first chunk,
  the chunk at step k among episodes still running) vs later failure, within-task AUROC with bootstrap
  intervals over training seeds x episodes: EBT's energy vs the N-sample spread of every stochastic head;
  and shift detection (held-out paraphrases, image noise, camera shift, displaced objects).
- ``python -m recipes.studies.recovery``        success after injected failures (action bursts, displaced
  objects, forced gripper opening), from behaviour cloning alone, and the ratio perturbed / clean.
- ``python -m recipes.studies.realtime``        success and smoothness at chunk boundaries per head x
  execution strategy x inference delay.
- ``python -m recipes.studies.language``        success on held-out paraphrases (and held-out tasks where
  the suite has them).
- ``python -m recipes.studies.reproduction``    a comparison grid's final runs trained again from the
  published recipe, tuning and seeds, against the published artifacts run by run.

Uncertainty, recovery, realtime and dynamic compute run the comparison protocol's policies (several training seeds per
head, ``--policies LABEL=DIR,...`` or ``--compare OUT``) and pool the seeds with bootstrap intervals:
:mod:`recipes.studies.protocol_policies` (also their ``--publish``: beside the comparison, summarised by
``python -m recipes.results``). Other shared pieces live in :mod:`recipes.studies.common`.
"""
