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
from torch.utils.checkpoint import checkpoint

from .config import GPTConfig
from .head import summed_nll, token_logprobs
from .hooks import hooked_features
from .kernels import Conv1D, init_normal_, matmul_in_out


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


def add_projection(residual: Tensor, layer: nn.Module, x: Tensor) -> Tensor:
    """residual + layer(x), the addition fused into the product where the layer can (`Conv1D`; not int8's)."""
    return layer(x, residual) if isinstance(layer, Conv1D) else residual + layer(x)


def one_query_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    """Attention of one query per row, q [B, H, 1, D], over cache slots k, v [B, H, L, D] with the additive float
    mask [B, 1, 1, L] -> [B, H, 1, D]: a decoding step's attention.

    Eager: `F.scaled_dot_product_attention` (forward's numbers, bit for bit). In a compiled CPU step: the same
    attention written out as reductions, which inductor fuses into two loops over the slots: SDPA's CPU kernel
    is an opaque call of ~100 us per layer at one row over the static 256-slot cache and ~400 us at five rows,
    1 and 4.5 ms of a gpt2 step (2-core EPYC); written out, its softmax sums in another order (fp32 rounding)."""
    if not (torch.compiler.is_compiling() and q.device.type == "cpu"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    # in fp32 whatever the model's dtype, as SDPA's CPU kernel accumulates (the casts fuse into the loops)
    scores = (q.float() * k.float()).sum(-1, keepdim=True) * scale + mask.transpose(-1, -2).float()  # [B, H, L, 1]
    weights = scores.softmax(dim=-2)  # [B, H, L, 1]
    return (weights * v.float()).sum(-2, keepdim=True).to(q.dtype)  # [B, H, 1, D]


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


class Transformer(nn.Module):
    """GPT-2's network with its tied LM head: `model(input_ids)` returns logits [B, T, V].

    Users meet it as `minigpt.GPT`, which adds `from_pretrained` / `save_pretrained` (`minigpt.loading`) and
    `generate` (`minigpt.inference.generation`); this module knows nothing of those."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # One copy of the tied matrix, [V, C] as checkpoints store it: the LM head reads it through its [C, V]
        # view (`lm_head`). `minigpt.kernels` may re-lay it out [C, V] at load when that measured faster.
        self.head_kernel = "in_out_split"  # as Conv1D.kernel, for the LM head
        self.head_one_row_loops = False  # as Conv1D.one_row_loops, for the LM head
        init_normal_(self.wte.weight, std=0.02)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        init_normal_(self.wpe.weight, std=0.01)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.int8_head: nn.Module | None = None  # set by `minigpt.quantize.quantize_`: an int8 copy of the head
        self.hook_fns: dict = {}  # hook name -> functions (`minigpt.hooks`); empty: the fast path below runs
        # Training only: keep each block's input, not its activations, and recompute them in backward
        # (less memory for long sequences / big models, one more forward of compute).
        self.gradient_checkpointing = False

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
        return matmul_in_out(x, self.wte.weight.t(), self.head_kernel, loops=self.head_one_row_loops)  # [C, V]

    def token_logprobs(self, hidden: Tensor, targets: Tensor, *, temperature: float = 1.0,
                       entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """log p(target) [N] from final hidden states [N, C] at `temperature` (and each row's entropy [N] with
        `entropy`), chunked so the [N, V] logits never exist at once (`minigpt.head`); what every loss uses."""
        if self.int8_head is not None:  # an inference-only model: the plain path through its int8 head
            logps = (self.lm_head(hidden).float() / temperature).log_softmax(-1)  # [N, V]
            ent = -(logps.exp() * logps).sum(-1) if entropy else None
            return logps.gather(-1, targets[:, None])[:, 0], ent
        return token_logprobs(hidden, self.wte.weight, targets, temperature=temperature, entropy=entropy,
                              kernel=self.head_kernel)

    def summed_nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """The summed next-token cross entropy of targets [N] from final hidden states [N, C], chunked, its gradient
        formed in the same pass (`minigpt.head.summed_nll`): the SFT / pretraining loss."""
        if self.int8_head is not None:
            return -self.token_logprobs(hidden, targets)[0].sum()
        return summed_nll(hidden, self.wte.weight, targets, kernel=self.head_kernel)

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

    @torch.no_grad()
    def decode(self, tokens: Tensor, positions: Tensor, cache: KVCache, slot: int | Tensor, key_valid: Tensor
               ) -> Tensor:
        """Logits [B, V] after one new token per row: tokens [B] at position ids positions [B], written at cache
        slot `slot` (an int, or a one-element tensor [1] in a compiled step, where the slot is an input, not a
        constant); key_valid bool [B, L]: the slots holding real tokens, this one included.

        gpt-fast's split: the same numbers as `forward(tokens[:, None], key_valid, position_ids=positions[:, None],
        cache=cache, cache_slots=tensor([slot]), last_only=True)[:, -1]`, bit for bit (tested), with less work
        around the products. A batch-1 step is 49 memory-bound products and ~400 small ops between them; here the
        residual additions are fused into the products (`Conv1D`'s oneDNN kernel), q/k/v are views of one
        [B, 3, H, D], the cache is written by slice, and the attention mask is made once, as the additive float
        mask SDPA would make from the boolean one in every layer: 0-5% of a gpt2 step on a 2-core CPU (interleaved
        runs; a step's time is mostly its products, see docs/performance.md).
        Hooks (interpretability) take `forward`'s path, which fires them."""
        if self.hook_fns:
            slots = slot if isinstance(slot, Tensor) else torch.tensor([slot], device=tokens.device)
            return self(tokens[:, None], key_valid, position_ids=positions[:, None], cache=cache,
                        cache_slots=slots, last_only=True)[:, -1]
        B, C, H = tokens.shape[0], self.config.n_embd, self.config.n_head
        mask = torch.zeros(key_valid.shape, dtype=self.dtype, device=key_valid.device)
        mask = mask.masked_fill_(~key_valid, float("-inf"))[:, None, None, :]  # [B, 1, 1, L]
        x = (self.wte(tokens) + self.wpe(positions))[:, None]  # [B, 1, C]
        for i, block in enumerate(self.h):
            attn, mlp = block.attn, block.mlp
            qkv = attn.c_attn(block.ln_1(x)).reshape(B, 3, H, C // H)  # [B, 3, H, D]
            if isinstance(slot, Tensor):  # (a compiled step: the slot is an input)
                cache.write(i, slot, qkv[:, 1, :, None], qkv[:, 2, :, None])  # [B, H, 1, D] into [B, H, L, D]
            else:
                cache.keys[i][:, :, slot] = qkv[:, 1]
                cache.values[i][:, :, slot] = qkv[:, 2]
            y = one_query_attention(qkv[:, 0, :, None], cache.keys[i], cache.values[i], mask, attn.scale)
            x = add_projection(x, attn.c_proj, y.transpose(1, 2).reshape(B, 1, C))  # x + attention
            x = add_projection(x, mlp.c_proj, F.gelu(mlp.c_fc(block.ln_2(x)), approximate="tanh"))  # x + MLP
        return self.lm_head(self.ln_f(x))[:, -1]  # [B, V]

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
        if cache is not None or key_valid is not None or self.hook_fns:
            mask = build_attention_mask(query_slots, key_valid, num_keys)
        if self.hook_fns:  # interpretability hooks (minigpt.inspect): the same computation, step by step, hooked
            return hooked_features(self, input_ids, position_ids, mask, cache, cache_slots)

        x = self.wte(input_ids) + self.wpe(position_ids)  # [B, T, C]
        recompute = self.gradient_checkpointing and cache is None and torch.is_grad_enabled()
        for block in self.h:
            if recompute:
                x = checkpoint(block, x, mask, use_reentrant=False)  # [B, T, C], activations recomputed in backward
            else:
                x = block(x, mask, cache, cache_slots)
        return self.ln_f(x)  # [B, T, C]
