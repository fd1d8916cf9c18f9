"""`minigpt-generate` / `scripts/generate.py`: sample text from a GPT-2 checkpoint.

Errors are one line on stderr and a non-zero exit, never a traceback (set MINIGPT_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from .common import DTYPES, OneLineParser, UsageError, add_quantize_argument, pick_device, run_cli, status


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="minigpt-generate",
        description="Generate text with GPT-2. Prints each sample's full text (prompt + continuation).",
        epilog="examples:\n"
        "  minigpt-generate --prompt 'The sky is' --num-samples 5 --max-new-tokens 50 --seed 42\n"
        "  minigpt-generate --model ./my-gpt2 --prompt 'Hello' --greedy --stream\n"
        "  echo 'Once upon a time' | minigpt-generate --json\n"
        "  minigpt-generate --model ./my-sft --instruct --prompt 'Name three primary colors.' --greedy\n"
        "offline: the hub cannot be reached, so pass --model PATH (a directory with config.json and "
        "model.safetensors, or a .safetensors file).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = parser.add_argument_group("model")
    src.add_argument("--model", default="gpt2", help="hub id (gpt2, gpt2-medium, ...) or local directory / "
                     ".safetensors file (default: %(default)s)")
    src.add_argument("--tokenizer", help="directory with vocab.json+merges.txt or encoder.json+vocab.bpe "
                     "(default: the model's own files, else $MINIGPT_TOKENIZER_DIR)")
    src.add_argument("--config", help="preset name for a bare .safetensors file without config.json (e.g. gpt2)")
    src.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                     help="where to run (default: auto = cuda, then mps, then cpu)")
    src.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: %(default)s)")
    src.add_argument("--compile", action="store_true", help="torch.compile the decode step. CUDA: a captured "
                     "graph per step, several times faster. CPU: the first call compiles for ~25 s; measured on a "
                     "2-core AVX2 EPYC it then made int8 decoding ~25%% faster and fp32 about even, so it pays off "
                     "with --quantize int8 after a few hundred tokens")
    add_quantize_argument(src)

    inp = parser.add_argument_group("prompt")
    inp.add_argument("--prompt", help="prompt text; '-' reads stdin; empty means unconditional (starts from "
                     "<|endoftext|>). Without --prompt or --prompt-file, piped stdin is the prompt")
    inp.add_argument("--prompt-file", help="read the prompt from this file")
    inp.add_argument("--instruct", action="store_true", help="treat the prompt as an instruction: wrap it in the "
                     "fine-tuned checkpoint's saved prompt template and print only the response")
    inp.add_argument("--input", dest="instruct_input", default="", help="with --instruct: the instruction's "
                     "input text (Alpaca's 'input' field)")
    inp.add_argument("--template", help="with --instruct: a prompt template JSON file, or 'default' for "
                     "minigpt's built-in one (default: the model directory's prompt_template.json)")
    inp.add_argument("--context", default="error", choices=["error", "truncate"],
                     help="when prompt + max-new-tokens passes the 1024-token context: fail (error) or keep "
                     "the prompt's last tokens that fit (truncate) (default: %(default)s)")

    gen = parser.add_argument_group("sampling")
    gen.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate per sample (default: 50)")
    gen.add_argument("--num-samples", type=int, default=1, help="continuations per prompt (default: 1)")
    gen.add_argument("--greedy", action="store_true", help="always take the most likely token")
    gen.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default: 1.0)")
    gen.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0 = off (default: 50)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: 1.0 = off)")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL penalty, > 0 (default: 1.0 = off)")
    gen.add_argument("--seed", type=int, help="random seed: the same seed reproduces the same samples")
    gen.add_argument("--stop", action="append", default=[], help="stop a sample at this string (repeatable); "
                     "the stop string is not printed")
    gen.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size "
                     "(prompt included) (default: 0 = off)")
    gen.add_argument("--min-new-tokens", type=int, default=0, help="no <|endoftext|> before this many tokens "
                     "(default: 0)")
    gen.add_argument("--min-p", type=float, help="sample only tokens with probability >= this x the top "
                     "token's (default: off)")
    gen.add_argument("--typical-p", type=float, help="locally typical sampling mass in (0, 1] (default: off)")

    beam = parser.add_argument_group("beam search")
    beam.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (default: 1 = "
                      "off); --num-samples returns that many of the best hypotheses, best first")
    beam.add_argument("--length-penalty", type=float, default=1.0, help="a hypothesis scores sum(log-probs) / "
                      "length**this; > 0 favours longer ones (default: 1.0)")
    beam.add_argument("--early-stopping", default="false", choices=["true", "false", "never"],
                      help="true: stop once num-beams hypotheses are done; false: once no running beam can "
                      "beat them (a heuristic); never: the exact bound (default: false), as transformers")

    best = parser.add_argument_group("best-of-n")
    best.add_argument("--best-of", type=int, metavar="N", help="sample N responses and print the one --reward-model "
                      "scores highest (with --json: all N, best first, each with its reward)")
    best.add_argument("--reward-model", help="with --best-of: a reward model directory (minigpt-reward's output); it "
                      "reads the prompt as given (with --instruct: templated), the response, then EOS")

    out = parser.add_argument_group("output")
    out.add_argument("--stream", action="store_true", help="print the first sample token by token as it is made")
    out.add_argument("--json", action="store_true", help="print JSON with each sample's text and token ids")
    out.add_argument("--logprobs", type=int, metavar="N", help="with --json: each generated token's text, "
                     "log-probability and its N most likely alternatives (OpenAI completions' logprobs: tokens, "
                     "token_logprobs, top_logprobs, text_offset)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.top_k < 0:
        raise UsageError(f"--top-k must be >= 0, got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.repetition_penalty <= 0:
        raise UsageError(f"--repetition-penalty must be > 0, got {args.repetition_penalty}")
    if args.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {args.dtype!r}; choose one of {', '.join(DTYPES)}")
    if args.prompt is not None and args.prompt_file is not None:
        raise UsageError("give --prompt or --prompt-file, not both")
    if not args.instruct and (args.template or args.instruct_input):
        raise UsageError("--template and --input only apply with --instruct")
    if args.no_repeat_ngram_size < 0 or args.min_new_tokens < 0:
        raise UsageError("--no-repeat-ngram-size and --min-new-tokens must be >= 0")
    if args.min_p is not None and not 0 <= args.min_p <= 1:
        raise UsageError(f"--min-p must be in [0, 1], got {args.min_p}")
    if args.typical_p is not None and not 0 < args.typical_p <= 1:
        raise UsageError(f"--typical-p must be in (0, 1], got {args.typical_p}")
    if args.logprobs is not None and (args.logprobs < 0 or not args.json):
        raise UsageError("--logprobs N needs --json and N >= 0")
    if args.num_beams < 1:
        raise UsageError(f"--num-beams must be >= 1, got {args.num_beams}")
    if args.num_beams > 1:
        if args.num_samples > args.num_beams:
            raise UsageError(f"--num-samples {args.num_samples} must be <= --num-beams {args.num_beams} (beam search "
                             "returns its best hypotheses)")
        if args.stream:
            raise UsageError("--stream does not work with beam search (the best beam is known only at the end)")
        if args.stop:
            raise UsageError("--stop does not work with beam search")
    if (args.best_of is None) != (args.reward_model is None):
        raise UsageError("--best-of N and --reward-model RM go together")
    if args.best_of is not None:
        if args.best_of < 1:
            raise UsageError(f"--best-of must be >= 1, got {args.best_of}")
        if args.num_beams > 1 or args.greedy or args.num_samples != 1 or args.stream:
            raise UsageError("--best-of samples: it does not combine with --num-beams, --greedy, --num-samples or "
                             "--stream")


def instruct_prompt(args: argparse.Namespace, instruction: str) -> str:
    """The templated prompt for --instruct: the model's saved template (or --template)."""
    from pathlib import Path

    from ..errors import DataError
    from ..template import TEMPLATE_FILE, PromptTemplate

    if not instruction.strip():
        raise UsageError("--instruct needs a non-empty instruction (--prompt, --prompt-file or stdin)")
    if args.template == "default":
        template = PromptTemplate()
    elif args.template:
        template = PromptTemplate.load(args.template)
    else:
        model_path = Path(args.model).expanduser()
        directory = model_path if model_path.is_dir() else model_path.parent if model_path.is_file() else None
        if directory is None or not (directory / TEMPLATE_FILE).is_file():
            raise UsageError(f"--instruct: {args.model} has no {TEMPLATE_FILE} (it was not fine-tuned with "
                             "minigpt-finetune); pass --template FILE, or --template default for the built-in one")
        try:
            template = PromptTemplate.load(directory)
        except DataError as exc:
            raise UsageError(str(exc)) from None
    return template.render(instruction.strip(), args.instruct_input.strip())


def read_prompt(args: argparse.Namespace) -> str:
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --prompt-file {args.prompt_file}: {exc}") from None
    if args.prompt == "-" or (args.prompt is None and not sys.stdin.isatty()):
        return sys.stdin.read() if sys.stdin else ""
    return args.prompt or ""


def load(args: argparse.Namespace, device: torch.device):
    from ..inference.fast import compile_decode
    from ..loading import load_pretrained
    from ..tokenizer import Tokenizer

    weights = args.dtype + (f", {args.quantize} weights" if args.quantize else "")
    status(f"loading {args.model} on {device} ({weights}) ...")
    if args.compile and device.type == "cpu":
        status("--compile on a CPU: the first generation compiles the decode step (tens of seconds)")
    start = time.perf_counter()
    model = load_pretrained(args.model, device=device, dtype=DTYPES[args.dtype], config=args.config,
                            quantize=args.quantize)
    if args.compile:
        compile_decode(model)
    tokenizer = Tokenizer.for_model(args.model, args.tokenizer)
    status(f"loaded in {time.perf_counter() - start:.1f}s")
    return model, tokenizer


def best_of(args: argparse.Namespace, model, tokenizer, prompt: str, params, device: torch.device) -> list:
    """The --best-of samples, best first by the reward model (each Completion's `score` is its reward)."""
    from ..errors import MiniGPTError
    from ..inference.best_of import best_of_n
    from ..reward_model import RewardModel

    status(f"loading reward model {args.reward_model} ...")
    try:
        reward_model = RewardModel.from_pretrained(args.reward_model, device=device)
    except (MiniGPTError, OSError) as exc:
        raise UsageError(f"--reward-model {args.reward_model}: {exc}") from None
    ranked = best_of_n(model, tokenizer, reward_model, prompt, args.best_of, args.max_new_tokens, params=params,
                       seed=args.seed, stop=args.stop, context=args.context)[0]
    return ranked if args.json else ranked[:1]


def run(args: argparse.Namespace) -> int:
    from ..inference.sampling import SamplingParams
    from ..inference.text import beam_completions, completion_logprobs, stream_completions

    check_args(args)
    device = pick_device(args.device)
    prompt = read_prompt(args)
    if args.instruct:
        prompt = instruct_prompt(args, prompt)
    model, tokenizer = load(args, device)
    params = SamplingParams(
        do_sample=not args.greedy and args.num_beams == 1, temperature=args.temperature, top_k=args.top_k or None,
        top_p=args.top_p, repetition_penalty=args.repetition_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
        min_new_tokens=args.min_new_tokens, min_p=args.min_p, typical_p=args.typical_p,
    )
    n = args.num_samples
    if args.best_of is not None:
        events = [best_of(args, model, tokenizer, prompt, params, device)]
        n = args.best_of if args.json else 1
    elif args.num_beams > 1:
        early = {"true": True, "false": False, "never": "never"}[args.early_stopping]
        events = [beam_completions(model, tokenizer, prompt, args.max_new_tokens, num_beams=args.num_beams,
                                   num_return_sequences=n, length_penalty=args.length_penalty, early_stopping=early,
                                   params=params, context=args.context)]
    else:
        events = stream_completions(model, tokenizer, prompt, args.max_new_tokens, params=params,
                                    num_return_sequences=n, stop=args.stop, seed=args.seed, context=args.context)
    live = args.stream and not args.json
    header = (lambda i: f"=== sample {i + 1}/{n} ===") if n > 1 else (lambda i: None)
    if live:
        if header(0):
            print(header(0))
        if not args.instruct:
            print(prompt, end="", flush=True)
    results = None
    for event in events:
        if isinstance(event, list):
            results = event
        elif live and event[0] == 0:
            print(event[1], end="", flush=True)
    assert results is not None
    if args.json:
        samples = []
        for i, r in enumerate(results):
            sample = {"sample": i, "prompt": r.prompt, "completion": r.completion, "text": r.text,
                      "prompt_ids": r.prompt_ids, "new_ids": r.new_ids, "finish_reason": r.finish_reason}
            if r.score is not None:
                sample["reward" if args.best_of is not None else "score"] = r.score
            if args.logprobs is not None:
                sample["logprobs"] = completion_logprobs(model, tokenizer, r, args.logprobs)
            samples.append(sample)
        payload = {"model": args.model, "samples": samples}
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0
    for i, result in enumerate(results):
        if live and i == 0:
            print()
            continue
        if header(i):
            print(header(i))
        print(result.completion if args.instruct else result.text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
