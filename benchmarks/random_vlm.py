"""A vision-language backbone at VLA scale with random weights, for latency runs only: an Idefics3
model (family ``idefics3`` of ``vla_ebt.backbones.hf_vlm``) in SmolVLM-256M's layout, i.e. a SigLIP
base patch-16 vision tower at 512 px, a 4x pixel-shuffle connector (64 image tokens) and a SmolLM2-135M
language model. The hub is out of reach here, so the weights are random and the tokenizer is the
small word-level one of ``vla_ebt.backbones.tiny``; latency does not depend on the values, and every
artifact made with it records :data:`SHAPE` and says the weights are random.

    python benchmarks/random_vlm.py OUT_DIR     # then: policy_latency.py --backbone-family idefics3 --backbone OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

#: the file in the model folder that says its weights are random and what layout it has
MARKER = "random_weights.json"

#: the architecture written (SmolVLM-256M's published sizes); no weights of it are used
SHAPE = {
    "layout": "SmolVLM-256M (Idefics3: SigLIP-B/16 at 512 px + pixel shuffle x4 + SmolLM2-135M), random weights",
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 512, "patch_size": 16},
    "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152},
    "scale_factor": 4,
}


def config_and_processor():
    """(Idefics3Config, Idefics3Processor) of :data:`SHAPE`; no weights are made."""
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    from vla_ebt.backbones.tiny import build_tiny_tokenizer

    v, t, s = SHAPE["vision"], SHAPE["text"], SHAPE["scale_factor"]
    tokenizer = build_tiny_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    size = {"longest_edge": v["image_size"]}
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size=size, max_image_size=size,
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_seq_len = (v["image_size"] // v["patch_size"]) ** 2 // s**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len)
    config = Idefics3Config(vision_config=dict(v), text_config=dict(model_type="llama", **t),
                            image_token_id=processor.image_token_id, scale_factor=s, pad_token_id=0)
    return config, processor


def build(out_dir: str | Path, seed: int = 0) -> str:
    """Write the random-init model, its processor and :data:`MARKER` into ``out_dir``; returns it."""
    import torch
    from transformers import Idefics3ForConditionalGeneration

    config, processor = config_and_processor()
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (Path(out_dir) / MARKER).write_text(json.dumps(SHAPE, indent=1))  # read by benchmarks/policy_latency.py
    return str(out_dir)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(f"random-init VLM ({SHAPE['layout']}) at {build(sys.argv[1])}")
