"""Look inside GPT-2: hooks with TransformerLens' names, `run_with_cache`, patching and the logit lens.

Every number is the model's own (no folded or centred weights, no BOS prepended): the cached activations are
what `model(input_ids)` computes, and so transformers' numbers. Hook names and shapes: `minigpt.hooks`.

    logits, cache = model.run_with_cache(ids)                 # every hook point, or names_filter=...
    cache["blocks.3.attn.hook_pattern"]                       # [B, H, T, T]; also cache["pattern", 3]
    model.run_with_hooks(ids, fwd_hooks=[("blocks.3.hook_resid_post", patch)])   # fn(tensor, hook) -> new or None
    with model.hooks([(lambda name: name.endswith("hook_z"), fn)]): ...          # removed on exit, even on errors
    logit_lens(model, cache)                                  # [L + 1, B, T, V]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from ..hooks import HookFn, HookPoint, head_results, hook_names

NameOrFilter = str | Callable[[str], bool]


def _resolve(model, name_or_filter: NameOrFilter) -> list[str]:
    names = hook_names(model.config.n_layer)
    if callable(name_or_filter):
        return [n for n in names if name_or_filter(n)]
    if name_or_filter not in names:
        raise KeyError(f"no hook point {name_or_filter!r}; GPT-2's are hook_embed, blocks.N.hook_resid_pre, "
                       "blocks.N.attn.hook_pattern, ... (minigpt.hooks lists them all)")
    return [name_or_filter]


@contextmanager
def hooks(model, fwd_hooks: Sequence[tuple[NameOrFilter, HookFn]]) -> Iterator[None]:
    """Register `fwd_hooks` [(name or filter(name) -> bool, fn(tensor, hook) -> replacement or None)] for the
    body of the `with`; they are removed afterwards, also when the body raises."""
    added: list[tuple[str, HookFn]] = []
    try:
        for name_or_filter, fn in fwd_hooks:
            for name in _resolve(model, name_or_filter):
                model.hook_fns.setdefault(name, []).append(fn)
                added.append((name, fn))
        yield
    finally:
        for name, fn in added:
            fns = model.hook_fns.get(name, [])
            if fn in fns:
                fns.remove(fn)
            if not fns:
                model.hook_fns.pop(name, None)


def run_with_hooks(model, input_ids: Tensor, fwd_hooks: Sequence[tuple[NameOrFilter, HookFn]],
                   **forward_kwargs) -> Tensor:
    """`model(input_ids, **forward_kwargs)` with `fwd_hooks` in place (activation patching, ablation, steering)."""
    with torch.no_grad(), hooks(model, fwd_hooks):
        return model(input_ids, **forward_kwargs)


def run_with_cache(model, input_ids: Tensor, names_filter: NameOrFilter | Sequence[str] | None = None,
                   **forward_kwargs) -> tuple[Tensor, "ActivationCache"]:
    """(logits, ActivationCache) of one forward pass: every hook point (but `attn.hook_result`, [B, T, H, C] per
    layer, cached only when named), or those `names_filter` keeps (a name, a list of names, or a function)."""
    if names_filter is None:  # every hook point but the per-head results (off unless asked for, as TransformerLens)
        wanted: NameOrFilter = lambda name: not name.endswith("hook_result")  # noqa: E731
    elif isinstance(names_filter, (list, tuple, set)):
        keep = set(names_filter)
        wanted = keep.__contains__
    else:
        wanted = names_filter
    store: dict[str, Tensor] = {}

    def save(tensor: Tensor, hook: HookPoint) -> None:
        store[hook.name] = tensor.detach()

    logits = run_with_hooks(model, input_ids, [(wanted, save)], **forward_kwargs)
    return logits, ActivationCache(store, model)


class ActivationCache(Mapping):
    """The activations of one forward pass by hook name; `cache["pattern", 3]` is `blocks.3.attn.hook_pattern`."""

    def __init__(self, store: dict[str, Tensor], model) -> None:
        self.store = store
        self.model = model
        self.n_layer = model.config.n_layer

    def _name(self, key) -> str:
        if isinstance(key, str):
            return key
        short, layer, *sub = key
        prefix = f"blocks.{layer}." if layer is not None else ""
        for name in self.store:
            if name.startswith(prefix) and name.endswith(f"hook_{short}") and (not sub or f".{sub[0]}." in name):
                return name
        raise KeyError(f"nothing cached for {key!r}")

    def __getitem__(self, key) -> Tensor:
        return self.store[self._name(key)]

    def __iter__(self):
        return iter(self.store)

    def __len__(self) -> int:
        return len(self.store)

    def accumulated_resid(self, layer: int | None = None, *, incl_mid: bool = False,
                          return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """The residual stream before each block up to `layer` (all blocks and the final one by default):
        [n, B, T, C], with `incl_mid` the mid-block residuals too (TransformerLens' semantics and labels)."""
        layer = self.n_layer if layer is None else layer
        parts, labels = [], []
        for i in range(layer):
            parts.append(self[f"blocks.{i}.hook_resid_pre"])
            labels.append(f"{i}_pre")
            if incl_mid:
                parts.append(self[f"blocks.{i}.hook_resid_mid"])
                labels.append(f"{i}_mid")
        if layer == self.n_layer:
            parts.append(self[f"blocks.{self.n_layer - 1}.hook_resid_post"])
            labels.append("final_post")
        else:
            parts.append(self[f"blocks.{layer}.hook_resid_pre"])
            labels.append(f"{layer}_pre")
        stack = torch.stack(parts)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, *, incl_embeds: bool = True,
                        return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """What the residual stream before block `layer` (the final one by default) is the sum of: the token and
        position embeddings, then each earlier block's attention and MLP output: [n, B, T, C]."""
        layer = self.n_layer if layer is None else layer
        parts, labels = [], []
        if incl_embeds:
            parts += [self["hook_embed"], self["hook_pos_embed"]]
            labels += ["embed", "pos_embed"]
        for i in range(layer):
            parts += [self[f"blocks.{i}.hook_attn_out"], self[f"blocks.{i}.hook_mlp_out"]]
            labels += [f"{i}_attn_out", f"{i}_mlp_out"]
        stack = torch.stack(parts)
        return (stack, labels) if return_labels else stack


    def stack_head_results(self, layer: int | None = None, *,
                           return_labels: bool = False) -> Tensor | tuple[Tensor, list[str]]:
        """Each head's output in the residual stream ([B, T, C] each, its z through its rows of c_proj, bias not
        included) for every block before `layer` (all by default): [n_heads * layers, B, T, C], labels L{l}H{h}."""
        layer = self.n_layer if layer is None else layer
        parts, labels = [], []
        for i in range(layer):
            result = self.store.get(f"blocks.{i}.attn.hook_result")
            if result is None:
                result = head_results(self.model.h[i].attn.c_proj, self[f"blocks.{i}.attn.hook_z"])
            parts += list(result.unbind(2))
            labels += [f"L{i}H{h}" for h in range(result.shape[2])]
        stack = torch.stack(parts)
        return (stack, labels) if return_labels else stack

    def apply_ln_to_stack(self, stack: Tensor, layer: int | None = None, *, mlp_input: bool = False) -> Tensor:
        """Components [n, B, T, C] as the LayerNorm before block `layer` (the final one by default; ln2 with
        `mlp_input`) sees them: each centred and divided by that LayerNorm's cached scale, so they add up to the
        normalised residual before its gain and bias (TransformerLens' semantics)."""
        name = "ln_final" if layer is None else f"blocks.{layer}.{'ln2' if mlp_input else 'ln1'}"
        centred = stack - stack.mean(-1, keepdim=True)
        return centred / self[f"{name}.hook_scale"]

    def _unembedding(self, tokens: int | Tensor, incorrect_tokens: int | Tensor | None) -> Tensor:
        """The unembedding column of each token (minus the incorrect one's): [..., C]."""
        w_u = self.model.wte.weight  # [V, C]: the tied unembedding, one row per token
        directions = w_u[torch.as_tensor(tokens, device=w_u.device)]
        if incorrect_tokens is not None:
            directions = directions - w_u[torch.as_tensor(incorrect_tokens, device=w_u.device)]
        return directions

    def logit_attrs(self, stack: Tensor, tokens: int | Tensor, incorrect_tokens: int | Tensor | None = None) -> Tensor:
        """Direct logit attribution: each component's [n, B, T, C] share of the logit of `tokens` (an id, or ids
        [B] or [B, T]), or of the logit difference to `incorrect_tokens`: [n, B, T]. With the final LayerNorm
        applied (`apply_ln_to_stack`); the components of `decompose_resid()` add up to the logit (difference)
        less `ln_bias_attr`, the part the LayerNorm's bias adds, which no component owns."""
        directions = self._unembedding(tokens, incorrect_tokens) * self.model.ln_f.weight  # through ln_f's gain
        if directions.dim() == 2:  # one token per row: the same direction at every position
            directions = directions[:, None, :]
        return (self.apply_ln_to_stack(stack) * directions).sum(-1)

    def ln_bias_attr(self, tokens: int | Tensor, incorrect_tokens: int | Tensor | None = None) -> Tensor:
        """What ln_f's bias adds to the logit (difference) of `tokens`: b . W_U[:, t] (- b . W_U[:, t'])."""
        return self._unembedding(tokens, incorrect_tokens) @ self.model.ln_f.bias


@torch.no_grad()
def logit_lens(model, cache: ActivationCache) -> Tensor:
    """Each accumulated residual read out as if it were the last: ln_f, then the unembedding: [L + 1, B, T, V]
    (the last entry is the model's logits)."""
    return torch.stack([model.lm_head(model.ln_f(resid)) for resid in cache.accumulated_resid()])


class InspectMixin:
    """`run_with_cache`, `run_with_hooks` and `hooks` as methods of a model class built on
    `minigpt.model.Transformer` (this module never imports that class)."""

    def run_with_cache(self, input_ids: Tensor, names_filter=None, **forward_kwargs):
        return run_with_cache(self, input_ids, names_filter, **forward_kwargs)

    def run_with_hooks(self, input_ids: Tensor, fwd_hooks, **forward_kwargs) -> Tensor:
        return run_with_hooks(self, input_ids, fwd_hooks, **forward_kwargs)

    def hooks(self, fwd_hooks):
        return hooks(self, fwd_hooks)


__all__ = ["ActivationCache", "HookPoint", "InspectMixin", "hooks", "logit_lens", "run_with_cache", "run_with_hooks"]
