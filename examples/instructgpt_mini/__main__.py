"""InstructGPT in miniature: pretrain -> SFT -> comparisons -> reward model -> PPO (and PPO-ptx, DPO, best-of-n),
judged on held-out prompts by a labeler the models never see.

    python -m examples.instructgpt_mini --out runs/mini              # the whole paper, 26 min on 2 CPU cores
    python -m examples.instructgpt_mini --out runs/mini --seed 1     # another seed
    python -m examples.instructgpt_mini --out runs/tiny --scale 0.1  # a quick smoke run

Each stage writes its directory under --out and is recorded in `stages.json` when done; run the same command
again after a stop and finished stages are skipped. The training stages run minigpt's CLIs (the commands are
printed), PPO runs through `minigpt.train.train_ppo` in segments so the labeler can score it along the way.
Results: `report.md` (the table), `curves.png`, `results.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .pipeline import Pipeline, Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.instructgpt_mini", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="run directory (resumable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world, the data and every stage")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies data sizes and steps (0.05 for a "
                        "smoke run; > 1 for a GPU)")
    parser.add_argument("--start", help="skip pretraining and start SFT from this model (e.g. gpt2; its "
                        "tokenizer must be GPT-2's)")
    parser.add_argument("--device", default="auto", help="device for every stage (default: auto)")
    args = parser.parse_args(argv)
    shared = Path(__file__).resolve().parents[3] / "shared" / "gpt2-tokenizer"  # beside a checkout, if there
    if shared.is_dir():
        os.environ.setdefault("MINIGPT_TOKENIZER_DIR", str(shared))
    settings = Settings.scaled(args.scale, seed=args.seed, start=args.start, device=args.device)
    started = time.perf_counter()
    pipeline = Pipeline(Path(args.out), settings)
    pipeline.run()
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {pipeline.out / 'report.md'}", file=sys.stderr)
    print((pipeline.out / "report.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
