#!/usr/bin/env python3
"""Write a synthetic text corpus for trying `minigpt-pretrain` (made up here, no third-party text).

Each document is a few short "lessons": small additions, counting and who-has-what sentences, so a small model
can learn real structure within minutes on a CPU. Usage:

    python examples/synthetic_corpus.py OUT_DIR [--documents 2000] [--files 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo"]
THINGS = ["apples", "books", "candles", "drums", "eggs", "flowers", "glasses", "hats"]


def lesson(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return f"{a} plus {b} is {a + b}."
    if kind == 1:
        n = rng.randint(2, 12)
        return f"Counting to {n}: " + ", ".join(str(i) for i in range(1, n + 1)) + "."
    who, other, n, thing = rng.choice(NAMES), rng.choice(NAMES), rng.randint(2, 9), rng.choice(THINGS)
    return f"{who} has {n} {thing}. {who} gives one to {other}, so {who} has {n - 1} {thing} left."


def document(rng: random.Random) -> str:
    return "\n".join(lesson(rng) for _ in range(rng.randint(4, 12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    per_file = -(-args.documents // args.files)
    for index in range(args.files):
        docs = [document(rng) for _ in range(min(per_file, args.documents - index * per_file))]
        (args.out / f"part{index}.txt").write_text("\n\n---\n\n".join(docs) + "\n", encoding="utf-8")
    print(f"wrote {args.documents} documents in {args.files} files to {args.out} (separator: '\\n\\n---\\n\\n')")


if __name__ == "__main__":
    main()
