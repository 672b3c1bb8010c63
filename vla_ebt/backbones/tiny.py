"""Tiny random-init checkpoints for tests and smoke runs, built entirely offline.

Each builder writes a directory in the same format as the real checkpoint of its family, so it loads
through exactly the same code path::

    build_backbone(BackboneConfig(family="paligemma", model=build_tiny_paligemma(tmp)))
    build_backbone(BackboneConfig(family="idefics3", model=build_tiny_idefics3(tmp)))
    build_backbone(BackboneConfig(family="open_clip", model="local-dir:" + build_tiny_open_clip(tmp)))
    BackboneConfig(family="composite", extra={"text_model": build_tiny_text_encoder(tmp)})

``tiny_paligemma()`` / ``tiny_idefics3()`` / ``tiny_open_clip()`` return the in-memory objects the
``build_tiny_*`` functions save (for checking that what loads back equals what was built).

Tokenizers are byte-level BPE models trained in code on a few robot instructions (every string
tokenizes; nothing is downloaded). Models: 64 px images, width 64, 2 layers.
"""

from __future__ import annotations

import json
from pathlib import Path

_CORPUS = [
    "pick up the red block and put it in the bowl",
    "open the top drawer",
    "close the microwave door",
    "push the blue cube to the left",
    "stack the green cup on the plate",
    "move the gripper up",
    "turn on the stove",
]
_SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]  # ids 0..3


def build_tiny_tokenizer(extra_special_tokens: list[str] | None = None, vocab_size: int = 320):
    """Byte-level BPE ``PreTrainedTokenizerFast`` (pad=0, unk=1, bos=2, eos=3) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    kwargs = {}
    if extra_special_tokens:
        kwargs["additional_special_tokens"] = list(extra_special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", **kwargs
    )


def _small_text_config(vocab_size: int) -> dict:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=vocab_size,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )


def _save_pretrained(model, processor, out_dir: str | Path) -> str:
    """Write an HF model + processor with ``save_pretrained`` into ``out_dir``; return the path."""
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return str(out_dir)


def _small_vision_config(image_size: int, patch_size: int, **extra) -> dict:
    """A 2-layer, width-64 ViT config shared by the tiny VLM fixtures."""
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size, **extra)


def tiny_paligemma(image_size: int = 64, patch_size: int = 16, seed: int = 0):
    """Tiny random-init (PaliGemmaForConditionalGeneration, PaliGemmaProcessor): SigLIP + Gemma, width 64."""
    import torch
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    num_patches = (image_size // patch_size) ** 2
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        image_seq_length=num_patches,
    )
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=build_tiny_tokenizer())
    vocab = len(processor.tokenizer)  # includes <image> and the <locXXXX>/<segXXX> tokens the processor adds
    config = PaliGemmaConfig(
        vision_config=_small_vision_config(image_size, patch_size, model_type="siglip_vision_model",
                                           vision_use_head=False),
        text_config=dict(model_type="gemma", head_dim=32, **_small_text_config(vocab)),
        image_token_index=processor.image_token_id,
        vocab_size=vocab,
        projection_dim=64,
        hidden_size=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return PaliGemmaForConditionalGeneration(config), processor


def build_tiny_paligemma(out_dir: str | Path, image_size: int = 64, patch_size: int = 16, seed: int = 0) -> str:
    """:func:`tiny_paligemma` saved with ``save_pretrained`` (model + processor) into ``out_dir``; returns it."""
    return _save_pretrained(*tiny_paligemma(image_size, patch_size, seed), out_dir)


def tiny_idefics3(image_size: int = 64, patch_size: int = 8, seed: int = 0):
    """Tiny random-init (Idefics3ForConditionalGeneration, Idefics3Processor): the SmolVLM layout
    (vision encoder + pixel-shuffle connector + Llama), width 64, one tile per image."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    scale_factor = 2
    image_seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    tokenizer = build_tiny_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len)
    config = Idefics3Config(
        vision_config=_small_vision_config(image_size, patch_size),
        text_config=dict(model_type="llama", **_small_text_config(len(processor.tokenizer))),
        image_token_id=processor.image_token_id,
        scale_factor=scale_factor,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    return Idefics3ForConditionalGeneration(config), processor


def build_tiny_idefics3(out_dir: str | Path, image_size: int = 64, patch_size: int = 8, seed: int = 0) -> str:
    """:func:`tiny_idefics3` saved with ``save_pretrained`` (model + processor) into ``out_dir``; returns it."""
    return _save_pretrained(*tiny_idefics3(image_size, patch_size, seed), out_dir)


def tiny_open_clip(image_size: int = 64, patch_size: int = 16, seed: int = 0):
    """Tiny random-init open_clip ViT CLIP: returns (model, open_clip_config dict, HF tokenizer)."""
    import open_clip
    import torch

    tokenizer = build_tiny_tokenizer()
    model_cfg = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": 64, "layers": 2, "head_width": 32},
        "text_cfg": {
            "context_length": 32,
            "vocab_size": len(tokenizer),
            "width": 64,
            "heads": 2,
            "layers": 2,
            "pad_id": tokenizer.pad_token_id,
            # Any non-empty name selects open_clip's HFTokenizer, which for local-dir reads the folder.
            "hf_tokenizer_name": "local",
        },
    }
    preprocess_cfg = {
        "size": image_size,
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
    }
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    return model, {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}, tokenizer


def build_tiny_open_clip(out_dir: str | Path, image_size: int = 64, patch_size: int = 16, seed: int = 0) -> str:
    """:func:`tiny_open_clip` as an open_clip "local-dir" folder (``open_clip_config.json``,
    ``open_clip_model.safetensors``, tokenizer files); returns the dir. Load with model="local-dir:<dir>"."""
    model, config, tokenizer = tiny_open_clip(image_size, patch_size, seed)
    return save_open_clip_dir(model, config, tokenizer, out_dir)


def save_open_clip_dir(model, config: dict, tokenizer, out_dir: str | Path) -> str:
    """Write an open_clip "local-dir" folder: config JSON, safetensors weights, HF tokenizer files."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    with open(out / "open_clip_config.json", "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    return str(out)


def build_tiny_text_encoder(out_dir: str | Path, seed: int = 0) -> str:
    """Tiny BERT encoder + tokenizer (``save_pretrained``), a stand-in for the composite's text side."""
    import torch
    from transformers import BertConfig, BertModel

    out = Path(out_dir)
    tokenizer = build_tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
