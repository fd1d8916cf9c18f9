#!/usr/bin/env python3
"""Training-step benchmark: minigpt's language-modelling step vs a plain transformers loop, side by side.

Both sides train the same shape on the same random token batch in the same precision: transformers'
`GPT2LMHeadModel(input_ids, labels=...)` + `torch.optim.AdamW` (the loop a user would write), and minigpt's
`ResponseLoss` (what SFT and pretraining run: the chunked LM head of `minigpt.head`, no [N, V] logits) + AdamW
over `minigpt.train.optim.param_groups` with the kernel the trainers pick (`fused_adamw`), and the same with
`--gradient-checkpointing` (each block's activations recomputed in the backward pass). Each (library, shape) runs
in a fresh process, so its peak RSS (CPU) or `max_memory_allocated` (CUDA) is its own; tokens/s is the median over the timed steps after warm-up steps.
Prints the machine (CPU model and ISA flags) and a markdown table with ratios (> 1: minigpt is faster / smaller).

    python scripts/bench_train.py                       # gpt2 shape and a small shape, CPU, fp32
    python scripts/bench_train.py --shapes small --steps 5
    python scripts/bench_train.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

LIBRARIES = ("transformers", "minigpt", "minigpt-ckpt")
CHECKPOINTED = "minigpt-ckpt"  # minigpt with --gradient-checkpointing
SHAPES = {  # name: (n_layer, n_head, n_embd, batch, sequence)
    "gpt2": (12, 12, 768, 8, 256),
    "small": (4, 4, 128, 16, 128),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="small,gpt2", help="comma-separated of: " + ", ".join(SHAPES))
    p.add_argument("--steps", type=int, default=4, help="timed steps per run (default: 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast (default: fp32)")
    p.add_argument("--json-out", help="also write the results as JSON here")
    p.add_argument("--child", nargs=2, metavar=("LIBRARY", "SHAPE"), help=argparse.SUPPRESS)
    return p.parse_args()


def batch(shape: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    *_, b, t = SHAPES[shape]
    ids = torch.randint(0, 50257, (b, t + 1), generator=torch.Generator().manual_seed(0))
    return ids[:, :-1].to(device), ids[:, 1:].to(device)


def minigpt_step(shape: str, device: str, checkpointing: bool = False):
    from minigpt.config import GPTConfig
    from minigpt.model import Transformer
    from minigpt.train.optim import fused_adamw, param_groups
    from minigpt.train.sft import ResponseLoss

    n_layer, n_head, n_embd, *_ = SHAPES[shape]
    torch.manual_seed(0)
    model = Transformer(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device).train()
    model.gradient_checkpointing = checkpointing
    optimizer = torch.optim.AdamW(param_groups(model, 0.1)[0], lr=1e-4, fused=fused_adamw(torch.device(device)))
    loss_fn = ResponseLoss(model)
    x, y = batch(shape, device)

    def step() -> None:
        loss = loss_fn(x, y) / y.numel()  # the summed cross entropy over the batch's targets, as a mean
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def transformers_step(shape: str, device: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd, *_ = SHAPES[shape]
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, resid_pdrop=0.0,
                                       embd_pdrop=0.0, attn_pdrop=0.0)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = batch(shape, device)
    ids = torch.cat([x, y[:, -1:]], dim=1)  # [B, T + 1]: the model shifts labels itself, so T targets as minigpt's

    def step() -> None:
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def child(library: str, shape: str, args: argparse.Namespace) -> None:
    """Run one (library, shape) and print its JSON line: tokens/s and peak memory."""
    torch.set_num_threads(torch.get_num_threads())
    if library == "transformers":
        step = transformers_step(shape, args.device)
    else:
        step = minigpt_step(shape, args.device, checkpointing=library == CHECKPOINTED)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.precision == "bf16")
    *_, b, t = SHAPES[shape]
    times = []
    for i in range(args.warmup + args.steps):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast:
            step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB (Linux)
    print(json.dumps({"library": library, "shape": shape, "seconds": seconds, "tokens_per_s": b * t / seconds,
                      "peak_mb": peak}))


def machine_line(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from minigpt.machine import cpu_description

    model, flags = cpu_description()
    shown = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))  # what picks the kernels
    return f"CPU: {model}, {torch.get_num_threads()} threads, flags {shown}; torch {torch.__version__}"


def main() -> None:
    args = parse_args()
    if args.child:
        child(*args.child, args)
        return
    rows = []
    for shape in args.shapes.split(","):
        results = {}
        for library in LIBRARIES:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", library, shape,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device,
                       "--precision", args.precision]
            print(f"{shape}: {library} ...", file=sys.stderr, flush=True)
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{library} {shape} failed: {done.stderr.strip().splitlines()[-1]}")
            results[library] = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(results)
    print(machine_line(args.device))
    print(f"LM training step ({args.precision}, {args.device}; median of {args.steps} steps after {args.warmup})\n")
    print("| shape (layers/heads/width, batch x seq) | transformers tok/s | minigpt tok/s | speed ratio | "
          "transformers peak MB | minigpt peak MB | memory ratio | checkpointed tok/s | checkpointed peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for results in rows:
        hf, mg, ck = results["transformers"], results["minigpt"], results[CHECKPOINTED]
        n_layer, n_head, n_embd, b, t = SHAPES[hf["shape"]]
        print(f"| {hf['shape']} ({n_layer}/{n_head}/{n_embd}, {b}x{t}) | {hf['tokens_per_s']:,.0f} | "
              f"{mg['tokens_per_s']:,.0f} | {mg['tokens_per_s'] / hf['tokens_per_s']:.2f}x | {hf['peak_mb']:,.0f} | "
              f"{mg['peak_mb']:,.0f} | {mg['peak_mb'] / hf['peak_mb']:.2f}x | "
              f"{ck['tokens_per_s']:,.0f} ({ck['tokens_per_s'] / hf['tokens_per_s']:.2f}x) | "
              f"{ck['peak_mb']:,.0f} ({ck['peak_mb'] / hf['peak_mb']:.2f}x) |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
