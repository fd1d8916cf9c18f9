"""GPT-2 in one readable file: embeddings, pre-LayerNorm blocks, causal attention, tied LM head, KV cache.

Parameter names and shapes are HuggingFace's (`wte`, `wpe`, `h.N.ln_1`, `h.N.attn.c_attn`, ...; projection
weights stored [in, out] as GPT-2's Conv1D stores them), so a hub checkpoint maps onto this module by dropping a
`transformer.` prefix. Weights are seen [in, out]; how they are stored and multiplied: `minigpt.kernels`.

Shapes: B batch, T new tokens, S key slots (T without a cache, the cache's length with one),
H heads, D head_dim, C n_embd, V vocab_size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import GPTConfig
from .kernels import matmul_in_out


@dataclass
class KVCache:
    """Preallocated keys and values for every layer, written in place at explicit slots.

    A plain object, not a module: it never enters the state dict and is made per generation call.
    `keys[i]` and `values[i]` are [B, H, L, D]; slot j holds the token at column j of the running sequence.
    """

    keys: list[Tensor]
    values: list[Tensor]

    @classmethod
    def allocate(
        cls, config: GPTConfig, batch_size: int, max_len: int, *, device: torch.device, dtype: torch.dtype
    ) -> "KVCache":
        if max_len > config.n_positions:
            raise ValueError(f"cache length {max_len} exceeds the model's {config.n_positions} positions")
        shape = (batch_size, config.n_head, max_len, config.head_dim)
        keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        return cls(keys, values)

    @property
    def max_len(self) -> int:
        return self.keys[0].shape[2]

    def write(self, layer: int, slots: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v [B, H, T, D] at `slots` [T]; return the layer's whole cache [B, H, L, D]."""
        self.keys[layer].index_copy_(2, slots, k)
        self.values[layer].index_copy_(2, slots, v)
        return self.keys[layer], self.values[layer]

    def reorder(self, rows: Tensor) -> None:
        """Keep (or repeat) batch rows `rows` [B'] of every layer, e.g. to expand one prompt to N samples."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]


def init_normal_(weight: Tensor, std: float) -> None:
    """Random normal init, skipped on the meta device (a model built there to receive a checkpoint)."""
    if not weight.is_meta:
        nn.init.normal_(weight, std=std)


class Conv1D(nn.Module):
    """y = x @ weight + bias with weight stored [in, out], the layout GPT-2 checkpoints use (no transposes)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))  # [in, out]; its storage may be [out, in] (kernels)
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.split = True  # float32 CPU: the split GEMV unless `choose_layouts_` measured something faster
        init_normal_(self.weight, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return matmul_in_out(x, self.weight, self.split) + self.bias  # [..., out]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.layer_idx = layer_idx
        self.scale = config.head_dim**-0.5 if config.scale_attn_weights else 1.0
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)  # x -> q, k, v
        self.c_proj = Conv1D(config.n_embd, config.n_embd)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, slots: Tensor | None = None
    ) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x [B, T, C]
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # [B, H, T, D]
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # [B, H, T, D]
        if cache is not None:
            k, v = cache.write(self.layer_idx, slots, k, v)  # [B, H, L, D]
        # mask None means plain causal attention over these T tokens (no cache, no padding).
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=self.scale)
        y = y.transpose(1, 2).reshape(B, T, C)  # [B, T, C]
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, config.mlp_width)
        self.c_proj = Conv1D(config.mlp_width, config.n_embd)

    def forward(self, x: Tensor) -> Tensor:
        # GPT-2's GELU is the tanh approximation ("gelu_new"), not the exact erf form.
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: Tensor, mask: Tensor | None, cache: KVCache | None = None, slots: Tensor | None = None
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, slots)
        return x + self.mlp(self.ln_2(x))


def attention_mask_to_positions(attention_mask: Tensor) -> Tensor:
    """Position ids [B, S] that skip padding: a left-padded row gets the positions it has unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def build_attention_mask(query_slots: Tensor, key_valid: Tensor | None, num_keys: int) -> Tensor:
    """Boolean mask [B or 1, 1, T, S]: a query sees valid keys at or before its own slot.

    A padded query always sees itself, so its row is never empty (no NaN from an all-masked softmax).
    """
    key_slots = torch.arange(num_keys, device=query_slots.device)  # [S]
    causal = key_slots[None, :] <= query_slots[:, None]  # [T, S]
    if key_valid is None:
        return causal[None, None]  # [1, 1, T, S]
    own = key_slots[None, :] == query_slots[:, None]  # [T, S]
    allowed = causal[None] & (key_valid[:, None, :].bool() | own[None])  # [B, T, S]
    return allowed[:, None]  # [B, 1, T, S]


class GPT(nn.Module):
    """GPT-2 language model. `model(input_ids)` returns logits [B, T, V]."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # One copy of the tied matrix, [V, C] as checkpoints store it: the LM head reads it through its [C, V]
        # view (`lm_head`). `minigpt.kernels` may re-lay it out [C, V] at load when that measured faster.
        self.split_head = True  # as Conv1D.split, for the LM head when it is stored [C, V]
        init_normal_(self.wte.weight, std=0.02)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        init_normal_(self.wpe.weight, std=0.01)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.int8_head: nn.Module | None = None  # set by `minigpt.quantize.quantize_`: an int8 copy of the head

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> "GPT":
        """Load a hub id, a local directory or a `.safetensors` file (see `minigpt.loading.load_pretrained`)."""
        from .loading import load_pretrained

        return load_pretrained(name_or_path, device=device, dtype=dtype, revision=revision, **kwargs)

    def save_pretrained(self, directory: str, *, tokenizer=None, template=None) -> None:
        """Write the hub layout (model.safetensors + config.json, vocab files, template) atomically."""
        from .checkpoint import save_pretrained

        save_pretrained(self, directory, tokenizer=tokenizer, template=template)

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        repetition_penalty: float = 1.0,
        num_return_sequences: int = 1,
        attention_mask: Tensor | None = None,
        eos_token_id: int | None = None,
        stop: list[list[int]] | None = None,
        seed: int | None = None,
        context: str = "error",
        num_beams: int = 1,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        no_repeat_ngram_size: int = 0,
        min_new_tokens: int = 0,
        bad_words_ids: list[list[int]] | None = None,
        min_p: float | None = None,
        typical_p: float | None = None,
        return_dict: bool = False,
    ):
        """Prompt + continuation, LongTensor [B * num_return_sequences, T + new], KV-cached.

        Greedy unless `do_sample`; beam search with `num_beams > 1` (`length_penalty`, `early_stopping` True /
        False / "never", as transformers). Left-pad ragged prompts and pass `attention_mask`. A row stops at
        `eos_token_id` or when it ends with one of the `stop` id sequences, and is padded with EOS after.
        Processors as transformers': `repetition_penalty`, `no_repeat_ngram_size`, `bad_words_ids`,
        `min_new_tokens`, then (sampling) temperature, `top_k`, `top_p`, `min_p`, `typical_p`.
        `context` is the policy when prompt + max_new_tokens passes n_positions: "error" or "truncate".
        `return_dict=True` returns a `minigpt.generation.GenerateOutput` (`sequences`, `sequences_scores`,
        `token_logprobs`).
        """
        from .generation import generate, stop_sequences_check
        from .sampling import SamplingParams

        params = SamplingParams(do_sample, temperature, top_k, top_p, repetition_penalty,
                                no_repeat_ngram_size=no_repeat_ngram_size, min_new_tokens=min_new_tokens,
                                bad_words_ids=tuple(tuple(w) for w in bad_words_ids or ()), min_p=min_p,
                                typical_p=typical_p)
        return generate(
            self, input_ids, max_new_tokens, params=params, num_return_sequences=num_return_sequences,
            attention_mask=attention_mask, eos_token_id=eos_token_id,
            stop=stop_sequences_check(stop) if stop else None, seed=seed, context=context, num_beams=num_beams,
            length_penalty=length_penalty, early_stopping=early_stopping, return_dict=return_dict,
        )

    def generate_stream(self, input_ids: Tensor, max_new_tokens: int, **kwargs):
        """Yield each step's new tokens [B * N] and finished flags; arguments as `minigpt.generation.stream`."""
        from .generation import stream

        return stream(self, input_ids, max_new_tokens, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    @property
    def quantized(self) -> bool:
        """Whether `minigpt.quantize.quantize_` replaced the projections (an inference-only model)."""
        return self.int8_head is not None

    def lm_head(self, x: Tensor) -> Tensor:
        """Logits [B, T, V] from final hidden states [B, T, C]; the output matrix is tied to `wte`."""
        if self.int8_head is not None:
            return self.int8_head(x)
        return matmul_in_out(x, self.wte.weight.t(), self.split_head)  # [C, V], stored either way

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        cache_slots: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits [B, T, V] (or [B, 1, V] with `last_only`) for `input_ids` [B, T].

        attention_mask: [B, S] with 1 for real tokens and 0 for padding. Without a cache S = T; with one it
            covers every cache slot written so far and now (S <= cache.max_len).
        cache, cache_slots: write this step's keys/values at slots [T] of `cache` and attend over it.
        """
        x = self.features(input_ids, attention_mask, position_ids=position_ids, cache=cache, cache_slots=cache_slots)
        if last_only:
            x = x[:, -1:]  # [B, 1, C]
        return self.lm_head(x)  # [B, T, V]

    def features(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cache: KVCache | None = None,
        cache_slots: Tensor | None = None,
    ) -> Tensor:
        """Final hidden states [B, T, C] (after ln_f): what the LM head reads. Arguments as `forward`."""
        B, T = input_ids.shape
        if cache is None:
            if T > self.config.n_positions:
                raise ValueError(f"input of {T} tokens exceeds the model's {self.config.n_positions} positions")
            query_slots = torch.arange(T, device=input_ids.device)
            num_keys = T
        else:
            if cache_slots is None:
                raise ValueError("cache_slots is required with a cache")
            query_slots = cache_slots
            num_keys = cache.max_len

        key_valid = None
        if attention_mask is not None:
            if attention_mask.shape[1] < num_keys:  # slots not written yet count as padding
                attention_mask = F.pad(attention_mask, (0, num_keys - attention_mask.shape[1]))
            key_valid = attention_mask.bool()
        if position_ids is None:
            if key_valid is not None:
                position_ids = attention_mask_to_positions(key_valid)[:, query_slots]  # [B, T]
            else:
                position_ids = query_slots[None, :]  # [1, T]

        mask = None
        if cache is not None or key_valid is not None:
            mask = build_attention_mask(query_slots, key_valid, num_keys)

        x = self.wte(input_ids) + self.wpe(position_ids)  # [B, T, C]
        for block in self.h:
            x = block(x, mask, cache, cache_slots)
        return self.ln_f(x)  # [B, T, C]
