"""The studies that turn the project's claims into numbers, one command each (table + plot):

- ``python -m recipes.studies.head_to_head``   EBT vs diffusion (DDPM-100, DDIM-10) vs regression at
  equal gradient steps and equal training wall-clock, on unimodal and multimodal (detour) data.
- ``python -m recipes.studies.dynamic_compute`` success and latency vs inference steps / stopping threshold.
- ``python -m recipes.studies.uncertainty``     per-chunk signals read before the outcome (the first chunk,
  the chunk at step k among episodes still running) vs later failure, within-task AUROC with bootstrap
  intervals over training seeds x episodes: EBT's energy vs the N-sample spread of every stochastic head;
  and shift detection (held-out paraphrases, image noise, camera shift, displaced objects).
- ``python -m recipes.studies.recovery``        success after injected failures (action bursts, displaced
  objects, forced gripper opening), from behaviour cloning alone.
- ``python -m recipes.studies.language``        success on held-out paraphrases (and held-out tasks where
  the suite has them).

Shared pieces live in :mod:`recipes.studies.common`.
"""
