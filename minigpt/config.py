"""GPT-2 model configuration: a frozen dataclass, built from a HuggingFace `config.json` or a named preset."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Activation names that mean the tanh-approximate GELU GPT-2 uses.
TANH_GELU_NAMES = ("gelu_new", "gelu_pytorch_tanh")
PRESET_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def preset_dir() -> Path:
    """The named sizes' JSON files: `configs/` in a checkout, `minigpt/presets/` in an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets", here.parent / "configs"):
        if (candidate / "gpt2.json").is_file():
            return candidate
    raise ConfigError(f"preset configs not found beside {here} (expected configs/ or minigpt/presets/)")


@dataclass(frozen=True)
class GPTConfig:
    """Shape and constants of a GPT-2 model. Defaults are the 124M `gpt2`."""

    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_positions: int = 1024
    vocab_size: int = 50257
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    scale_attn_weights: bool = True  # divide attention scores by sqrt(head_dim)
    eos_token_id: int = 50256

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"config field 'n_embd' ({self.n_embd}) must be divisible by 'n_head' ({self.n_head})"
            )
        if self.n_inner is not None and self.n_inner != 4 * self.n_embd:
            raise ConfigError(
                f"config field 'n_inner' must be null or 4*n_embd={4 * self.n_embd}, got {self.n_inner!r}"
            )
        if not self.layer_norm_epsilon > 0:
            raise ConfigError(f"config field 'layer_norm_epsilon' must be > 0, got {self.layer_norm_epsilon!r}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> "GPTConfig":
        """Build from the fields of a HuggingFace GPT-2 `config.json`, refusing what this model cannot do."""
        refused = {
            "scale_attn_by_inverse_layer_idx": True,
            "reorder_and_upcast_attn": True,
            "add_cross_attention": True,
            "tie_word_embeddings": False,
        }
        for field, bad in refused.items():
            if hf.get(field, not bad) == bad:
                raise ConfigError(f"config field {field!r}={bad!r} is not supported by minigpt's GPT-2")
        model_type = hf.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"config field 'model_type' is {model_type!r}; minigpt only loads 'gpt2' models")
        activation = hf.get("activation_function", "gelu_new")
        if activation not in TANH_GELU_NAMES:
            raise ConfigError(
                f"config field 'activation_function'={activation!r} is not supported "
                f"(GPT-2 uses the tanh GELU: {' or '.join(TANH_GELU_NAMES)})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: hf[k] for k in known if hf.get(k) is not None})

    @classmethod
    def from_json(cls, path: str | Path) -> "GPTConfig":
        """Read a HuggingFace-style `config.json`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} does not hold a JSON object")
        return cls.from_hf_dict(data)

    @classmethod
    def from_preset(cls, name: str) -> "GPTConfig":
        """One of the public sizes: gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2."""
        bare = name.split("/")[-1]
        if bare not in PRESET_NAMES:
            raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
        return cls.from_json(preset_dir() / f"{bare}.json")

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` fields transformers' GPT2LMHeadModel needs to load this model."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_embd": self.n_embd,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "vocab_size": self.vocab_size,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "n_inner": self.n_inner,
            "activation_function": "gelu_new",
            "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True,
            "bos_token_id": self.eos_token_id,
            "eos_token_id": self.eos_token_id,
        }
