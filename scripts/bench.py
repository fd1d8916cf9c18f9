#!/usr/bin/env python3
"""Side-by-side benchmark: minigpt vs transformers on the same checkpoint, in one process, runs interleaved.

Reports medians and ratios (transformers time / minigpt time, so > 1 means minigpt is faster) for:
decode at batch 1 (16-token prompt, 64 new tokens, greedy), 5 samples of one prompt (64 new, top-k 50),
beam search, prefill of 512 tokens, in each dtype; minigpt also with int8 weights (`quantize="int8"`, in the
float32 rows) and, with --compile, compiled; CTranslate2 (fp32 and int8, CPU; timed in a process of its own,
since its thread pool slows torch's steps in a shared one, one such process per round, rounds alternating with
minigpt's and transformers' runs so that a slow minute of a shared machine falls on both sides) when installed
(`pip install ctranslate2`: the checkpoint is converted with its TransformersConverter into a temporary
directory; it needs the GPT-2 vocabulary files beside the checkpoint or in $MINIGPT_TOKENIZER_DIR).
Decode rows give ms per step (time(16+64) - time(16+1), over 63),
the weight bytes each step reads, GB/s, and the share of this machine's read floor (GB/s of `a.sum()` over
512 MB). Then load time (warm page cache) and peak RSS after loading (each in a fresh process).
Without --model it builds a random gpt2-shape checkpoint in the hub's layout (a temporary directory).
Prints the machine (CPU model and ISA flags) and a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: build a random gpt2-shape one)")
    p.add_argument("--shape", default="gpt2", help="preset shape for the random checkpoint (default: gpt2)")
    p.add_argument("--checkpoint-dtype", default="float32", help="dtype of the random checkpoint (default: float32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated (default: float32,bfloat16)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case and library (default: 5)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per decode run (default: 64)")
    p.add_argument("--cases", default="decode,samples,beams,prefill,load", help="which cases (default: all)")
    p.add_argument("--compile", action="store_true", help="also time minigpt with compile=True (the first call "
                   "compiles: tens of seconds on a CPU)")
    p.add_argument("--no-int8", action="store_true", help="skip minigpt's int8 rows (CPU only; never on a GPU)")
    p.add_argument("--json-out", help="also write the results as JSON here")
    p.add_argument("--no-transformers", action="store_true", help="time minigpt alone")
    p.add_argument("--no-ctranslate2", action="store_true", help="skip the CTranslate2 rows even when installed")
    p.add_argument("--ctranslate2-child", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # its rows, in a process
    p.add_argument("--ctranslate2-work", help=argparse.SUPPRESS)  # where the child converts (once) and reads
    p.add_argument("--ctranslate2-later-round", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_random_checkpoint(shape: str, directory: Path, dtype: torch.dtype = torch.float32) -> Path:
    """A random-weight checkpoint in the hub's gpt2 layout (bare keys, attn.bias buffers) with config.json."""
    from safetensors.torch import save_file

    from minigpt import GPT, GPTConfig

    config = GPTConfig.from_preset(shape)
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in GPT(config).state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        tensor = torch.randn(shape, generator=gen) * (0.02 if len(shape) == 2 else 0.1)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            tensor += 1.0
        state[name] = tensor.to(dtype).contiguous()
    mask = torch.tril(torch.ones(config.n_positions, config.n_positions)).view(1, 1, config.n_positions, -1)
    for i in range(config.n_layer):
        state[f"h.{i}.attn.bias"] = mask.clone().to(dtype)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    return directory


class CTranslate2Model:
    """A CTranslate2 generator on a converted copy of the checkpoint, called with token ids like the others.

    CTranslate2 takes token strings: the converted directory's vocabulary.json lists them in id order."""

    def __init__(self, directory: Path, compute_type: str, threads: int) -> None:
        import ctranslate2

        self.generator = ctranslate2.Generator(str(directory), device="cpu", compute_type=compute_type,
                                               inter_threads=1, intra_threads=threads)
        self.vocab = json.loads((directory / "vocabulary.json").read_text(encoding="utf-8"))
        self.weight_bytes = (directory / "model.bin").stat().st_size

    def generate(self, ids: torch.Tensor, new: int, *, copies: int = 1, sample: bool = False,
                 beams: int = 1) -> list[list[int]]:
        """`copies` rows of the one prompt in `ids` [1, T], exactly `new` tokens each (EOS is not allowed to stop
        a row early), greedy, top-k 50 sampling, or beam search."""
        tokens = [self.vocab[i] for i in ids[0].tolist()]
        kwargs = dict(sampling_topk=50, sampling_temperature=1.0) if sample else dict(sampling_topk=1)
        results = self.generator.generate_batch([tokens] * copies, max_length=new, min_length=new, beam_size=beams,
                                                include_prompt_in_result=False, **kwargs)
        return [r.sequences_ids[0] for r in results]


def ctranslate2_models(model_dir: Path, work: Path, threads: int) -> dict[str, CTranslate2Model]:
    """{"ctranslate2": fp32, "ctranslate2 int8": int8 weights}, converted from `model_dir` into `work`; {} (and a
    line on stderr) when CTranslate2 or the vocabulary files are missing."""
    try:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        log("ctranslate2 is not installed: no CTranslate2 rows (pip install ctranslate2)")
        return {}
    from minigpt.errors import TokenizerError
    from minigpt.tokenizer import Tokenizer

    try:
        tokenizer = Tokenizer.for_model(model_dir)
    except TokenizerError:
        log("no CTranslate2 rows: its converter needs GPT-2's vocabulary files beside the checkpoint or in "
            "$MINIGPT_TOKENIZER_DIR")
        return {}
    source = work / "source"  # the checkpoint's files linked, the vocabulary beside them under the hub's names
    source.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and not (source / f.name).exists():
            (source / f.name).symlink_to(f.resolve())
    if not (source / "vocab.json").exists():
        tokenizer.save(source)
    supported = ctranslate2.get_supported_compute_types("cpu")
    models = {}
    for name, quantization in (("ctranslate2", "float32"), ("ctranslate2 int8", "int8")):
        if quantization not in supported:
            log(f"CTranslate2 has no {quantization} kernels on this CPU: no {name!r} rows")
            continue
        out = work / quantization
        if not (out / "model.bin").exists():  # converted by an earlier round's process: reused
            log(f"converting for {name} ({quantization}) ...")
            TransformersConverter(str(source), low_cpu_mem_usage=True).convert(str(out), quantization=quantization,
                                                                               force=True)
        models[name] = CTranslate2Model(out, quantization, threads)
    return models


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleave(fns: dict[str, callable], repeats: int, device: str, warm_up: bool = True) -> dict[str, float]:
    """Warm each up once (unless `warm_up` is False), then run A B A B ...; return the median seconds of each."""
    for fn in fns.values() if warm_up else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def peak_rss_after_load(library: str, model_dir: Path, dtype: str) -> float:
    """Peak resident memory (MB) of a fresh process that only loads the model."""
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report this process's peak.
    code = f"""
import torch
dtype = getattr(torch, {dtype!r})
if {library!r} == "none":
    pass
elif {library!r}.startswith("minigpt"):
    from minigpt import GPT
    m = GPT.from_pretrained({str(model_dir)!r}, dtype=dtype, quantize="int8" if "int8" in {library!r} else None)
else:
    from transformers import GPT2LMHeadModel
    m = GPT2LMHeadModel.from_pretrained({str(model_dir)!r}, dtype=dtype)
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def decode_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: every tensor but the position table (one row), and for an int8
    model the float embedding too (its LM head reads the int8 copy); for CTranslate2 the size of its model file."""
    if isinstance(model, CTranslate2Model):  # its converted file: every weight once (+ the small position table)
        return model.weight_bytes
    skip = {"wpe.weight"} | ({"wte.weight"} if getattr(model, "quantized", False) else set())
    if not hasattr(model, "quantized"):  # transformers: the same weights as minigpt's float model
        return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "wpe" not in n)
    return sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if n not in skip)


def record(rows: list[dict], row: dict) -> None:
    """Keep a result and show it at once on stderr (a long run that is cut short still reports what it measured)."""
    rows.append(row)
    unit = row["unit"]
    values = ", ".join(f"{k} {v:.3g} {unit}" for k, v in row["values"].items())
    steps = ", ".join(f"{k} {v * 1e3:.1f} ms/step" for k, v in row.get("per_step", {}).items())
    log(f"  {row['case']} [{row['dtype']}]: {values}" + (f"; {steps}" if steps else ""))


def read_floor_gbps() -> float:
    """GB/s of `a.sum()` over 512 MB: this machine's memory-read floor for a step that reads every weight once."""
    a = torch.ones(128 << 20)
    a.sum()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a.sum()
        times.append(time.perf_counter() - start)
    return a.numel() * 4 / statistics.median(times) / 1e9


def time_cases(libs: dict, cases: set[str], args, dtype_name: str, device: str, prompt16: torch.Tensor,
               prompt512: torch.Tensor, repeats: int | None = None, warm_up: bool = True) -> list[dict]:
    """Time the decode / samples / beams / prefill cases for every library in `libs`, runs interleaved
    (`repeats` runs each, default --repeats, after one warm-up run unless `warm_up` is False)."""
    rows: list[dict] = []
    new = args.new_tokens
    repeats = args.repeats if repeats is None else repeats

    def decode_fn(name, model, ids, n, sample, tokens=new):
        if name.startswith("ctranslate2"):
            return lambda: model.generate(ids, tokens, copies=n, sample=sample)
        if name.startswith("minigpt"):
            kw = dict(do_sample=True, top_k=50, seed=0) if sample else {}
            return lambda: model.generate(ids, tokens, num_return_sequences=n, **kw)
        kw = dict(do_sample=True, top_k=50) if sample else dict(do_sample=False)
        return lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                      min_new_tokens=tokens, num_return_sequences=n, pad_token_id=0, **kw)

    with torch.inference_mode():
        if "decode" in cases:
            log(f"[{dtype_name}] decode batch 1 ...")
            t = interleave({k: decode_fn(k, m, prompt16, 1, False) for k, m in libs.items()}, repeats, device,
                           warm_up)
            one = interleave({k: decode_fn(k, m, prompt16, 1, False, 1) for k, m in libs.items()}, repeats, device,
                             warm_up)
            per_step = {k: (t[k] - one[k]) / (new - 1) for k in t}
            record(rows, dict(case=f"decode b=1, 16+{new} greedy", dtype=dtype_name, unit="tok/s",
                             values={k: new / v for k, v in t.items()}, seconds=t, per_step=per_step,
                             step_bytes={k: decode_bytes_per_step(m) for k, m in libs.items()}))
        if "samples" in cases:
            log(f"[{dtype_name}] 5 samples ...")
            t = interleave({k: decode_fn(k, m, prompt16, 5, True) for k, m in libs.items()}, repeats, device,
                           warm_up)
            record(rows, dict(case=f"5 samples, 16+{new} top-k 50", dtype=dtype_name, unit="tok/s",
                             values={k: 5 * new / v for k, v in t.items()}, seconds=t))
        if "beams" in cases:
            log(f"[{dtype_name}] beam search, 5 beams ...")
            fns = {}
            for k, m in libs.items():
                if k.startswith("ctranslate2"):
                    fns[k] = (lambda m=m: m.generate(prompt16, new, beams=5))
                elif k.startswith("minigpt"):
                    fns[k] = (lambda m=m: m.generate(prompt16, new, num_beams=5, eos_token_id=-1))
                else:
                    fns[k] = (lambda m=m: m.generate(prompt16, attention_mask=torch.ones_like(prompt16),
                                                     max_new_tokens=new, num_beams=5, do_sample=False,
                                                     eos_token_id=None, pad_token_id=0))
            t = interleave(fns, repeats, device, warm_up)
            record(rows, dict(case=f"beam search, 5 beams, 16+{new}", dtype=dtype_name, unit="tok/s",
                             values={k: new / v for k, v in t.items()}, seconds=t))
        if "prefill" in cases:
            log(f"[{dtype_name}] prefill 512 ...")
            fns = {}
            for k, m in libs.items():
                if k.startswith("ctranslate2"):  # its prefill, as the first step of a generation
                    fns[k] = (lambda m=m: m.generate(prompt512, 1))
                elif k.startswith("minigpt"):
                    fns[k] = (lambda m=m: m(prompt512, last_only=True))
                else:
                    fns[k] = (lambda m=m: m(prompt512, logits_to_keep=1))
            t = interleave(fns, repeats, device, warm_up)
            record(rows, dict(case="prefill 512", dtype=dtype_name, unit="tok/s",
                             values={k: 512 / v for k, v in t.items()}, seconds=t))
    return rows


def prompts(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's prompts [1, 16] and [1, 512]: the same random ids in every process."""
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 50000, (1, 16), generator=gen).to(device),
            torch.randint(0, 50000, (1, 512), generator=gen).to(device))


def ctranslate2_rows(model_dir: Path, args, work: Path, *, repeats: int, first: bool) -> list[dict]:
    """CTranslate2's rows, measured in a child process: with its own thread pool in this process, minigpt's and
    transformers' steps measured 25-60% slower after CTranslate2 had run (two runtimes' threads on 2 cores).
    The child converts the checkpoint into `work` (once: later rounds reuse it) and warms up before it times (a
    fresh process each round); the first round also checks CTranslate2's greedy tokens against minigpt's."""
    command = [sys.executable, __file__, "--ctranslate2-child", str(model_dir), "--cases", args.cases,
               "--repeats", str(repeats), "--new-tokens", str(args.new_tokens), "--ctranslate2-work", str(work)]
    if not first:
        command.append("--ctranslate2-later-round")
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # its progress lines pass through stderr
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
    except (ValueError, IndexError):
        log("the CTranslate2 child printed no results: no CTranslate2 rows")
        return []


def ctranslate2_child(args) -> int:
    """Convert, check and time CTranslate2 (fp32, int8) alone; print its rows as JSON on stdout."""
    model_dir = Path(args.ctranslate2_child)
    torch.set_num_threads(os.cpu_count() or 1)
    rows: list[dict] = []
    ct2 = ctranslate2_models(model_dir, Path(args.ctranslate2_work), torch.get_num_threads())
    if ct2:
        prompt16, prompt512 = prompts("cpu")
        if not args.ctranslate2_later_round:
            from minigpt import GPT

            with torch.inference_mode():  # a sanity check that both compute the same model
                reference = GPT.from_pretrained(str(model_dir)).generate(prompt16, 16)[0, 16:].tolist()
            for name, model in ct2.items():
                same = sum(a == b for a, b in zip(model.generate(prompt16, 16)[0], reference))
                log(f"  {name} greedy: {same} of 16 tokens equal to minigpt fp32's")
        rows = time_cases(ct2, set(args.cases.split(",")), args, "float32", "cpu", prompt16, prompt512)
    print(json.dumps(rows, default=str))
    return 0


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """One row per case from several rounds' rows (same cases, same order): each library's median."""
    merged = []
    for rows in zip(*rounds):
        row = dict(rows[0])
        for key in ("values", "seconds", "per_step"):
            if key in row:
                row[key] = {lib: statistics.median(r[key][lib] for r in rows) for lib in row[key]}
        merged.append(row)
    return merged


def main() -> int:
    args = parse_args()
    if args.ctranslate2_child:
        return ctranslate2_child(args)
    from minigpt import GPT

    device = args.device
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    use_hf = not args.no_transformers
    if use_hf:
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            log("transformers is not installed: timing minigpt alone")
            use_hf = False
    cases = set(args.cases.split(","))
    tmp = None
    if args.model:
        model_dir = Path(args.model)
    else:
        tmp = tempfile.TemporaryDirectory()
        log(f"building a random {args.shape}-shape checkpoint ...")
        model_dir = make_random_checkpoint(args.shape, Path(tmp.name) / args.shape, DTYPES[args.checkpoint_dtype])
    weights = model_dir / "model.safetensors"
    ckpt_mb = weights.stat().st_size / 1e6 if weights.exists() else float("nan")
    floor = read_floor_gbps() if device == "cpu" else None
    int8 = not args.no_int8 and device == "cpu"  # int8 is measured on CPUs; on GPUs it is untested (README)

    with_ct2 = device == "cpu" and not args.no_ctranslate2 and importlib.util.find_spec("ctranslate2") is not None
    if device == "cpu" and not args.no_ctranslate2 and not with_ct2:
        log("ctranslate2 is not installed: no CTranslate2 rows (pip install ctranslate2)")
    ct2_work = tempfile.TemporaryDirectory() if with_ct2 else None

    rows: list[dict] = []
    prompt16, prompt512 = prompts(device)

    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        log(f"[{dtype_name}] loading ...")
        libs = {"minigpt": GPT.from_pretrained(str(model_dir), device=device, dtype=dtype)}
        if int8 and dtype == torch.float32:
            libs["minigpt int8"] = GPT.from_pretrained(str(model_dir), device=device, dtype=dtype, quantize="int8")
        if args.compile:
            for name in list(libs):
                quantize = "int8" if libs[name].quantized else None
                libs[f"{name}+compile"] = GPT.from_pretrained(str(model_dir), device=device, dtype=dtype,
                                                              compile=True, quantize=quantize)
        if use_hf:
            libs["transformers"] = GPT2LMHeadModel.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
        ct2_rows: list[dict] = []
        if ct2_work is not None and dtype == torch.float32:
            # Rounds: this process's libraries once each, then CTranslate2's process once, --repeats times.
            mine, theirs = [], []
            for r in range(args.repeats):
                log(f"[{dtype_name}] round {r + 1} of {args.repeats} (CTranslate2 in its own process after each)")
                mine.append(time_cases(libs, cases, args, dtype_name, device, prompt16, prompt512, repeats=1,
                                       warm_up=r == 0))
                if r == 0 or theirs[0]:  # no rows from the first round (no vocabulary, ...): no more tries
                    theirs.append(ctranslate2_rows(model_dir, args, Path(ct2_work.name), repeats=1, first=r == 0))
            rows += median_rows(mine)
            if all(theirs):
                ct2_rows = median_rows(theirs)
        else:
            rows += time_cases(libs, cases, args, dtype_name, device, prompt16, prompt512)
        for row in ct2_rows:  # CTranslate2's rows, measured in a process of their own
            mine = next((r for r in rows if (r["case"], r["dtype"]) == (row["case"], row["dtype"])), None)
            if mine is not None:
                for key in ("values", "seconds", "per_step", "step_bytes"):
                    if key in row:
                        mine.setdefault(key, {}).update(row[key])
        del libs

    if "load" in cases:
        log("load time ...")
        loaders = {"minigpt": lambda: GPT.from_pretrained(str(model_dir), device=device),
                   "minigpt (layouts as-is)": lambda: GPT.from_pretrained(str(model_dir), device=device,
                                                                          layouts="as-is")}
        if int8:
            loaders["minigpt int8"] = lambda: GPT.from_pretrained(str(model_dir), device=device, quantize="int8")
        if use_hf:
            loaders["transformers"] = lambda: GPT2LMHeadModel.from_pretrained(str(model_dir)).to(device)
        t = interleave(loaders, args.repeats, device)
        record(rows, dict(case="load (warm page cache, layouts from this machine's stored choices)", dtype="float32",
                          unit="s", values=t, seconds=t))
        if device == "cpu":
            rss = {"minigpt": peak_rss_after_load("minigpt", model_dir, "float32"),
                   "python+torch alone": peak_rss_after_load("none", model_dir, "float32")}
            if int8:
                rss["minigpt int8"] = peak_rss_after_load("minigpt int8", model_dir, "float32")
            if use_hf:
                rss["transformers"] = peak_rss_after_load("transformers", model_dir, "float32")
            record(rows, dict(case=f"peak RSS after load (checkpoint {ckpt_mb:.0f} MB)", dtype="float32",
                             unit="MB", values=rss, seconds=rss))

    print_table(rows, args, device, floor)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dict(machine=machine_line(device), floor_gbps=floor, rows=rows),
                                                  indent=2, default=str))
    for directory in (tmp, ct2_work):
        if directory is not None:
            directory.cleanup()
    return 0


def cpu_flags() -> str:
    """The vector ISA flags of /proc/cpuinfo that decide which kernels are fast."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4_2", "asimd", "sve"))]
    return " ".join(sorted(wanted)) or "none of avx/amx/fma/f16c"


def machine_line(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from minigpt.machine import ISA_CAP_ENVS, isa_caps

    caps = isa_caps(ISA_CAP_ENVS + ("CT2_FORCE_CPU_ISA",))
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads; "
            f"flags: {cpu_flags()}" + (f"; instruction sets capped: {' '.join(caps)}" if caps else ""))


def print_table(rows: list[dict], args, device: str, floor: float | None) -> None:
    """One line per (case, dtype, library): the value, the ratio to transformers on the same case and dtype,
    and for decode rows ms/step, GB/s and the share of the read floor."""
    print(f"\nMachine: {machine_line(device)}. Medians of {args.repeats} interleaved runs.")
    if floor:
        print(f"Read floor: `a.sum()` over 512 MB at {floor:.1f} GB/s.")
    print("\n| case | dtype | library | value | vs transformers | ms/step | MB/step | GB/s | of floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        hf = r["values"].get("transformers")
        for lib, v in sorted(r["values"].items(), key=lambda kv: (kv[0] == "transformers", kv[0])):
            value = f"{v:.2f} s" if r["unit"] == "s" else f"{v:.1f} {r['unit']}"
            ratio = ""
            if hf and lib != "transformers" and r["unit"] != "MB":
                ratio = f"{(v / hf if r['unit'] == 'tok/s' else hf / v):.2f}×"
            step = mb = gbps = share = ""
            if "per_step" in r:
                seconds, size = r["per_step"][lib], r["step_bytes"][lib]
                step, mb, gbps = f"{seconds * 1e3:.1f}", f"{size / 1e6:.0f}", f"{size / seconds / 1e9:.1f}"
                share = f"{size / seconds / 1e9 / floor:.0%}" if floor else ""
            print(f"| {r['case']} | {r['dtype']} | {lib} | {value} | {ratio} | {step} | {mb} | {gbps} | {share} |")
    decode = {r["dtype"]: r for r in rows if "per_step" in r}
    if {"float32", "bfloat16"} <= set(decode):
        ratio = decode["bfloat16"]["values"]["minigpt"] / decode["float32"]["values"]["minigpt"]
        print(f"\nminigpt bf16 decode vs its fp32 decode: {ratio:.2f}× (target ≥ 1.0: bf16 reads half the bytes)")
    if "float32" in decode and "transformers" in decode["float32"]["values"]:
        values = decode["float32"]["values"]
        for lib in (k for k in values if k.startswith("minigpt int8")):
            print(f"{lib} decode vs transformers fp32: {values[lib] / values['transformers']:.2f}× (target ≥ 3.0)")


if __name__ == "__main__":
    sys.exit(main())
