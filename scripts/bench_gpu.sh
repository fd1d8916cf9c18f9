#!/usr/bin/env bash
# One prepared GPU check (about 8 minutes on one GPU): the parity tests on CUDA, bf16-vs-fp32 agreement,
# then the benchmark for a gpt2-shape and a gpt2-xl-shape random checkpoint. Results go to stdout and, when
# $OUT is set, to $OUT/. Run from the repo root: bash scripts/bench_gpu.sh
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT="${OUT:-/tmp/minigpt-gpu}"; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

echo "== parity tests on CUDA"
timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_model.py tests/test_generation.py tests/test_fast.py \
  --device cuda 2>&1 | tail -n 15

echo "== bf16 vs fp32 agreement, HBM copy bandwidth"
timeout 120 python3 - <<'PY'
import sys, tempfile, torch
from pathlib import Path
sys.path.insert(0, "scripts")
from bench import make_random_checkpoint
from minigpt import GPT
d = make_random_checkpoint("gpt2", Path(tempfile.mkdtemp()) / "g")
fp32 = GPT.from_pretrained(str(d), device="cuda")
ids = torch.randint(0, 50257, (4, 128), generator=torch.Generator().manual_seed(0)).cuda()
ref = fp32(ids).float()
for name in ("bfloat16", "float16"):
    low = GPT.from_pretrained(str(d), device="cuda", dtype=getattr(torch, name))
    out = low(ids).float()
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean().item()
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    g32, g16 = fp32.generate(ids[:1, :16], 32), low.generate(ids[:1, :16], 32)
    same = (g32 == g16).all(0).float().cumprod(0).sum().item() - 16
    print(f"{name}: finite={torch.isfinite(out).all().item()} max|diff|/max|logit|={rel:.4f} "
          f"argmax agreement={agree:.3f} greedy tokens equal to fp32 before first divergence={same:.0f}/32")
x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); s, e = torch.cuda.Event(True), torch.cuda.Event(True); s.record()
for _ in range(10): y.copy_(x)
e.record(); torch.cuda.synchronize()
print(f"HBM device-to-device copy: {2 * 10 * x.numel() / (s.elapsed_time(e) / 1e3) / 1e12:.2f} TB/s (read + write)")
PY

echo "== benchmark: gpt2 shape"
timeout 300 python3 scripts/bench.py --device cuda --compile --repeats 5 --cases decode,samples,prefill \
  --json-out "$OUT/gpt2.json" 2>&1 | grep -v -e "Loading weights" -e "^\s*$" | tee "$OUT/gpt2.md"

echo "== benchmark: gpt2-xl shape, bf16"
timeout 300 python3 scripts/bench.py --device cuda --compile --repeats 3 --shape gpt2-xl --checkpoint-dtype bfloat16 \
  --dtypes bfloat16 --cases decode --json-out "$OUT/xl.json" 2>&1 | grep -v -e "Loading weights" -e "^\s*$" | tee "$OUT/xl.md"
