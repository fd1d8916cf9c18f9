"""Pictures of one prompt's forward pass: attention patterns per head, a logit-lens table and the heads that
write the prediction, as PNG files and one self-contained HTML page (the images inlined: no network needed).

matplotlib is an optional extra (`pip install "minigpt[inspect]"`); `minigpt.extras.MissingExtra` says so in one line.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..extras import pyplot
from . import ActivationCache, logit_lens, run_with_cache


@dataclass
class Pictures:
    """What `draw` wrote: image files (name -> path) and the page."""

    images: dict[str, Path] = field(default_factory=dict)
    page: Path | None = None


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    return [repr(tokenizer.decode([i]))[1:-1] or "∅" for i in ids]


def attention_figure(plt, cache: ActivationCache, layer: int, labels: list[str]):
    """One layer's attention patterns, a panel per head: queries down, keys across."""
    pattern = cache["pattern", layer][0].float().cpu()  # [H, T, T]
    heads = pattern.shape[0]
    cols = min(heads, 4)
    rows = -(-heads // cols)
    size = 1.2 + 0.22 * len(labels)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= heads:
            ax.axis("off")
            continue
        ax.imshow(pattern[h], vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"L{layer}H{h}", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.suptitle(f"layer {layer}: attention (rows: queries, columns: keys)")
    fig.tight_layout()
    return fig


def lens_figure(plt, model, cache: ActivationCache, tokenizer, labels: list[str]):
    """Logit lens: each layer's top next-token guess at each position, coloured by its probability."""
    probs = logit_lens(model, cache)[:, 0].float().softmax(-1).cpu()  # [L + 1, T, V]
    top_p, top_id = probs.max(-1)  # [L + 1, T]
    layers, positions = top_p.shape
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * positions, 0.8 + 0.35 * layers))
    ax.imshow(top_p, vmin=0, vmax=1, cmap="Greens", aspect="auto")
    for layer in range(layers):
        for t in range(positions):
            word = repr(tokenizer.decode([int(top_id[layer, t])]))[1:-1][:8]
            ax.text(t, layer, word, ha="center", va="center", fontsize=6)
    ax.set_xticks(range(positions), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(layers), [f"{i} pre" for i in range(layers - 1)] + ["final"], fontsize=7)
    ax.set_title("logit lens: top next token after each layer (colour: its probability)")
    fig.tight_layout()
    return fig


def head_attribution(model, cache: ActivationCache, logits: torch.Tensor, top: int):
    """(labels, values) of the `top` heads by direct logit attribution to the prediction at the last position."""
    target = int(logits[0, -1].argmax())
    heads, labels = cache.stack_head_results(return_labels=True)
    attrs = cache.logit_attrs(heads[:, :, -1:], target)[:, 0, 0]  # [heads]
    order = attrs.abs().argsort(descending=True)[:top].tolist()
    return target, [labels[i] for i in order], [float(attrs[i]) for i in order]


def attribution_figure(plt, tokenizer, target: int, labels: list[str], values: list[float]):
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.3 * len(labels)))
    ax.barh(range(len(labels)), values, color=["tab:green" if v > 0 else "tab:red" for v in values])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_title(f"direct logit attribution to {tokenizer.decode([target])!r} (last position)")
    fig.tight_layout()
    return fig


@torch.no_grad()
def draw(model, tokenizer, prompt: str, out: str | Path, *, layers: list[int] | None = None,
         top_heads: int = 10) -> Pictures:
    """Run `prompt` once with the cache and write the PNGs and `index.html` into `out`."""
    plt = pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = tokenizer.encode(prompt) or [tokenizer.eos_token_id]
    labels = token_labels(tokenizer, ids)
    logits, cache = run_with_cache(model, torch.tensor([ids], device=model.device))
    written = Pictures()
    figures = {}
    for layer in layers if layers is not None else range(model.config.n_layer):
        figures[f"attention_L{layer}"] = attention_figure(plt, cache, layer, labels)
    figures["logit_lens"] = lens_figure(plt, model, cache, tokenizer, labels)
    target, head_labels, values = head_attribution(model, cache, logits, top_heads)
    figures["head_attribution"] = attribution_figure(plt, tokenizer, target, head_labels, values)
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.images[name] = path
    written.page = write_page(out / "index.html", prompt, written.images)
    return written


def write_page(path: Path, prompt: str, images: dict[str, Path]) -> Path:
    """One HTML file with every image inlined as a data URI."""
    parts = ["<!doctype html><meta charset='utf-8'><title>minigpt-inspect</title>",
             f"<h1>minigpt-inspect</h1><p>prompt: <code>{html.escape(prompt)}</code></p>"]
    for name, image in images.items():
        data = base64.b64encode(image.read_bytes()).decode("ascii")
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path
