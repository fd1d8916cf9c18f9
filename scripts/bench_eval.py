#!/usr/bin/env python3
"""lm-evaluation-harness speed: minigpt's model class (`minigpt-eval`) against lm-eval's own `hf` model, one run.

Both evaluate the same checkpoint on the same local tasks (written here: multiple choice, rolling perplexity,
generate_until over random word sequences), one after the other in this process; the script prints the seconds
per task, the ratio, whether the metrics agree, and the machine.

    python scripts/bench_eval.py                      # a random gpt2-shaped checkpoint (needs transformers)
    python scripts/bench_eval.py --model DIR --docs 200
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

WORDS = ("the cat dog sun tree red blue cup hat box pen car fish moon book runs sits jumps big small old new and "
         "on in under over with from a an is was").split()


def write_tasks(root: Path, docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    rows = {
        "mc": [{"question": words(rng.randint(20, 120)) + ":", "choices": [words(rng.randint(1, 4)) for _ in range(4)],
                "answer": rng.randrange(4)} for _ in range(docs)],
        "text": [{"text": words(rng.randint(100, 1500)) + "."} for _ in range(max(1, docs // 10))],
        "gen": [{"question": "Q: " + words(rng.randint(10, 100)) + "\nA:", "answer": "cat"}
                for _ in range(max(1, docs // 10))],
    }
    for name, data in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))

    def source(name: str) -> str:
        return f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / name}.jsonl\ntest_split: test\n"

    (root / "bench_mc.yaml").write_text(
        "task: bench_mc\n" + source("mc") + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    (root / "bench_ppl.yaml").write_text(
        "task: bench_ppl\n" + source("text") + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n")
    (root / "bench_gen.yaml").write_text(
        "task: bench_gen\n" + source("gen") + "output_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n\\n']\n  max_gen_toks: 32\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return ["bench_mc", "bench_ppl", "bench_gen"]


def random_checkpoint(directory: Path, tokenizer_dir: str | None) -> Path:
    """A gpt2-shaped checkpoint with random weights and GPT-2's vocab files."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)  # gpt2's shape, random weights
    from minigpt.tokenizer import Tokenizer

    Tokenizer.from_pretrained(tokenizer_dir).save(directory)  # vocab.json + merges.txt beside the weights
    return directory


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return f"{model} ({', '.join(simd)}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a random gpt2-shaped one)")
    parser.add_argument("--tokenizer", help="GPT-2 vocab directory for the random checkpoint (default: "
                        "$MINIGPT_TOKENIZER_DIR)")
    parser.add_argument("--docs", type=int, default=100, help="multiple-choice documents (the other tasks: docs/10)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    import os

    from lm_eval.models.huggingface import HFLM
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    from minigpt.inference.harness import MinigptLM, evaluate

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = Path(args.model) if args.model else random_checkpoint(
            root / "model", args.tokenizer or os.environ.get("MINIGPT_TOKENIZER_DIR"))
        tasks = write_tasks(root, args.docs)
        models = {
            "hf": lambda: HFLM(pretrained=GPT2LMHeadModel.from_pretrained(model_dir).eval(),
                               tokenizer=GPT2TokenizerFast.from_pretrained(model_dir), batch_size=args.batch_size,
                               device="cpu"),
            "minigpt": lambda: MinigptLM(str(model_dir), batch_size=args.batch_size, device="cpu"),
        }
        seconds: dict[str, dict[str, float]] = {}
        metrics: dict[str, dict] = {}
        for name, make in models.items():
            model = make()
            seconds[name], metrics[name] = {}, {}
            for task in tasks:
                started = time.perf_counter()
                result = evaluate(model, [task], include_path=tmp)["results"][task]
                seconds[name][task] = time.perf_counter() - started
                metrics[name][task] = {k: v for k, v in result.items() if isinstance(v, float) and "stderr" not in k}
    print(f"machine: {cpu_name()}")
    print(f"{'task':<10} {'hf s':>8} {'minigpt s':>10} {'speed-up':>9}  metrics agree")
    for task in tasks:
        hf, mine = seconds["hf"][task], seconds["minigpt"][task]
        agree = all(abs(metrics["minigpt"][task][k] - v) <= 1e-4 * max(1.0, abs(v))
                    for k, v in metrics["hf"][task].items())
        print(f"{task:<10} {hf:>8.1f} {mine:>10.1f} {hf / mine:>8.2f}x  {agree}")
    total_hf, total_mine = sum(seconds["hf"].values()), sum(seconds["minigpt"].values())
    print(f"{'all':<10} {total_hf:>8.1f} {total_mine:>10.1f} {total_hf / total_mine:>8.2f}x")


if __name__ == "__main__":
    main()
