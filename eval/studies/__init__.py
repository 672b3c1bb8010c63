"""The studies that turn the project's claims into numbers, one command each (table + plot):

- ``python -m eval.studies.head_to_head``   EBT vs diffusion (DDPM-100, DDIM-10) vs regression at
  equal gradient steps and equal training wall-clock, on unimodal and multimodal (detour) data.
- ``python -m eval.studies.dynamic_compute`` success and latency vs inference steps / stopping threshold.
- ``python -m eval.studies.uncertainty``     per-chunk signals vs episode failure (within-task AUROC)
  and under shift (held-out paraphrases, image noise, camera shift, displaced objects).
- ``python -m eval.studies.recovery``        success after injected failures (action bursts, displaced
  objects, forced gripper opening), from behaviour cloning alone.
- ``python -m eval.studies.language``        success on held-out paraphrases (and held-out tasks where
  the suite has them).

Shared pieces live in :mod:`eval.studies.common`.
"""
