"""Instruction paraphrases of the 50 Meta-World tasks, loaded from ``instructions.json`` (package data).

File format: ``{task: {"train": [str, ...], "heldout": [str, ...]}}``; every task needs at least
one paraphrase per split. A missing or malformed file raises :class:`InstructionsError` naming it.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["INSTRUCTIONS", "InstructionsError", "instructions_for", "load_instructions"]

_FILE = "instructions.json"


class InstructionsError(RuntimeError):
    """The instruction table is missing or malformed."""


def load_instructions(path: str | Path | None = None) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """task -> (train paraphrases, heldout paraphrases) from ``path`` (default: the packaged file)."""
    where = str(path) if path is not None else f"{__package__}/{_FILE}"
    try:
        text = Path(path).read_text() if path is not None else resources.files(__package__).joinpath(_FILE).read_text()
    except OSError as e:
        raise InstructionsError(f"metaworld: cannot read the instruction table {where}: {e} "
                                f"(is the package data installed?)") from None
    try:
        raw: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise InstructionsError(f"metaworld: instruction table {where} is not valid JSON: {e}") from None
    if not isinstance(raw, dict) or not raw:
        raise InstructionsError(f"metaworld: instruction table {where} must be a non-empty object task -> splits")
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for task, splits in raw.items():
        if not isinstance(splits, dict) or set(splits) != {"train", "heldout"}:
            raise InstructionsError(f"metaworld: instruction table {where}: task {task!r} needs exactly the keys "
                                    f"'train' and 'heldout'")
        pair = []
        for split in ("train", "heldout"):
            items = splits[split]
            if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
                raise InstructionsError(f"metaworld: instruction table {where}: task {task!r} split {split!r} must "
                                        f"be a non-empty list of non-empty strings")
            pair.append(tuple(items))
        out[task] = (pair[0], pair[1])
    return out


INSTRUCTIONS = load_instructions()


def instructions_for(task: str, split: str) -> list[str]:
    """Paraphrases of ``task`` for ``split`` ("train" or "heldout")."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"metaworld: no instructions for task {task!r}; known: {sorted(INSTRUCTIONS)}")
    train, heldout = INSTRUCTIONS[task]
    return list(train if split == "train" else heldout)
