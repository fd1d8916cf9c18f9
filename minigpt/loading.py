"""Loading HuggingFace GPT-2 checkpoints onto the model: find the files, read the tensors, check and assign them.

Loading is key handling and nothing more: drop a `transformer.` prefix, ignore the `attn.bias` mask buffers and
the tied `lm_head.weight`. The model is built on the meta device and the checkpoint's tensors are assigned as
they are stored (Conv1D [in, out], `wte` [V, C]): no random init, and in the checkpoint's dtype no copy at all,
the tensors staying memory-mapped from the file. `minigpt.kernels` may then re-lay out a matrix in place.

`PretrainedMixin` gives a model class `from_pretrained` and `save_pretrained` over these functions and
`minigpt.checkpoint`; `minigpt.GPT` inherits it (this module never imports that class).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import save_pretrained
from .config import GPTConfig
from .errors import CheckpointError, ConfigError
from .hub import hub_download, hub_reachable, offline_message
from .kernels import choose_layouts_
from .machine import layout_mode
from .model import Transformer
from .quantize import QUANTIZE_CHOICES, quantize_
from .template import PromptTemplate

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SCORE_KEY = "score.weight"  # a reward model's head (GPT2ForSequenceClassification)
IGNORED_KEY = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight")


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a checkpoint's pieces are on disk."""

    config: GPTConfig
    weights: list[Path]  # one file, or every shard
    directory: Path | None  # holds config/tokenizer files, when there is one


def load_pretrained(
    name_or_path: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    revision: str | None = None,
    config: GPTConfig | str | None = None,
    allow_pickle: bool = False,
    layouts: str | None = None,
    quantize: str | None = None,
    cls: type[Transformer] = Transformer,
) -> Transformer:
    """Load a GPT-2 checkpoint: a hub id, a local directory, or a single `.safetensors` file.

    config: overrides (or supplies, for a bare file) the model config: a `GPTConfig` or a preset name.
    allow_pickle: also load `.bin` files, through `torch.load(weights_only=True)`.
    layouts: "measure" (the default, or $MINIGPT_KERNELS) stores each CPU weight in the layout whose matrix product
        measured fastest on this machine (`minigpt.kernels`; same names, shapes and values), measured once per
        machine and then reused (`minigpt.machine`); "remeasure" times them again; "as-is" keeps the
        checkpoint's [in, out].
    quantize: "int8" makes an inference-only model with int8 weights for every projection and the LM head
        (`minigpt.quantize`); None keeps the checkpoint's precision.
    cls: the class to build (`minigpt.GPT` passes itself); a subclass of `minigpt.model.Transformer`.
    """
    mode = layout_mode(layouts)
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r}: the choices are {', '.join(QUANTIZE_CHOICES)} (or None)")
    files = resolve_checkpoint(name_or_path, revision=revision, config=config, allow_pickle=allow_pickle)
    dtype = dtype or torch.float32
    device = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device("meta"):
        model = cls(files.config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    state = read_state_dict(files.weights, expected, dtype=dtype, device=device)
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    if quantize is not None:
        quantize_(model, quantize)
    elif mode != "as-is":
        choose_layouts_(model, remeasure=mode == "remeasure")
    return model


def has_tensor(files: CheckpointFiles, key: str) -> bool:
    """Whether any weight file of the checkpoint holds `key` (with or without a `transformer.` prefix)."""
    from safetensors import safe_open

    for file in files.weights:
        if file.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                if key in handle.keys() or f"transformer.{key}" in handle.keys():
                    return True
        except Exception as exc:
            raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({exc})") from None
    return False


# --------------------------------------------------------------------------- finding the files


def resolve_checkpoint(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    config: GPTConfig | str | None = None,
    allow_pickle: bool = False,
) -> CheckpointFiles:
    """Find config and weight files for a local file, a local directory, or a hub id."""
    path = Path(name_or_path).expanduser()
    override = _config_override(config)
    if path.is_file():
        return _resolve_file(path, override, allow_pickle)
    if path.is_dir():
        return _resolve_dir(path, override, allow_pickle)
    text = str(name_or_path)
    if _looks_like_path(text):
        raise CheckpointError(f"checkpoint path does not exist: {text}")
    return _resolve_hub(text, revision, override, allow_pickle)


def _config_override(config: GPTConfig | str | None) -> GPTConfig | None:
    if config is None or isinstance(config, GPTConfig):
        return config
    try:
        return GPTConfig.from_preset(config)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def _looks_like_path(text: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that does not exist is a missing local path."""
    return (
        text.startswith((".", "/", "~", "\\"))
        or text.count("/") > 1
        or text.endswith((".safetensors", ".bin", ".json", ".pt", ".pth"))
        or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", text)
    )


def _read_config(config_path: Path) -> GPTConfig:
    try:
        return GPTConfig.from_json(config_path)
    except ConfigError as exc:
        raise CheckpointError(f"{exc}") from None


def _resolve_file(path: Path, override: GPTConfig | None, allow_pickle: bool) -> CheckpointFiles:
    if path.suffix in (".bin", ".pt", ".pth"):
        _check_pickle_allowed(path, allow_pickle)
    elif path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: not a checkpoint file (expected .safetensors, or a directory)")
    sibling = path.parent / "config.json"
    if override is not None:
        config = override
    elif sibling.is_file():
        config = _read_config(sibling)
    else:
        raise CheckpointError(
            f"{path}: no config.json beside it; pass config='gpt2' (or another preset name) or a GPTConfig"
        )
    return CheckpointFiles(config, [path], path.parent)


def _resolve_dir(path: Path, override: GPTConfig | None, allow_pickle: bool) -> CheckpointFiles:
    config_path = path / "config.json"
    if override is None and not config_path.is_file():
        raise CheckpointError(f"{path}: no config.json in this directory")
    config = override or _read_config(config_path)
    if (path / SAFETENSORS_FILE).is_file():
        return CheckpointFiles(config, [path / SAFETENSORS_FILE], path)
    if (path / SAFETENSORS_INDEX).is_file():
        return CheckpointFiles(config, _shards_from_index(path / SAFETENSORS_INDEX), path)
    if (path / PICKLE_FILES[0]).is_file():
        _check_pickle_allowed(path / PICKLE_FILES[0], allow_pickle)
        return CheckpointFiles(config, [path / PICKLE_FILES[0]], path)
    raise CheckpointError(f"{path}: no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX} in this directory")


def _shard_names(index_path: Path) -> list[str]:
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index_path}: not a valid safetensors index ({exc})") from None


def _shards_from_index(index_path: Path) -> list[Path]:
    shards = [index_path.parent / name for name in _shard_names(index_path)]
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise CheckpointError(f"{index_path}: shard files missing: {', '.join(missing)}")
    return shards


def _check_pickle_allowed(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise CheckpointError(
            f"{path} is a pickle checkpoint; minigpt loads safetensors only. Convert it with "
            "transformers (`GPT2LMHeadModel.from_pretrained(dir).save_pretrained(out)` writes model.safetensors), "
            "or pass allow_pickle=True to load it with torch.load(weights_only=True)"
        )


def _resolve_hub(repo_id: str, revision: str | None, override: GPTConfig | None, allow_pickle: bool) -> CheckpointFiles:
    """Download (or, when the hub cannot be reached, take from the cache) config and weights of a hub repo."""
    online = hub_reachable()
    config = override or _read_config(hub_download(repo_id, "config.json", revision, online=online))
    for filename in (SAFETENSORS_FILE, SAFETENSORS_INDEX) + ((PICKLE_FILES[0],) if allow_pickle else ()):
        local = hub_download(repo_id, filename, revision, online=online, missing_ok=True)
        if local is None:
            continue
        if filename == SAFETENSORS_INDEX:
            for name in _shard_names(local):
                hub_download(repo_id, name, revision, online=online)
            return CheckpointFiles(config, _shards_from_index(local), local.parent)
        return CheckpointFiles(config, [local], local.parent)
    if not online:
        raise CheckpointError(offline_message(repo_id, SAFETENSORS_FILE))
    raise CheckpointError(f"hub repo {repo_id!r} has no {SAFETENSORS_FILE} or {SAFETENSORS_INDEX}")


# --------------------------------------------------------------------------- reading the tensors


def read_state_dict(
    files: list[Path], expected: dict[str, tuple[int, ...]], *, dtype: torch.dtype, device: torch.device
) -> dict[str, Tensor]:
    """Read, rename, transpose and check every tensor; raise CheckpointError naming what disagrees."""
    state: dict[str, Tensor] = {}
    origin: dict[str, Path] = {}
    unexpected: list[str] = []
    for file in files:
        for raw_key, tensor in _iter_tensors(file):
            key = raw_key.removeprefix("transformer.")
            if IGNORED_KEY.fullmatch(key):
                continue
            if key not in expected:
                unexpected.append(raw_key)
                continue
            if key in state:
                raise CheckpointError(f"{file}: tensor {key!r} appears twice (also in {origin[key]})")
            _check_shape(file, raw_key, tuple(tensor.shape), expected[key])
            # Zero-copy where nothing changes: safetensors tensors are views of a private (copy-on-write) map
            # of the file, and `.to` / `.contiguous` return them as they are when dtype, device and layout match.
            state[key] = tensor.to(device=device, dtype=dtype).contiguous()
            origin[key] = file
    where = files[0] if len(files) == 1 else files[0].parent
    if unexpected == ["score.weight"]:
        raise CheckpointError(f"{where}: a reward model (GPT2ForSequenceClassification: it has score.weight and no "
                              "LM head); load it with minigpt.RewardModel.from_pretrained")
    if unexpected:
        raise CheckpointError(f"{where}: unexpected tensors not in GPT-2: {', '.join(sorted(unexpected)[:10])}")
    missing = sorted(set(expected) - set(state))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise CheckpointError(f"{where}: missing tensors: {shown}")
    return state


def _check_shape(file: Path, key: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
    if got != want:
        raise CheckpointError(f"{file}: tensor {key!r} has shape {list(got)} but the config needs {list(want)}")


def _iter_tensors(file: Path):
    """Yield (key, tensor) from a safetensors file (or a pickle file already allowed); wrap every failure."""
    if file.suffix != ".safetensors":
        try:
            data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise CheckpointError(f"{file}: cannot read checkpoint: {exc}") from None
        yield from data.items()
        return
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises SafetensorError, OSError, ValueError...
        raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({exc})") from None


# --------------------------------------------------------------------------- the model class's methods


class PretrainedMixin:
    """`from_pretrained` and `save_pretrained` for a model class built on `minigpt.model.Transformer`."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        **kwargs,
    ):
        """Load a hub id, a local directory or a `.safetensors` file (arguments: `load_pretrained`)."""
        return load_pretrained(name_or_path, device=device, dtype=dtype, revision=revision, cls=cls, **kwargs)

    def save_pretrained(self, directory: str | Path, *, tokenizer=None, template: PromptTemplate | None = None) -> None:
        """Write the hub layout (model.safetensors + config.json, vocab files, template) atomically."""
        save_pretrained(self, directory, tokenizer=tokenizer, template=template)
