"""benchmarks.provenance records the machine with the core's one definition (vla_ebt.machine)."""

from __future__ import annotations

from benchmarks.provenance import machine
from vla_ebt.machine import machine_info


def test_benchmarks_record_the_same_machine_fields_as_run_artifacts():
    m = machine()
    assert m.keys() == machine_info().keys() and m["torch_cpu_capability"]
