"""Small, fast simulated suites for closed-loop evaluation of VLA policies.

* :mod:`eval.sim.suites`  — suite registry (``make_suite("reach2d")``) and the suite interface.
* :mod:`eval.sim.demos`   — scripted-expert demonstrations, a chunked torch ``Dataset`` in the
  training schema of :mod:`vla_ebt.schema`, and dataset statistics for the normalizer.
* :mod:`eval.sim.rollout` — the closed-loop evaluator (``evaluate``) and baseline adapters.
"""

from .suites import Suite, available_suites, make_suite, register_suite

__all__ = ["Suite", "available_suites", "make_suite", "register_suite"]
