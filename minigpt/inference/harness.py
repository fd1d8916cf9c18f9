"""lm-evaluation-harness's model interface over minigpt: `MinigptLM`, registered with lm-eval as "minigpt".

    import lm_eval
    from minigpt.inference.harness import MinigptLM
    lm_eval.simple_evaluate(model=MinigptLM("gpt2"), tasks=["lambada_openai"])

or `minigpt-eval --model gpt2 --tasks lambada_openai` (`minigpt.cli.eval`). The three request types follow lm-eval's
own `hf` model token for token, so the numbers are the ones it gives on the same checkpoint:
- `loglikelihood`: lm-eval's context/continuation split (`TemplateLM._encode_pair`), the input cut to the last
  `max_length` tokens, log-probs of the continuation and whether greedy decoding would produce it. Only the
  continuation's positions go through the LM head ([N_cont, V], not [B, T, V]): the speed-up over `hf`.
- `loglikelihood_rolling`: lm-eval's maximal-context windows (`get_rolling_token_windows`, context 1), summed.
- `generate_until`: the context left-truncated to `max_length - max_gen_toks` tokens, greedy (or sampled, seeded)
  decoding through minigpt's padding-exact batched cache, cut at the first stop string.
Requires the optional extra: pip install "minigpt[eval]".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import MiniGPTError
from ..extras import MissingExtra
from ..loading import load_pretrained
from ..model import Transformer
from ..tokenizer import Tokenizer
from .sampling import SamplingParams
from .generation import generate
from .text import cut_at_stop, left_pad, stop_strings_check

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - exercised only without the extra
    raise MissingExtra('lm-evaluation-harness is not installed: pip install "minigpt[eval]" (or pip install '
                       "lm-eval)") from None

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

# (text pair, context token ids, continuation token ids): lm-eval's request after tokenisation
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


@register_model("minigpt")
class MinigptLM(TemplateLM):
    """A minigpt checkpoint (hub id, directory or .safetensors file) as an lm-eval model.

    pretrained: what `minigpt.GPT.from_pretrained` loads; batch_size: requests per forward ("auto" = 16);
    max_length: the longest input (default: the model's context); device / dtype: where and how to run;
    seed: for sampled generation (greedy ignores it).
    """

    def __init__(self, pretrained: str | Transformer = "gpt2", *, tokenizer: str | Tokenizer | None = None,
                 batch_size: int | str | None = 16, max_batch_size: int | None = None, max_length: int | str | None = None,
                 device: str | None = None, dtype: str | torch.dtype | None = None, seed: int | str = 0,
                 **unused) -> None:
        super().__init__()
        if isinstance(dtype, str):
            if dtype not in DTYPES and dtype != "auto":
                raise MiniGPTError(f"dtype {dtype!r}: use one of {sorted(DTYPES)}")
            dtype = DTYPES.get(dtype)
        if isinstance(pretrained, Transformer):
            self.model, source = pretrained, None
        else:
            source = str(pretrained)
            self.model = load_pretrained(source, device=device or "cpu", dtype=dtype)
        self.model.eval()
        if isinstance(tokenizer, Tokenizer):
            self.tok = tokenizer
        elif tokenizer is not None:
            self.tok = Tokenizer.from_pretrained(str(tokenizer))
        else:
            self.tok = Tokenizer.for_model(source) if source else Tokenizer.for_model(None)
        self.source = source or "minigpt"
        self.batch_size = 16 if batch_size is None or str(batch_size).startswith("auto") else int(batch_size)
        if self.batch_size < 1:
            raise MiniGPTError(f"batch_size must be >= 1, got {batch_size}")
        self.max_length = int(max_length) if max_length else self.model.config.n_positions
        if not 1 < self.max_length <= self.model.config.n_positions:
            raise MiniGPTError(f"max_length {self.max_length} must be in [2, {self.model.config.n_positions}]")
        self.seed = int(seed)

    # ----- what lm-eval asks of a TemplateLM

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_token_id

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def tokenizer_name(self) -> str:
        return self.source

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # As GPT-2's HF tokenizer: "<|endoftext|>" in the text is the special token.
        return self.tok.encode(string, allow_special=True)

    def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
        return self.tok.decode(list(tokens))

    # ----- log-likelihoods

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False,
                              **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), continuation is the greedy one) per request, longest first in
        batches of right-padded rows (causal attention: padding after a row never touches it)."""
        inputs, targets = [], []
        for _, context, continuation in requests:
            if not context or not continuation:
                raise MiniGPTError("lm-eval sent an empty context or continuation")
            if len(continuation) > self.max_length:
                raise MiniGPTError(f"a continuation of {len(continuation)} tokens exceeds max_length {self.max_length}")
            inputs.append((context + continuation)[-(self.max_length + 1):-1])  # as lm-eval's hf model
            targets.append(continuation)
        order = sorted(range(len(requests)), key=lambda i: (-len(inputs[i]), inputs[i]))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            for i, got in zip(rows, self._score_batch([inputs[i] for i in rows], [targets[i] for i in rows])):
                results[i] = got
        return results  # type: ignore[return-value]

    def _score_batch(self, inputs: list[list[int]], targets: list[list[int]]) -> list[tuple[float, bool]]:
        width = max(len(row) for row in inputs)
        ids = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)  # [B, T] right-padded
        for b, row in enumerate(inputs):
            ids[b, : len(row)] = torch.tensor(row)
        hidden = self.model.features(ids.to(self.device))  # [B, T, C]
        # the positions that predict each row's continuation: its last len(target) input positions
        picked = torch.cat([hidden[b, len(row) - len(tgt): len(row)] for b, (row, tgt) in
                            enumerate(zip(inputs, targets))])  # [N, C]
        logps = self.model.lm_head(picked).float().log_softmax(-1)  # [N, V]
        flat = torch.tensor([t for tgt in targets for t in tgt], device=logps.device)  # [N]
        token_logps = logps.gather(-1, flat[:, None])[:, 0]  # [N]
        greedy = logps.argmax(-1) == flat  # [N]
        out, at = [], 0
        for tgt in targets:
            n = len(tgt)
            out.append((float(token_logps[at: at + n].sum()), bool(greedy[at: at + n].all())))
            at += n
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each string's whole log-likelihood over lm-eval's maximal-context windows (as its `hf` model)."""
        windows: list[TokenRequest] = []
        counts = []
        for (string,) in (request.args for request in requests):
            parts = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            windows += [(None, context, continuation) for context, continuation in parts]
            counts.append(len(parts))
        scores = self._loglikelihood_tokens(windows)
        out, at = [], 0
        for (string,), n in zip((request.args for request in requests), counts):
            total = sum(score for score, _ in scores[at: at + n])
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
            at += n
        return out

    # ----- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, <|endoftext|> or max_gen_toks (lm-eval's defaults: 256
        tokens, greedy); requests with the same generation arguments share batches."""
        groups: dict[str, list[int]] = {}
        args = [request.args for request in requests]
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        results: list[str | None] = [None] * len(args)
        for rows in groups.values():
            gen_kwargs = dict(args[rows[0]][1])
            rows = sorted(rows, key=lambda i: -len(self.tok_encode(args[i][0])))
            for start in range(0, len(rows), self.batch_size):
                batch = rows[start: start + self.batch_size]
                for i, text in zip(batch, self._generate([args[i][0] for i in batch], dict(gen_kwargs))):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        max_gen = int(gen_kwargs.pop("max_gen_toks", gen_kwargs.pop("max_new_tokens", 256)))
        temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        do_sample = bool(gen_kwargs.pop("do_sample", temperature > 0)) and temperature > 0
        if max_gen >= self.max_length:
            raise MiniGPTError(f"max_gen_toks {max_gen} leaves no room for a context in {self.max_length} tokens")
        keep = self.max_length - max_gen  # as lm-eval's hf model: the context's last max_length - max_gen tokens
        prompts = [self.tok_encode(c)[-keep:] or [self.eot_token_id] for c in contexts]
        params = SamplingParams(do_sample=do_sample, temperature=temperature if do_sample else 1.0,
                                top_p=float(gen_kwargs["top_p"]) if do_sample and "top_p" in gen_kwargs else None)
        eos = self.eot_token_id
        until = until + [self.tok_decode([eos])]  # as lm-eval's hf model, whose text may spell it out
        stops = [s for s in until if s]
        ids, mask = left_pad(prompts, eos)  # [B, T]
        sequences = generate(self.model, ids, max_gen, attention_mask=mask, params=params, eos_token_id=eos,
                             stop=stop_strings_check(self.tok, stops) if stops else None,
                             seed=self.seed if do_sample else None)  # [B, T + new]
        out = []
        for row in sequences[:, ids.shape[1]:].tolist():
            new = row[: row.index(eos)] if eos in row else row
            out.append(cut(self.tok_decode(new), until))
        return out


def cut(text: str, stops: Sequence[str]) -> str:
    """The text before the first occurrence of any stop string (lm-eval's postprocessing)."""
    return cut_at_stop(text, stops)[0]


def evaluate(model: MinigptLM, tasks: list[str], *, include_path: str | None = None, num_fewshot: int | None = None,
             limit: float | None = None, seed: int = 0, log_samples: bool = False) -> dict:
    """`lm_eval.simple_evaluate` over `model` (tasks from lm-eval's registry and `include_path`'s YAML files);
    an unknown task name is one clear error."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise MiniGPTError(f"unknown lm-eval task(s): {', '.join(unknown)} (lm_eval ls tasks lists them; "
                           "--include-path adds a directory of task YAML files)")
    results = lm_eval.simple_evaluate(model=model, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=manager, log_samples=log_samples, random_seed=seed,
                                      numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    if results is None:
        raise MiniGPTError("lm-eval returned no results")
    return dict(results)
