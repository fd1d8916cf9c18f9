#!/usr/bin/env python3
"""Training-step benchmark: minigpt's language-modelling step vs a plain transformers loop, side by side.

Both sides train the same shape on the same random token batch in the same precision: transformers'
`GPT2LMHeadModel(input_ids, labels=...)` + `torch.optim.AdamW` (the loop a user would write), and minigpt's
`ResponseLoss` (what SFT and pretraining run: the chunked LM head of `minigpt.head`, no [N, V] logits) + AdamW
over `minigpt.train.optim.param_groups` with the kernel the trainers pick (`fused_adamw`), the products through
the kernel the trainers measure once per machine (`minigpt.kernels.training_kernel`), on a CPU with freed memory
kept for reuse as the trainers keep it (`minigpt.train.env.keep_freed_memory`; the transformers loop runs with
glibc's defaults, as a user's does; set `MALLOC_MMAP_THRESHOLD_` to give both the same), and the same with
`--gradient-checkpointing` (each block's activations recomputed in the backward pass). Each (library, shape) runs
in a fresh process, so its peak RSS (CPU) or `max_memory_allocated` (CUDA) is its own; tokens/s is the median
over the timed steps after warm-up steps. Then a DPO step the same way (minigpt's `DPOLoss` beside the loop a
user writes with transformers: policy and reference logits, log_softmax, gather, -log sigmoid(beta h), AdamW;
both run the frozen reference in the step). Then minigpt's PPO step (`train_ppo` on a random policy, a reward
function; batch = rollouts), split into rollout and update. Prints the machine (CPU model and ISA flags) and
markdown tables with ratios (> 1: minigpt is faster / smaller).

    python scripts/bench_train.py                       # gpt2 shape and a small shape, CPU, fp32
    python scripts/bench_train.py --shapes small --steps 5
    python scripts/bench_train.py --objectives ppo --shapes gpt2 --steps 2
    python scripts/bench_train.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

LIBRARIES = ("transformers", "minigpt", "minigpt-ckpt")
DPO_LIBRARIES = ("transformers-dpo", "minigpt-dpo")
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
    p.add_argument("--objectives", default="lm,dpo,ppo", help="lm and dpo (side by side with transformers) and/or "
                   "ppo (minigpt's PPO step: rollout + 4 epochs) (default: lm,dpo,ppo)")
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
    from minigpt.kernels import training_kernel, use_kernel_
    from minigpt.model import Transformer
    from minigpt.train.optim import fused_adamw, param_groups
    from minigpt.train.sft import ResponseLoss

    n_layer, n_head, n_embd, *_ = SHAPES[shape]
    torch.manual_seed(0)
    model = Transformer(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device).train()
    model.gradient_checkpointing = checkpointing
    use_kernel_(model, training_kernel(n_embd, model.dtype, torch.device(device)))  # as the trainers do
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


DPO_BETA = 0.1


def dpo_batch(shape: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` rows as pairs (rows 2i and 2i+1: preferred, other) of `seq` tokens; the second half of each row is
    its response: input ids [R, T] and next-token targets [R, T] with -100 on the prompt positions."""
    x, y = batch(shape, device)
    targets = y.clone()
    targets[:, : y.shape[1] // 2] = -100
    return x, targets


def minigpt_dpo_step(shape: str, device: str):
    """minigpt's `DPOLoss` (summed response log-probs through the chunked head) with the frozen reference run in
    the step, as transformers' loop below does (the DPO trainer precomputes the reference's log-probs once
    instead, which makes its steps cheaper still)."""
    from types import SimpleNamespace

    from minigpt.config import GPTConfig
    from minigpt.kernels import training_kernel, use_kernel_
    from minigpt.model import Transformer
    from minigpt.train.dpo import DPOLoss
    from minigpt.train.optim import fused_adamw, param_groups

    n_layer, n_head, n_embd, b, _ = SHAPES[shape]
    torch.manual_seed(0)
    policy = Transformer(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)).to(device).train()
    reference = Transformer(policy.config).to(device).eval().requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    kernel = training_kernel(n_embd, torch.float32, torch.device(device))
    use_kernel_(policy, kernel)
    use_kernel_(reference, kernel)
    optimizer = torch.optim.AdamW(param_groups(policy, 0.1)[0], lr=1e-6, fused=fused_adamw(torch.device(device)))
    loss_fn = DPOLoss(policy, reference, SimpleNamespace(beta=DPO_BETA, loss="sigmoid", label_smoothing=0.0))
    x, targets = dpo_batch(shape, device)
    pairs = torch.arange(b // 2, device=device)
    fields = dict(input_ids=x, targets=targets, reward_ids=x, better=2 * pairs, worse=2 * pairs + 1,
                  pair_record=pairs, row_record=torch.arange(b, device=device) // 2,
                  margins=torch.zeros(b // 2, device=device), ref_logps=None)

    def step() -> None:
        loss_fn(**fields).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def transformers_dpo_step(shape: str, device: str):
    """The DPO loop a user writes with transformers (TRL's default keeps the reference in memory): policy and
    reference logits [R, T, V], log_softmax, gather the response tokens, -log sigmoid(beta h), AdamW."""
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd, *_ = SHAPES[shape]
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    policy = GPT2LMHeadModel(config).to(device).train()
    reference = GPT2LMHeadModel(config).to(device).eval().requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    x, targets = dpo_batch(shape, device)
    keep = targets != -100

    def logps(model) -> torch.Tensor:
        token = model(input_ids=x).logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        return (token * keep).sum(-1)  # [R]

    def step() -> None:
        with torch.no_grad():
            ref = logps(reference)
        pol = logps(policy)
        h = (pol[0::2] - pol[1::2]) - (ref[0::2] - ref[1::2])
        (-F.logsigmoid(DPO_BETA * h)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


PPO_PROMPT_TOKENS = 32  # each PPO rollout: a prompt of about this many tokens ...
PPO_RESPONSE_TOKENS = 32  # ... and a response of up to this many (a random model almost never samples EOS)


def ppo_child(shape: str, args: argparse.Namespace) -> None:
    """One PPO run of warm-up + timed steps at `shape` (batch = rollouts per step), through `train_ppo` as a user
    runs it: a random-weight policy (also the frozen reference), a reward function (the response's length in
    characters / 100), PPO's defaults (4 epochs of one mini-batch). Prints the seconds per step, split into
    rollout (sampling, the value and reference passes, scoring) and update (the 4 epochs), and the peak memory."""
    import tempfile

    from minigpt.checkpoint import save_pretrained
    from minigpt.config import GPTConfig
    from minigpt.model import Transformer
    from minigpt.train import PPOConfig, train_ppo
    from minigpt.train import ppo as ppo_module

    n_layer, n_head, n_embd, b, _ = SHAPES[shape]
    scratch = tempfile.TemporaryDirectory(prefix="bench-ppo-")  # removed when this process ends
    work = Path(scratch.name)
    torch.manual_seed(0)
    save_pretrained(Transformer(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)), work / "policy",
                    tokenizer=ppo_tokenizer())
    words = "the a cat dog sat on mat and ran far away then came back home to eat".split()
    lines = [" ".join(words[(i + j) % len(words)] for j in range(PPO_PROMPT_TOKENS)) for i in range(b)]
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": line}) + "\n" for line in lines))
    (work / "reward.py").write_text("def score(prompts, responses):\n    return [len(r) / 100 for r in responses]\n")
    phases = {"rollout": [], "update": []}

    def timed(name, fn):
        def wrapper(*a, **k):
            started = time.perf_counter()
            out = fn(*a, **k)
            phases[name].append(time.perf_counter() - started)
            return out
        return wrapper

    ppo_module.PPO.rollouts = timed("rollout", ppo_module.PPO.rollouts)
    ppo_module.PPO.optimize = timed("update", ppo_module.PPO.optimize)
    config = PPOConfig(data=str(work / "prompts.jsonl"), model=str(work / "policy"), out=str(work / "out"),
                       reward_fn=f"{work / 'reward.py'}:score", batch_size=b, max_new_tokens=PPO_RESPONSE_TOKENS,
                       max_steps=args.warmup + args.steps, eval_fraction=0.0, save_every=10**9, device=args.device,
                       precision="bf16" if args.precision == "bf16" else "fp32", seed=0)
    train_ppo(config, progress=False, log=lambda _: None)
    rollout, update = (phases[k][args.warmup:] for k in ("rollout", "update"))
    total = [r + u for r, u in zip(rollout, update)]
    print(json.dumps({"library": "minigpt-ppo", "shape": shape, "seconds": statistics.median(total),
                      "rollout_s": statistics.median(rollout), "update_s": statistics.median(update),
                      "rollouts": b, "peak_mb": peak_memory_mb(args.device)}))


def child(library: str, shape: str, args: argparse.Namespace) -> None:
    """Run one (library, shape) and print its JSON line: tokens/s and peak memory."""
    torch.set_num_threads(torch.get_num_threads())
    if library.startswith("minigpt") and args.device == "cpu":  # as minigpt's trainers do on a CPU
        from minigpt.train.env import keep_freed_memory

        keep_freed_memory()
    if library == "minigpt-ppo":
        ppo_child(shape, args)
        return
    if library == "transformers":
        step = transformers_step(shape, args.device)
    elif library == "transformers-dpo":
        step = transformers_dpo_step(shape, args.device)
    elif library == "minigpt-dpo":
        step = minigpt_dpo_step(shape, args.device)
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
    print(json.dumps({"library": library, "shape": shape, "seconds": seconds, "tokens_per_s": b * t / seconds,
                      "peak_mb": peak_memory_mb(args.device)}))


def peak_memory_mb(device: str) -> float:
    """This process's peak: `max_memory_allocated` on CUDA, peak RSS on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB -> MB (Linux)


def machine_line(device: str) -> str:
    if device.startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    from minigpt.machine import cpu_description, isa_caps

    model, flags = cpu_description()
    shown = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))  # what picks the kernels
    caps = isa_caps()
    return (f"CPU: {model}, {torch.get_num_threads()} threads, flags {shown}; torch {torch.__version__}"
            + (f"; instruction sets capped: {' '.join(caps)}" if caps else ""))


def main() -> None:
    args = parse_args()
    if args.child:
        child(*args.child, args)
        return
    objectives = args.objectives.split(",")
    if "ppo" in objectives:
        ppo_tokenizer()  # before any run: a missing vocabulary fails in a second, not after the LM runs
    rows, dpo_rows, ppo_rows = [], [], []
    failure = None
    try:
        for shape in args.shapes.split(","):
            if "lm" in objectives:
                rows.append({library: run_child(library, shape, args) for library in LIBRARIES})
            if "dpo" in objectives:
                dpo_rows.append({library: run_child(library, shape, args) for library in DPO_LIBRARIES})
            if "ppo" in objectives:
                ppo_rows.append(run_child("minigpt-ppo", shape, args))
    except ChildFailed as exc:  # print what finished, then fail
        failure = str(exc)
    print(machine_line(args.device))
    if rows:
        print_lm_table(rows, args)
    if dpo_rows:
        print_dpo_table(dpo_rows, args)
    if ppo_rows:
        print_ppo_table(ppo_rows, args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"lm": rows, "dpo": dpo_rows, "ppo": ppo_rows}, indent=2) + "\n")
    if failure:
        sys.exit(failure)


class ChildFailed(Exception):
    """One (library, shape) run failed; its message is the child's last line of stderr."""


def ppo_tokenizer():
    """GPT-2's tokenizer for the PPO run's prompts: $MINIGPT_TOKENIZER_DIR, else the hub's `gpt2` (or its cache);
    exits with one line saying what to set when neither has it."""
    from minigpt.errors import MiniGPTError
    from minigpt.tokenizer import ENV_VAR, Tokenizer

    try:
        return Tokenizer.from_pretrained(None if os.environ.get(ENV_VAR) else "gpt2")
    except MiniGPTError as exc:
        sys.exit(f"the PPO benchmark needs GPT-2's vocabulary: set ${ENV_VAR} to a directory holding "
                 f"encoder.json + vocab.bpe (or vocab.json + merges.txt), or run without ppo in --objectives ({exc})")


def run_child(library: str, shape: str, args: argparse.Namespace) -> dict:
    """Run one (library, shape) in a fresh process (its own peak memory); its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", library, shape, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision]
    print(f"{shape}: {library} ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ChildFailed(f"{library} {shape} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_ppo_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nPPO step ({args.precision}, {args.device}; median of {args.steps} steps after {args.warmup}; "
          f"prompts ~{PPO_PROMPT_TOKENS} tokens, responses up to {PPO_RESPONSE_TOKENS}, 4 PPO epochs)\n")
    print("| shape (layers/heads/width) | rollouts per step | seconds per step | rollout s | update s | peak MB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        n_layer, n_head, n_embd, *_ = SHAPES[r["shape"]]
        print(f"| {r['shape']} ({n_layer}/{n_head}/{n_embd}) | {r['rollouts']} | {r['seconds']:.2f} | "
              f"{r['rollout_s']:.2f} | {r['update_s']:.2f} | {r['peak_mb']:,.0f} |")


def print_dpo_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nDPO step ({args.precision}, {args.device}; median of {args.steps} steps after {args.warmup}; "
          "pairs of rows, the second half of each row its response, the frozen reference run in the step)\n")
    print("| shape (layers/heads/width, rows x seq) | transformers tok/s | minigpt tok/s | speed ratio | "
          "transformers peak MB | minigpt peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for results in rows:
        hf, mg = results["transformers-dpo"], results["minigpt-dpo"]
        n_layer, n_head, n_embd, b, t = SHAPES[hf["shape"]]
        print(f"| {hf['shape']} ({n_layer}/{n_head}/{n_embd}, {b}x{t}) | {hf['tokens_per_s']:,.0f} | "
              f"{mg['tokens_per_s']:,.0f} | {mg['tokens_per_s'] / hf['tokens_per_s']:.2f}x | {hf['peak_mb']:,.0f} | "
              f"{mg['peak_mb']:,.0f} | {mg['peak_mb'] / hf['peak_mb']:.2f}x |")


def print_lm_table(rows: list[dict], args: argparse.Namespace) -> None:
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


if __name__ == "__main__":
    main()
