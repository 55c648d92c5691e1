"""``deformdetr convert``: a checkpoint from any source (ours, official, a Hugging Face folder or
hub id) written as a Hugging Face transformers folder or in the official checkpoint layout."""

from __future__ import annotations

import os

from deformdetr.engine.checkpoint import save_atomic
from deformdetr.models.checkpoint import family_of, model_from_checkpoint, model_state_of, read_weights

__all__ = ["FORMATS", "convert_checkpoint"]

#: What ``convert --to`` writes: a folder for transformers' from_pretrained, or a file as the
#: official code saves it.
FORMATS = ("hf", "official")


def convert_checkpoint(source: str, output: str, to: str) -> str:
    """Writes the model of ``source`` to ``output`` in the format ``to``; returns what it wrote,
    in words."""
    if to not in FORMATS:
        raise ValueError(f"--to must be one of {FORMATS}, got {to!r}")
    checkpoint = read_weights(source)
    model = model_from_checkpoint(checkpoint, source)
    if to == "hf":
        from deformdetr.models.hf import write_hf

        if os.path.isfile(output):
            raise ValueError(f"{output} is a file: the Hugging Face format is a folder")
        write_hf(model, output, checkpoint.get("class_names"))
        return f"a Hugging Face transformers folder (config.json, model.safetensors) in {output}"
    if os.path.isdir(output):
        raise ValueError(f"{output} is a folder: the official format is one file (e.g. {output}/checkpoint.pth)")
    family = family_of(model_state_of(checkpoint, source), source)
    save_atomic(family.official_layout(model), output)
    return f"an official {family.name} checkpoint in {output}"
