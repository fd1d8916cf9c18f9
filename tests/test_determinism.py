"""Exact at speed: no stopwatch decides the numbers. A row's tokens do not depend on its batch, and two processes
on one machine give the same tokens and log-probs (the measured kernel choices are stored and reused)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from minigpt import GPT
from minigpt.text import left_pad

pytestmark = pytest.mark.slow  # gpt2-shape decoding in batches of 32; fresh processes


@torch.no_grad()
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_rows_tokens_do_not_depend_on_its_batch(gpt2_shape_dir, quantize):
    """6 ragged prompts x 40 greedy tokens: alone, and as rows of a left-padded batch of 32, identical."""
    model = GPT.from_pretrained(str(gpt2_shape_dir), quantize=quantize)
    gen = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 50257, (n,), generator=gen).tolist() for n in (3, 9, 14, 5, 16, 11)]
    fillers = [torch.randint(0, 50257, (int(n),), generator=gen).tolist()
               for n in torch.randint(2, 17, (26,), generator=gen)]
    ids, mask = left_pad(prompts + fillers, 50256)
    batch = model.generate(ids, 40, attention_mask=mask, eos_token_id=-1)[:, ids.shape[1]:]
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), 40, eos_token_id=-1)[0, len(prompt):]
        assert torch.equal(alone, batch[row]), f"prompt {row}: first difference at new token " \
            f"{int((alone != batch[row]).nonzero()[0])}"


SCRIPT = """
import json, sys, torch
from minigpt import GPT
path, out = sys.argv[1], {}
for name, kwargs in {"fp32": {}, "bf16": {"dtype": torch.bfloat16}, "int8": {"quantize": "int8"}}.items():
    model = GPT.from_pretrained(path, **kwargs)
    ids = torch.tensor([[464, 3290, 373, 1043, 287]])
    greedy = model.generate(ids, 24, eos_token_id=-1, return_dict=True)
    sampled = model.generate(ids, 24, do_sample=True, top_k=40, seed=11, eos_token_id=-1, return_dict=True)
    out[name] = [greedy.sequences.tolist(), [v.hex() for v in greedy.token_logprobs.double().flatten().tolist()],
                 sampled.sequences.tolist(), [v.hex() for v in sampled.token_logprobs.double().flatten().tolist()]]
print(json.dumps(out))
"""


def test_two_processes_give_identical_tokens_and_logprobs(gpt2_shape_dir, tmp_path):
    store = tmp_path / "kernels.json"
    env = {**os.environ, "MINIGPT_KERNEL_CACHE": str(store), "OMP_NUM_THREADS": "2"}
    env.pop("MINIGPT_KERNELS", None)

    def run() -> dict:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(gpt2_shape_dir)], capture_output=True, text=True,
                              env=env, timeout=600, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = run()
    measured = store.read_text()
    assert json.loads(measured)["machines"]  # the first process measured and stored its choices
    second = run()
    assert store.read_text() == measured  # the second measured nothing
    for name in ("fp32", "bf16", "int8"):
        assert first[name] == second[name], name
