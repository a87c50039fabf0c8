"""A GPT-style decoder-only transformer, written out in forward order.

Follows GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners") with
GPT-2's attribute names (``wte``, ``wpe``, ``h``, ``ln_f``, ``c_attn``, ``c_proj``), so importing
GPT-2 weights is a key-for-key copy. Options cover the variants a learner meets:
positional encoding ``learned`` (GPT-2), ``sinusoidal`` (Vaswani et al. 2017) or ``rope``
(Su et al. 2021); pre-LN (GPT-2) or post-LN (the original Transformer block); tied embeddings;
sliding-window attention (Beltagy et al. 2020, Longformer's local attention).

Shape vocabulary used in comments throughout lmkit:
    B  batch size           T  sequence length (query positions)   S  key positions (T + cached)
    C  channels (n_embd)    nh number of heads                      hs head size (C // nh)
    V  vocabulary size
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Literal, get_args

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .device import available_memory, gib
from .params import is_int

KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k, v), each (B, nh, S, hs)


def causal_mask(T: int, S: int, window: int | None, device=None) -> torch.Tensor:
    """Boolean (T, S) mask, True where query t (at absolute position S - T + t) may attend to key s."""
    q_pos = torch.arange(S - T, S, device=device)[:, None]
    k_pos = torch.arange(S, device=device)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window  # only the `window` most recent positions, itself included
    return allowed


def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """(n_pos, dim) table: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(same)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    table = torch.zeros(n_pos, dim)
    table[:, 0::2] = torch.sin(pos * inv_freq)
    table[:, 1::2] = torch.cos(pos * inv_freq)
    return table


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (B, nh, T, hs) by position-dependent angles (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


PosEncoding = Literal["learned", "sinusoidal", "rope"]  # GPT-2's table, Vaswani's sines, rotary (Su et al.)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 88  # the 88 characters of the Shakespeare corpus; set from the tokenizer
    block_size: int = 128  # context length: a few lines of verse, cheap enough for a laptop CPU
    n_layer: int = 4  # depth: 4 small layers reach val loss ~1.7 (char level) in ~2.5 min on 2 CPU cores
    n_head: int = 4  # heads per layer; head size = n_embd / n_head = 32
    n_embd: int = 128  # width (C); 0.8M parameters at these defaults
    dropout: float = 0.0  # 8.5M training characters and 600 steps: no overfitting to fight
    bias: bool = True  # GPT-2 uses biases in Linear and LayerNorm
    pos_encoding: PosEncoding = "rope"  # "rope" reaches a given loss much sooner than "learned" (GPT-2) or "sinusoidal"
    norm_first: bool = True  # pre-LN (GPT-2) trains stably without warm-up tricks; False = post-LN
    tie_weights: bool = True  # share wte with lm_head: fewer parameters, GPT-2's choice
    attn_window: int | None = None  # None = full causal attention; k = attend to the last k tokens

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"choose n_embd as a multiple of n_head (e.g. {self.n_head * max(1, self.n_embd // self.n_head)})"
            )
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout={self.dropout!r} must be a number in [0, 1)")
        for name in ("bias", "norm_first", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r} must be True or False")
        if self.pos_encoding not in get_args(PosEncoding):
            raise ValueError(
                f"GPTConfig.pos_encoding={self.pos_encoding!r}; use 'learned', 'sinusoidal' or 'rope'"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"GPTConfig: sinusoidal encoding needs an even n_embd, got {self.n_embd}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"GPTConfig: rope needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}"
            )
        if self.attn_window is not None and (not isinstance(self.attn_window, int) or isinstance(self.attn_window, bool)
                                             or self.attn_window < 1):
            raise ValueError(f"GPTConfig.attn_window={self.attn_window!r} must be None or a positive integer")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def parameter_count(self) -> int:
        """Every parameter ``GPT(self)`` has, counted from the config alone (nothing is allocated)."""
        C, b = self.n_embd, int(self.bias)
        layer_norm = C * (1 + b)
        block = 2 * layer_norm + (3 * C * C + 3 * C * b) + (C * C + C * b) + (4 * C * C + 4 * C * b) + (4 * C * C + C * b)
        return (self.vocab_size * C + (self.block_size * C if self.pos_encoding == "learned" else 0)
                + self.n_layer * block + (layer_norm if self.norm_first else 0)
                + (0 if self.tie_weights else self.vocab_size * C))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """Build from a dict, refusing unknown keys by name (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig: unknown key(s) {unknown}; known keys are {sorted(known)}")
        return cls(**d)


@dataclass
class GPTOutput:
    """What ``GPT.forward`` returns, named as in Hugging Face's ``CausalLMOutputWithPast``."""

    logits: torch.Tensor  # (B, T, V)
    loss: torch.Tensor | None = None  # mean cross-entropy over targets != -100
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, nh, T, S), post-softmax
    past_key_values: KVCache | None = None


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.n_head, self.window, self.dropout = cfg.n_head, cfg.attn_window, cfg.dropout

    def forward(self, x, rope=None, past_kv=None, output_attentions=False):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)  # (B, nh, S, hs)
        S = k.size(2)
        if output_attentions:  # explicit path: softmax(QK^T / sqrt(hs) + mask), weights kept
            att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, S)
            att = att.masked_fill(~causal_mask(T, S, self.window, x.device), float("-inf"))
            att = F.softmax(att, dim=-1)
            y = self.attn_dropout(att) @ v  # (B, nh, T, hs)
        else:  # fused path (flash / memory-efficient kernels where available)
            plain_causal = self.window is None and S == T
            mask = None if plain_causal else causal_mask(T, S, self.window, x.device)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=plain_causal,
                dropout_p=self.dropout if self.training else 0.0,
            )
            att = None
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y)), att, (k, v)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Attention then MLP, each in a residual branch; LayerNorm before (pre-LN) or after (post-LN)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)
        self.norm_first = cfg.norm_first

    def forward(self, x, rope=None, past_kv=None, output_attentions=False):
        if self.norm_first:
            a, att, kv = self.attn(self.ln_1(x), rope, past_kv, output_attentions)
            x = x + a
            x = x + self.mlp(self.ln_2(x))
        else:
            a, att, kv = self.attn(x, rope, past_kv, output_attentions)
            x = self.ln_1(x + a)
            x = self.ln_2(x + self.mlp(x))
        return x, att, kv


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT expects a GPTConfig, got {type(cfg).__name__}")
        need, have = 4 * cfg.parameter_count(), available_memory("cpu")  # float32 weights, made here on the CPU
        if have is not None and need > have:
            raise ValueError(f"{cfg} has {cfg.parameter_count():,} parameters: {gib(need)} of float32 weights, "
                             f"but this machine has {gib(have)} of memory available; choose a smaller vocab_size, "
                             f"n_embd, n_layer or block_size")
        self.config = cfg
        # Recompute each block's activations in the backward pass instead of keeping them (Chen et al.
        # 2016): memory for activations falls from every layer's to one layer's plus each block's input,
        # for about one more forward pass of compute. A training setting, not part of the model: the
        # Trainer sets it from TrainConfig.activation_checkpointing.
        self.activation_checkpointing = False
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)]),
            # post-LN blocks already end in a LayerNorm, so only pre-LN needs a final one
            ln_f=nn.LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm_first else nn.Identity(),
        ))
        if cfg.pos_encoding == "learned":
            self.transformer["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        elif cfg.pos_encoding == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.block_size, cfg.n_embd), persistent=False)
        else:  # rope: angles p * theta_i for each position p and channel pair i
            angles = sinusoidal_table(cfg.block_size, cfg.head_size)
            self.register_buffer("rope_sin", angles[:, 0::2], persistent=False)  # (block_size, hs/2)
            self.register_buffer("rope_cos", angles[:, 1::2], persistent=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, output_attentions=False, past_key_values=None, use_cache=False):
        """Next-token logits for idx (B, T) of token ids.

        targets (B, T): ids to predict (-100 = ignore); gives ``.loss``. ``output_attentions=True``
        takes the explicit attention path and returns ``.attentions``, one (B, nh, T, S) tensor of
        probabilities per layer. ``past_key_values``/``use_cache`` carry the KV cache of ``generate``.
        """
        h, attentions, present = self._trunk(idx, output_attentions, past_key_values)
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        return GPTOutput(
            logits=logits, loss=loss,
            attentions=tuple(attentions) if output_attentions else None,
            past_key_values=present if use_cache else None,
        )

    def hidden_states(self, idx) -> torch.Tensor:
        """Final hidden states (B, T, C) of idx (B, T): the output of ``ln_f``, the features that
        ``lm_head`` reads; classifiers (``lmkit.classifier.GPTClassifier``) pool them."""
        return self._trunk(idx)[0]

    def _trunk(self, idx, output_attentions=False, past_key_values=None):
        """Embeddings → blocks → ln_f: ``(hidden (B, T, C), attentions per layer, KV per layer)``."""
        B, T = idx.shape
        past = 0 if past_key_values is None else past_key_values[0][0].size(2)
        if past + T > self.config.block_size:
            raise ValueError(
                f"sequence of {past + T} tokens exceeds block_size={self.config.block_size}; "
                f"crop the input to the last {self.config.block_size} tokens"
            )
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.pos_encoding == "learned":
            x = x + self.transformer.wpe(torch.arange(past, past + T, device=idx.device))
        elif self.config.pos_encoding == "sinusoidal":
            x = x + self.pe[past:past + T]
        else:
            rope = (self.rope_cos[past:past + T], self.rope_sin[past:past + T])  # each (T, hs/2)
        x = self.transformer.drop(x)
        attentions, present = [], []
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if recompute:  # keep only the block's input; its KV is not kept (training has no cache)
                x, att, kv = checkpoint(block, x, rope, None, output_attentions, use_reentrant=False)
                kv = None
            else:
                x, att, kv = block(x, rope, None if past_key_values is None else past_key_values[i], output_attentions)
            attentions.append(att)
            present.append(kv)
        return self.transformer.ln_f(x), attentions, present

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True,
                 generator=None, stop_ids=None):
        """Append up to ``max_new_tokens`` sampled tokens to idx (B, T) and return the (B, T + new) result.

        temperature > 0 scales the logits; ``top_k`` keeps the k most likely tokens (``top_k=1`` is
        greedy decoding); ``top_p`` keeps the smallest set whose probability reaches p (nucleus).
        A prompt longer than block_size is cropped to its last block_size tokens, with a warning.
        With ``use_cache`` each step feeds only the newest token and reuses cached keys and values;
        once the context is full, every step recomputes the last block_size tokens, exactly as the
        uncached path does, so both give the same tokens. ``stop_ids`` (token ids, e.g. a newline's):
        a row that writes one is finished, and is padded with ``stop_ids[0]`` while the others go on;
        generation ends as soon as every row has finished.
        """
        idx = self._check_generate_args(idx, max_new_tokens, temperature, top_k, top_p, stop_ids)
        new = list(self._steps(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, stop_ids))
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, use_cache=True, generator=None,
               stop_ids=None):
        """``generate``, one step at a time: yields each new token (B, 1) as soon as it is sampled."""
        idx = self._check_generate_args(idx, max_new_tokens, temperature, top_k, top_p, stop_ids)
        yield from self._steps(idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, stop_ids)

    def _steps(self, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, stop_ids=None):
        n = self.config.block_size
        if idx.size(1) > n:
            warnings.warn(f"prompt of {idx.size(1)} tokens is longer than block_size={n}; "
                          f"generating from its last {n} tokens", stacklevel=3)
        stop = None if stop_ids is None else torch.tensor(list(stop_ids), device=idx.device)
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
        past = None
        for _ in range(max_new_tokens):
            if past is not None and past[0][0].size(2) < n:
                out = self(idx[:, -1:], past_key_values=past, use_cache=True)
            else:
                out = self(idx[:, -n:], use_cache=use_cache)
            past = out.past_key_values
            next_id = sample_next(out.logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            if stop is not None:
                next_id = torch.where(finished[:, None], stop[0], next_id)
                finished |= torch.isin(next_id[:, 0], stop)
            idx = torch.cat([idx, next_id], dim=1)
            yield next_id
            if stop is not None and bool(finished.all()):
                return

    def _check_generate_args(self, idx, max_new_tokens, temperature, top_k, top_p, stop_ids=None):
        if not torch.is_tensor(idx):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.lm_head.weight.device)
        if idx.dim() == 1:
            idx = idx[None]
        if idx.dim() == 2 and idx.size(1) == 0:
            raise ValueError("the prompt is empty: generation continues a text, so give it at least one token "
                             "(a newline will do)")
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32):
            raise ValueError(f"generate needs a non-empty (B, T) tensor of token ids, got shape "
                             f"{tuple(idx.shape)} and dtype {idx.dtype}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}); got "
                             f"[{int(idx.min())}, {int(idx.max())}] — was the prompt encoded with "
                             f"this model's tokenizer?")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0 (for greedy decoding use top_k=1)")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be None or an integer >= 1")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
        if stop_ids is not None and (isinstance(stop_ids, (str, bytes)) or not list(stop_ids) or not all(
                is_int(t, 0, self.config.vocab_size - 1) for t in stop_ids)):
            raise ValueError(f"stop_ids={stop_ids!r} must be a non-empty list of token ids in "
                             f"[0, {self.config.vocab_size}), e.g. [tokenizer.encode('\\n')[0]]")
        return idx.long()

    @classmethod
    def from_hf_gpt2(cls, model_or_path) -> GPT:
        """Copy a Hugging Face GPT-2 (a ``GPT2LMHeadModel`` or a name/path for ``from_pretrained``).

        GPT-2 stores its projections as ``Conv1D`` with (in, out) weights, so those are transposed.
        """
        from transformers import GPT2LMHeadModel

        hf = model_or_path if isinstance(model_or_path, nn.Module) else GPT2LMHeadModel.from_pretrained(model_or_path)
        c = hf.config
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh") or abs(c.layer_norm_epsilon - 1e-5) > 1e-12:
            raise ValueError(f"unsupported GPT-2 variant: activation {c.activation_function!r}, "
                             f"layer_norm_epsilon {c.layer_norm_epsilon}")
        cfg = GPTConfig(vocab_size=c.vocab_size, block_size=c.n_positions, n_layer=c.n_layer, n_head=c.n_head,
                        n_embd=c.n_embd, dropout=0.0, bias=True, pos_encoding="learned", norm_first=True,
                        tie_weights=c.tie_word_embeddings)
        model = cls(cfg)
        src = hf.state_dict()
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for name, p in model.named_parameters():  # tied lm_head is visited once, as wte
                w = src[name]
                p.copy_(w.t() if name.endswith(transposed) else w)
        return model

    def checkpoint_config(self) -> dict:
        """Entries of a checkpoint's config.json beside the GPTConfig: none for a language model (a
        classifier built on one adds its task and head: ``lmkit.classifier.GPTClassifier``)."""
        return {}

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; ``non_embedding`` leaves out position embeddings (the convention of
        Kaplan et al. 2020, where token embeddings count when tied to the output layer)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per component, in forward order (a tied lm_head counts under wte only)."""
        counts = {"wte (token embedding)": self.transformer.wte.weight.numel()}
        if "wpe" in self.transformer:
            counts["wpe (position embedding)"] = self.transformer.wpe.weight.numel()
        for i, block in enumerate(self.transformer.h):
            counts[f"h.{i}.attn"] = sum(p.numel() for p in block.attn.parameters())
            counts[f"h.{i}.mlp"] = sum(p.numel() for p in block.mlp.parameters())
            counts[f"h.{i}.ln"] = sum(p.numel() for p in (*block.ln_1.parameters(), *block.ln_2.parameters()))
        counts["ln_f"] = sum(p.numel() for p in self.transformer.ln_f.parameters())
        if not self.config.tie_weights:
            counts["lm_head"] = self.lm_head.weight.numel()
        return counts

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6N for the weights (forward + backward) + 12·L·H·Q·T for
        attention scores and values (PaLM, Chowdhery et al. 2022, appendix B)."""
        c = self.config
        T = seq_len or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * c.head_size * T


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """Sample one id per row from logits (B, V) → (B, 1), with temperature, top-k and nucleus filters."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already reaches p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if top_k == 1:  # greedy: argmax, no random draw
        return probs.argmax(dim=-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner
