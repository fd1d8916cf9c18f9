"""Every command in the README and docs/ runs, in order, page by page, as a user would type it.

Each page's ```bash blocks, then its ```python blocks as one script, run in one fresh directory (with `examples/` and `scripts/` beside them), offline, with
`gpt2` in a private HuggingFace cache as a small random-weight model over GPT-2's real vocabulary, so the
commands run as written and finish in seconds. A few numbers are shrunk (SHRINK: the command is the same, it
just does less), a few commands cannot run here at all (NOT_RUN, with the reason); everything else must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO_ROOT, copy_tokenizer_files, fill_hf_cache, make_hf_model

pytestmark = pytest.mark.slow

PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# (what the docs say, what runs here, why): the same command, smaller.
SHRINK = [
    ("--documents 2000", "--documents 40", "a smaller synthetic corpus"),
    ("--batch-size 16 --lr 1e-3 --max-steps 600 ", "--batch-size 4 --lr 1e-3 --max-steps 4 ",
     "a few small steps of pretraining, not a converged model"),
    ("--epochs 3", "--epochs 1", "one epoch of fine-tuning"),
    ("--lr 1e-4 --epochs 1 --out runs/gpt2-notes", "--lr 1e-4 --epochs 1 --block-size 128 --out runs/gpt2-notes",
     "128-token windows over a few KB of notes"),
    ("--out runs/ppo ", "--out runs/ppo --max-steps 2 ", "two PPO steps, not a pass over every prompt"),
    ("python scripts/bench.py",
     "python scripts/bench.py --model gpt2-checkpoint --cases decode --dtypes float32 --repeats 1 --new-tokens 4 "
     "--no-int8", "one tiny decode case, not the whole benchmark of a gpt2-shape model"),
]
NOT_RUN = {
    "pytest": "the test suite itself (CI runs it)",
    "torchrun": "a multi-GPU pretraining run of gpt2 on OpenWebText",
    "python -m examples.instructgpt_mini": "the ~30-minute miniature InstructGPT run (tests/test_instructgpt_mini.py "
                                           "runs the same pipeline shrunken)",
}
PIP = re.compile(r"^pip install [^&]*&&\s*")  # the environment under test is installed already


def python_code(page: Path) -> str:
    """The page's ```python blocks, in order, as one script (later blocks use earlier blocks' names)."""
    return "\n".join(re.findall(r"^```python\n(.*?)^```", page.read_text(encoding="utf-8"), re.S | re.M))


def commands(page: Path) -> list[tuple[int, str]]:
    """(line, command) for each command of the page's ```bash blocks, continuation lines joined."""
    found, block = [], None
    for line_no, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if block is None:
            if line.strip() == "```bash":
                block = []
            continue
        if line.strip() == "```":
            block = None
            continue
        if block and block[-1].endswith("\\"):
            block[-1] = block[-1][:-1] + line.strip()
            found[-1] = (found[-1][0], block[-1])
        elif line.strip():
            block.append(line)
            found.append((line_no, line))
    return [(n, cmd.strip()) for n, cmd in found]


def as_run_here(command: str) -> str | None:
    """The command this check runs for `command`, or None for one in NOT_RUN."""
    command = PIP.sub("", command)
    if any(command.split()[0] == key or command.startswith(key + " ") for key in NOT_RUN):
        return None
    for said, runs, _ in SHRINK:
        command = command.replace(said, runs)
    return command


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tokenizer_files) -> Path:
    """A HuggingFace cache whose `gpt2` is a 2-layer random model with GPT-2's vocabulary files."""
    source = tmp_path_factory.mktemp("gpt2src")
    make_hf_model(seed=11, n_layer=2, n_head=4, n_embd=64, n_positions=1024, vocab_size=50257,
                  bos_token_id=50256, eos_token_id=50256).save_pretrained(source)
    copy_tokenizer_files(tokenizer_files, source)
    home = tmp_path_factory.mktemp("hf")
    fill_hf_cache(home, "gpt2", source)
    return home


def workdir(root: Path, hf_home: Path) -> Path:
    """A fresh directory as a user's clone would look, plus a folder of notes for the `notes/**` example."""
    root.mkdir()
    for name in ("examples", "scripts"):
        (root / name).symlink_to(REPO_ROOT / name)
    (root / "gpt2-checkpoint").symlink_to(next((hf_home / "hub" / "models--gpt2" / "snapshots").iterdir()))
    notes = root / "notes" / "2026"
    notes.mkdir(parents=True)
    for i in range(4):  # ~4k tokens: enough to hold out 5% and still fill 128-token windows
        lines = (f"Note {i}.{j}: the shop opens at {8 + i} and closes at {17 + j % 5}.\n" for j in range(60))
        (notes / f"n{i}.txt").write_text("".join(lines))
    return root


def test_every_page_has_commands_and_every_command_is_accounted_for():
    for page in PAGES:
        if page.name in ("limits.md",):
            continue
        assert commands(page), f"{page.name} shows no command"
    shown = [cmd for page in PAGES for _, cmd in commands(page)]
    assert any(as_run_here(c) is None for c in shown)  # NOT_RUN is not stale
    for said, _, _ in SHRINK:
        assert any(said in c for c in shown), f"SHRINK entry {said!r} matches no command any more"


@pytest.mark.parametrize("page", [p for p in PAGES if commands(p) or python_code(p)], ids=lambda p: p.name)
def test_page_commands_run(page, hf_home, tmp_path):
    cwd = workdir(tmp_path / "clone", hf_home)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key in ("MINIGPT_DEBUG", "HF_HUB_CACHE", "MINIGPT_TOKENIZER_DIR"):
        env.pop(key, None)
    for line, command in commands(page):
        runnable = as_run_here(command)
        if runnable is None:
            continue
        proc = subprocess.run(["bash", "-c", runnable], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (f"{page.name}:{line}: `{runnable}` exited {proc.returncode}\n"
                                      f"{proc.stderr[-3000:]}")
    if python_code(page):
        proc = subprocess.run([sys.executable, "-c", python_code(page)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"{page.name}: the Python blocks failed\n{proc.stderr[-3000:]}"
