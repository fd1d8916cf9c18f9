"""Hook points with TransformerLens' names, and the explicitly computed forward pass that fires them.

The model's own forward never comes here unless a hook is registered (`Transformer.hook_fns`, a dict of name ->
functions, empty by default: one truthiness check per forward pass). With hooks, `hooked_features` computes
what `Transformer.features` computes, step by step, and offers every intermediate to the hooks of its name; a
hook `fn(tensor, hook)` may return a replacement (patching, ablation, steering) or None to leave it as it is.
`minigpt.inspect` registers hooks and collects caches over this.

Names and shapes (B batch, T tokens, S key slots, H heads, D head_dim, C n_embd; i the block):

    hook_embed, hook_pos_embed                                  [B, T, C]
    blocks.i.hook_resid_pre / hook_resid_mid / hook_resid_post  [B, T, C]
    blocks.i.ln1.hook_scale, blocks.i.ln2.hook_scale            [B, T, 1]  sqrt(var + eps)
    blocks.i.ln1.hook_normalized, blocks.i.ln2.hook_normalized  [B, T, C]  (x - mean) / scale, before gain and bias
    blocks.i.attn.hook_q / hook_k / hook_v / hook_z             [B, T, H, D]
    blocks.i.attn.hook_attn_scores                              [B, H, T, S]  scaled; masked: the dtype's min
    blocks.i.attn.hook_pattern                                  [B, H, T, S]  softmax of the scores
    blocks.i.attn.hook_result                                   [B, T, H, C]  each head's output (asked for only)
    blocks.i.hook_attn_out, blocks.i.hook_mlp_out               [B, T, C]
    blocks.i.mlp.hook_pre / hook_post                           [B, T, 4C]  before / after the GELU
    ln_final.hook_scale [B, T, 1], ln_final.hook_normalized [B, T, C]

With a KV cache, T is the tokens of this call (the new ones) and S every slot; hook_k/hook_v see this call's keys
and values only. Attention is computed explicitly (scores, softmax, weighted sum) only while a hook asks for the
scores, the pattern or the per-head results; otherwise it stays `scaled_dot_product_attention`. The values at
every name equal TransformerLens 4's `TransformerBridge` on the same checkpoint (tested when it is installed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
BLOCK_HOOKS = ("hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "attn.hook_q", "attn.hook_k",
               "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "attn.hook_result",
               "hook_attn_out", "hook_resid_mid", "ln2.hook_scale", "ln2.hook_normalized", "mlp.hook_pre",
               "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


@dataclass(frozen=True)
class HookPoint:
    """What a hook function is told about where it runs."""

    name: str

    @property
    def layer(self) -> int | None:
        parts = self.name.split(".")
        return int(parts[1]) if parts[0] == "blocks" else None


def hook_names(n_layer: int) -> list[str]:
    """Every hook name of a model with `n_layer` blocks, in the order the forward pass fires them."""
    blocks = [f"blocks.{i}.{name}" for i in range(n_layer) for name in BLOCK_HOOKS]
    return ["hook_embed", "hook_pos_embed", *blocks, "ln_final.hook_scale", "ln_final.hook_normalized"]


def fire(hooks: dict[str, list[HookFn]], name: str, x: Tensor) -> Tensor:
    """Offer `x` to the hooks registered under `name`; each may replace it."""
    for fn in hooks.get(name, ()):
        out = fn(x, HookPoint(name))
        if out is not None:
            x = out
    return x


def hooked_layer_norm(ln: torch.nn.LayerNorm, x: Tensor, hooks: dict, prefix: str) -> Tensor:
    """LayerNorm with its scale sqrt(var + eps) [B, T, 1] and the normalised input [B, T, C] (before the gain and
    bias) offered to the hooks."""
    centred = x - x.mean(-1, keepdim=True)
    scale = fire(hooks, f"{prefix}.hook_scale", (centred.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt())
    return fire(hooks, f"{prefix}.hook_normalized", centred / scale) * ln.weight + ln.bias


def hooked_attention(attn, x: Tensor, mask: Tensor, cache, slots: Tensor | None, hooks: dict, prefix: str) -> Tensor:
    """`CausalSelfAttention.forward`, with q, k, v, scores, pattern, z and per-head results offered to hooks."""
    B, T, C = x.shape
    H = attn.n_head
    D = C // H
    q, k, v = attn.c_attn(x).split(C, dim=2)  # 3 x [B, T, C]
    q = fire(hooks, f"{prefix}.hook_q", q.view(B, T, H, D))  # [B, T, H, D]
    k = fire(hooks, f"{prefix}.hook_k", k.view(B, T, H, D))
    v = fire(hooks, f"{prefix}.hook_v", v.view(B, T, H, D))
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
    if cache is not None:
        k, v = cache.write(attn.layer_idx, slots, k, v)  # [B, H, S, D]
    explicit = any(f"{prefix}.{name}" in hooks for name in ("hook_attn_scores", "hook_pattern", "hook_result"))
    if explicit:
        scores = (q @ k.transpose(-1, -2)) * attn.scale  # [B, H, T, S]
        scores = fire(hooks, f"{prefix}.hook_attn_scores", scores.masked_fill(~mask, torch.finfo(scores.dtype).min))
        pattern = fire(hooks, f"{prefix}.hook_pattern", scores.softmax(-1))  # [B, H, T, S]
        z = pattern @ v  # [B, H, T, D]
    else:
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    z = fire(hooks, f"{prefix}.hook_z", z.transpose(1, 2))  # [B, T, H, D]
    if f"{prefix}.hook_result" in hooks:
        result = fire(hooks, f"{prefix}.hook_result", head_results(attn.c_proj, z))  # [B, T, H, C]
        return result.sum(2) + attn.c_proj.bias
    return attn.c_proj(z.reshape(B, T, C))  # [B, T, C]


def head_results(c_proj, z: Tensor) -> Tensor:
    """Each head's output in the residual stream [B, T, H, C]: its z [B, T, H, D] through its rows of the output
    projection (bias not included)."""
    w = c_proj.weight
    if not w.is_floating_point():  # an int8 model: the weight its int8 values stand for
        w = c_proj.dequantized(z.dtype).t()
    w = w.to(z.dtype).reshape(z.shape[2], z.shape[3], -1)  # [in = (H, D), out]
    return torch.einsum("bthd,hdc->bthc", z, w)


def hooked_block(block, x: Tensor, mask: Tensor, cache, slots: Tensor | None, hooks: dict, i: int) -> Tensor:
    """`Block.forward` with every intermediate offered to the hooks of block `i`."""
    p = f"blocks.{i}"
    x = fire(hooks, f"{p}.hook_resid_pre", x)
    attn_out = hooked_attention(block.attn, hooked_layer_norm(block.ln_1, x, hooks, f"{p}.ln1"), mask, cache,
                                slots, hooks, f"{p}.attn")
    x = fire(hooks, f"{p}.hook_resid_mid", x + fire(hooks, f"{p}.hook_attn_out", attn_out))
    pre = fire(hooks, f"{p}.mlp.hook_pre", block.mlp.c_fc(hooked_layer_norm(block.ln_2, x, hooks, f"{p}.ln2")))
    post = fire(hooks, f"{p}.mlp.hook_post", F.gelu(pre, approximate="tanh"))  # [B, T, 4C]
    mlp_out = fire(hooks, f"{p}.hook_mlp_out", block.mlp.c_proj(post))
    return fire(hooks, f"{p}.hook_resid_post", x + mlp_out)


def hooked_features(model, input_ids: Tensor, position_ids: Tensor, mask: Tensor, cache,
                    slots: Tensor | None) -> Tensor:
    """`Transformer.features` (final hidden states [B, T, C]) with every hook point fired."""
    hooks = model.hook_fns
    embed = fire(hooks, "hook_embed", model.wte(input_ids))  # [B, T, C]
    x = embed + fire(hooks, "hook_pos_embed", model.wpe(position_ids).expand_as(embed))
    for i, block in enumerate(model.h):
        x = hooked_block(block, x, mask, cache, slots, hooks, i)
    return hooked_layer_norm(model.ln_f, x, hooks, "ln_final")
