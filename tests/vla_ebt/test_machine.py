"""vla_ebt.machine: the machine record stored beside run artifacts and benchmark numbers."""

from __future__ import annotations

import json

import numpy as np
import torch

from vla_ebt.machine import machine_info


def test_machine_info_names_the_cores_and_the_cpu_kernels_torch_uses():
    m = machine_info()
    assert m["nproc"] >= 1 and m["torch"] == torch.__version__ and m["numpy"] == np.__version__
    assert m["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability() and m["torch_cpu_capability"]
    assert json.loads(json.dumps(m)) == m  # stored as JSON beside the numbers

