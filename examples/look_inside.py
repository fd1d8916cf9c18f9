"""Look inside GPT-2 with minigpt's hooks: induction heads, the logit lens and activation patching.

    python examples/look_inside.py --model gpt2

Induction heads attend from the second copy of a repeated random sequence to the token after the same token in
the first copy; on the real gpt2 a few heads in layers 5-7 score near 1 (Olsson et al. 2022). On random weights
every score is near chance: the point there is that the numbers are the model's own.
"""

from __future__ import annotations

import argparse

import torch

from minigpt import GPT
from minigpt.inspect import logit_lens


def induction_scores(model: GPT, length: int = 50, seed: int = 0) -> torch.Tensor:
    """[L, H]: each head's mean attention from a token of the second copy to the token after its first copy."""
    half = torch.randint(1000, 20000, (1, length), generator=torch.Generator().manual_seed(seed))
    ids = torch.cat([half, half], dim=1)  # [1, 2 * length]
    _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))
    scores = []
    for layer in range(model.config.n_layer):
        pattern = cache["pattern", layer][0]  # [H, T, T]
        stripe = pattern.diagonal(offset=-(length - 1), dim1=-2, dim2=-1)  # query t -> key t - length + 1
        scores.append(stripe[:, 1:].mean(-1))  # [H]: the queries of the second copy
    return torch.stack(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="gpt2", help="hub id or checkpoint directory (default: gpt2)")
    args = parser.parse_args()
    model = GPT.from_pretrained(args.model)

    scores = induction_scores(model)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    print(f"best induction head: {layer}.{head}, score {scores.max():.3f} (chance ~{1 / 100:.3f})")

    ids = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    logits, cache = model.run_with_cache(ids)
    lens = logit_lens(model, cache)  # [L + 1, B, T, V]
    final = logits[0, -1].argmax()
    ranks = [int((row[0, -1] > row[0, -1, final]).sum()) for row in lens]
    print("rank of the final prediction after each layer:", ranks)

    corrupt = torch.randint(0, model.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(2))
    middle = f"blocks.{model.config.n_layer // 2}.hook_resid_pre"
    patched = model.run_with_hooks(corrupt, [(middle, lambda x, hook: cache[hook.name])])
    print(f"patching {middle} from the clean run: max |logit change| vs clean "
          f"{(patched - logits).abs().max():.2e}")


if __name__ == "__main__":
    main()
