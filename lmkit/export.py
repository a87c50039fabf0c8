"""Export an lmkit language model as a Hugging Face model folder, so the rest of the field can open it.

An lmkit model with learned positions is a GPT-2 (Radford et al. 2019) parameter for parameter; one with
rotary positions is a GPT-NeoX (Black et al. 2022) with ``partial_rotary_factor=1.0`` and
``use_parallel_residual=False``. Checked against lmkit's ``model.py``, not assumed:

- pre-LN blocks (``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``) and a final LayerNorm, eps 1e-5,
  LayerNorm with bias: both GPT-2 and GPT-NeoX (sequential residual);
- GELU with the tanh approximation (``nn.GELU(approximate="tanh")``) = ``gelu_pytorch_tanh``;
- attention scaled by 1/sqrt(hs); rotary on the whole head, theta = 10000, pairs (i, i + hs/2)
  (the rotate-half convention, GPT-NeoX's);
- GPT-2 stores projections as ``Conv1D`` with (in, out) weights: transposed here;
- GPT-NeoX's fused ``query_key_value`` is laid out head by head ([nh, 3, hs] rows), lmkit's
  ``c_attn`` as [3, nh, hs]: the rows are permuted;
- sinusoidal positions are a fixed table added to the embeddings: exactly a GPT-2 whose learned
  ``wpe`` holds that table, so they export as GPT-2 too;
- a model without biases exports with zero biases (the same function).

Post-LN blocks and sliding-window attention exist in neither architecture and are refused by name.
The tokenizer becomes a ``PreTrainedTokenizerFast`` that encodes exactly as lmkit's: the BPE tokenizer
itself (it is a ``tokenizers`` model already), or, for characters, a word-level vocabulary of single
characters with no normalisation. Every export is loaded back with ``transformers`` and compared with
lmkit (logits, tokenizer ids) before the folder is put in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .checkpoint import load, read_info
from .files import fsync_tree, swap_into_place
from .model import GPT, GPTConfig, unwrap
from .tokenizer import EOT, BPETokenizer, CharTokenizer, TokenizerBase

__all__ = ["Architecture", "ExportResult", "architecture_for", "hf_config", "hf_state_dict", "hf_tokenizer",
           "to_hf"]

log = logging.getLogger(__name__)

Architecture = Literal["gpt2", "gpt_neox"]
PARITY_TOLERANCE = 1e-4  # float32 logits of the exported model vs lmkit's; measured ~1e-6 (tests/test_export.py)
# characters the tokenizer check encodes: newlines, runs of spaces, punctuation and the rare ones
_PROBE_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  All:  Speak, speak!\t&$3'"


@dataclass(frozen=True)
class ExportResult:
    """What ``to_hf`` wrote and what it checked."""

    path: Path
    architecture: Architecture
    model_class: str  # the transformers class that loads it
    max_abs_logit_diff: float  # transformers' logits vs lmkit's on a probe batch
    tokenizer: str | None  # "char" / "bpe", or None when the checkpoint holds no tokenizer

    def __str__(self) -> str:
        tok = f"{self.tokenizer} tokenizer" if self.tokenizer else "no tokenizer (the checkpoint has none)"
        return (f"{self.path}: {self.model_class} + {tok}; transformers' logits equal lmkit's to "
                f"{self.max_abs_logit_diff:.1e}")


def architecture_for(cfg: GPTConfig) -> Architecture:
    """``"gpt2"`` (learned or sinusoidal positions) or ``"gpt_neox"`` (rope); ValueError naming any option
    that neither Hugging Face architecture has."""
    if not cfg.norm_first:
        raise ValueError("this model uses post-LN blocks (norm_first=False); GPT-2 and GPT-NeoX are pre-LN, so "
                         "it has no Hugging Face equivalent: train with norm_first=True to export")
    if cfg.attn_window is not None:
        raise ValueError(f"this model attends to a sliding window (attn_window={cfg.attn_window}); GPT-2 and "
                         f"GPT-NeoX attend to the whole context, so the exported model would compute something "
                         f"else: train with attn_window=None to export")
    return "gpt_neox" if cfg.pos_encoding == "rope" else "gpt2"


def hf_config(cfg: GPTConfig, tokenizer: TokenizerBase | None = None):
    """The ``transformers`` config (``GPT2Config`` or ``GPTNeoXConfig``) of an lmkit ``GPTConfig``."""
    from transformers import GPT2Config, GPTNeoXConfig

    eot = tokenizer.eot_id if isinstance(tokenizer, BPETokenizer) else None  # char vocabularies have no end token
    if architecture_for(cfg) == "gpt2":
        return GPT2Config(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=4 * cfg.n_embd, activation_function="gelu_pytorch_tanh",
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout, layer_norm_epsilon=1e-5,
            tie_word_embeddings=cfg.tie_weights, bos_token_id=eot, eos_token_id=eot, pad_token_id=None,
        )
    return GPTNeoXConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, intermediate_size=4 * cfg.n_embd, hidden_act="gelu_pytorch_tanh",
        max_position_embeddings=cfg.block_size, layer_norm_eps=1e-5, use_parallel_residual=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        attention_bias=cfg.bias, attention_dropout=cfg.dropout, hidden_dropout=cfg.dropout,
        tie_word_embeddings=cfg.tie_weights, bos_token_id=eot, eos_token_id=eot, pad_token_id=None,
    )


def _gpt2_names(model: GPT) -> dict[str, torch.Tensor]:
    """lmkit tensors under GPT-2's names; Conv1D weights are (in, out), so Linear weights are transposed."""
    out = {name: p.t() if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else p
           for name, p in model.state_dict().items()}
    if model.config.pos_encoding == "sinusoidal":  # the fixed table as GPT-2's position embedding
        out["transformer.wpe.weight"] = model.pe
    return out


def _neox_names(model: GPT) -> dict[str, torch.Tensor]:
    """lmkit tensors under GPT-NeoX's names, ``c_attn`` rows reordered from [3, nh, hs] to [nh, 3, hs]."""
    c = model.config
    nh, hs, C = c.n_head, c.head_size, c.n_embd
    rename = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj": "attention.dense",
              "mlp.c_fc": "mlp.dense_h_to_4h", "mlp.c_proj": "mlp.dense_4h_to_h"}
    out = {"gpt_neox.embed_in.weight": model.transformer.wte.weight,
           "embed_out.weight": model.lm_head.weight}
    for name, p in model.state_dict().items():
        parts = name.split(".")
        if parts[:2] == ["transformer", "ln_f"]:
            out[f"gpt_neox.final_layer_norm.{parts[-1]}"] = p
        elif parts[:2] == ["transformer", "h"]:
            i, inner, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
            if inner == "attn.c_attn":
                p = p.view(3, nh, hs, *p.shape[1:]).transpose(0, 1).reshape(3 * C, *p.shape[1:])  # (nh·3·hs, ...)
                out[f"gpt_neox.layers.{i}.attention.query_key_value.{kind}"] = p
            else:
                out[f"gpt_neox.layers.{i}.{rename[inner]}.{kind}"] = p
    return out


def hf_state_dict(model: GPT, hf_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``hf_model``'s state dict filled with ``model``'s weights (zeros where lmkit has no bias)."""
    arch = architecture_for(model.config)
    ours = _gpt2_names(model) if arch == "gpt2" else _neox_names(model)
    theirs = hf_model.state_dict()
    if "lm_head.weight" in theirs and "embed_out.weight" in ours:  # newer transformers name GPT-NeoX's head so
        ours["lm_head.weight"] = ours.pop("embed_out.weight")
    buffers = dict(hf_model.named_buffers())
    filled, missing = {}, []
    for name, target in theirs.items():
        if name in ours:
            src = ours[name].detach().to("cpu", torch.float32)
            assert src.shape == target.shape, (name, tuple(src.shape), tuple(target.shape))
            filled[name] = src.clone()
        elif name.endswith(".bias") and not model.config.bias:
            filled[name] = torch.zeros_like(target)  # a Linear or LayerNorm without bias = zero bias
        elif name in buffers:
            filled[name] = target  # the model's own constants (causal masks, rotary frequencies)
        else:
            missing.append(name)
    assert not missing, f"no lmkit tensor for {missing[:5]}"  # a mapping bug, not a user's mistake
    return filled


def hf_tokenizer(tokenizer: TokenizerBase, model_max_length: int):
    """A ``PreTrainedTokenizerFast`` that gives exactly lmkit's ids (and text back) for every text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, BPETokenizer):
        backend = Tokenizer.from_str(json.dumps(tokenizer.to_dict()["tokenizer"]))  # the same tokenizers model
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT,
                                       model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    if not isinstance(tokenizer, CharTokenizer):
        raise TypeError(f"cannot export a {type(tokenizer).__name__}; lmkit exports CharTokenizer and BPETokenizer")
    # one token per character: split before every character (newlines included), look it up, join back
    backend = Tokenizer(models.WordLevel({c: i for i, c in enumerate(tokenizer.chars)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False)


def _source(checkpoint_or_model, tokenizer) -> tuple[GPT, TokenizerBase | None]:
    """The model, on the CPU in eval mode (a copy if it was elsewhere), and its tokenizer."""
    if isinstance(unwrap(checkpoint_or_model), GPT):
        model = unwrap(checkpoint_or_model)
        if model.lm_head.weight.device.type != "cpu" or model.training:  # compare in float32 on the CPU, no dropout
            copy = GPT(model.config)
            copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
            model = copy.eval()
    elif isinstance(checkpoint_or_model, (str, os.PathLike)):
        info = read_info(checkpoint_or_model)
        if info.task != "lm":
            raise ValueError(f"{info.path} holds a {info.task} model (a GPT with a classification head); export "
                             f"writes causal language models: export the checkpoint it was fine-tuned from"
                             + (f" ({info.parent})" if info.parent else ""))
        model, saved = load(info)
        if tokenizer is None:
            tokenizer = saved
    else:
        raise TypeError(f"to_hf takes an lmkit GPT or a checkpoint/run folder, got {type(checkpoint_or_model).__name__}")
    if tokenizer is not None and tokenizer.vocab_size != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}; pass the tokenizer the model was trained with")
    return model, tokenizer


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; choose a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose a new folder, or pass overwrite=True "
                         f"(--force) to replace it")


def _probe_ids(cfg: GPTConfig) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=g)  # (2, T): the whole context


def _verify(folder: Path, model: GPT, tokenizer: TokenizerBase | None) -> float:
    """Load the folder with transformers and compare with lmkit: the max |logit difference|."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    idx = _probe_ids(model.config)
    with torch.no_grad():
        ours, theirs = model(idx).logits.float(), hf(idx).logits.float()
    diff = float((ours - theirs).abs().max())
    if not diff <= PARITY_TOLERANCE:
        raise RuntimeError(f"exported model's logits differ from lmkit's by {diff:.2e} (> {PARITY_TOLERANCE}); "
                           f"please report this as a bug")
    if tokenizer is not None:
        probe = "".join(c for c in _PROBE_TEXT if c in tokenizer.chars) if isinstance(tokenizer, CharTokenizer) \
            else _PROBE_TEXT
        ids = AutoTokenizer.from_pretrained(folder, local_files_only=True)(probe, verbose=False)["input_ids"]
        if ids != tokenizer.encode(probe):
            raise RuntimeError("the exported tokenizer encodes differently from lmkit's; please report this as a bug")
    return diff


def _as_umask_allows(folder: Path) -> None:
    """File modes as the umask allows: safetensors writes the weights readable by their owner only,
    which would hide an export from the other users of a shared machine."""
    mask = os.umask(0o022)
    os.umask(mask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~mask)


@contextmanager
def _quiet_transformers():
    """No "Writing model shards" / "Loading weights" bars for the small files of an export."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def to_hf(checkpoint_or_model, out_dir, tokenizer: TokenizerBase | None = None, *,
          overwrite: bool = False) -> ExportResult:
    """Write a Hugging Face model folder (``config.json``, ``model.safetensors``, tokenizer files) that
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` and ``AutoTokenizer.from_pretrained(out_dir)`` load.

    ``checkpoint_or_model``: a checkpoint or run folder (its newest intact checkpoint, with its
    tokenizer), or a ``GPT`` (pass its ``tokenizer`` to include one). Learned or sinusoidal positions
    export as ``GPT2LMHeadModel``, rope as ``GPTNeoXForCausalLM``. The export is loaded back and its
    logits and token ids compared with lmkit's before it is moved into ``out_dir``; nothing is written
    there if a check fails. An existing non-empty ``out_dir`` is replaced only with ``overwrite``.
    """
    from transformers import GPT2LMHeadModel, GPTNeoXForCausalLM

    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    model, tokenizer = _source(checkpoint_or_model, tokenizer)
    arch = architecture_for(model.config)  # refuses what cannot be exported, before anything is written
    hf_cls = GPT2LMHeadModel if arch == "gpt2" else GPTNeoXForCausalLM
    hf = hf_cls(hf_config(model.config, tokenizer))
    hf.load_state_dict(hf_state_dict(model, hf), strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # mkdir keeps the umask (mkdtemp would make the export readable by its owner only)
    try:
        with _quiet_transformers():
            hf.save_pretrained(staging)
            if tokenizer is not None:
                hf_tokenizer(tokenizer, model.config.block_size).save_pretrained(staging)
            diff = _verify(staging, model, tokenizer)
        _as_umask_allows(staging)
        fsync_tree(staging)
        swap_into_place(staging, out, out.parent / f".{out.name}.old-{os.getpid()}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(out.parent / f".{out.name}.old-{os.getpid()}", ignore_errors=True)
    result = ExportResult(out, arch, hf_cls.__name__, diff, tokenizer.kind if tokenizer is not None else None)
    log.debug("exported %s", result)
    return result
