import json

import pytest

from minigpt import ConfigError, GPTConfig

PRESETS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024), "gpt2-large": (36, 20, 1280),
           "gpt2-xl": (48, 25, 1600), "distilgpt2": (6, 12, 768)}


@pytest.mark.parametrize("name", PRESETS)
def test_presets(name):
    config = GPTConfig.from_preset(name)
    assert (config.n_layer, config.n_head, config.n_embd) == PRESETS[name]
    assert (config.n_positions, config.vocab_size, config.layer_norm_epsilon) == (1024, 50257, 1e-5)
    assert config.mlp_width == 4 * config.n_embd
    assert GPTConfig.from_preset(f"openai-community/{name}") == config


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'gpt3'"):
        GPTConfig.from_preset("gpt3")


@pytest.mark.parametrize("field, value", [
    ("scale_attn_by_inverse_layer_idx", True),
    ("reorder_and_upcast_attn", True),
    ("activation_function", "gelu"),
    ("activation_function", "relu"),
    ("n_inner", 100),
    ("n_head", 7),
    ("tie_word_embeddings", False),
    ("n_layer", 0),
    ("model_type", "llama"),
])
def test_unsupported_fields_are_named(field, value):
    hf = GPTConfig().to_hf_dict()
    hf[field] = value
    with pytest.raises(ConfigError, match=field if field != "n_head" else "n_embd.*n_head"):
        GPTConfig.from_hf_dict(hf)


def test_accepted_variants():
    hf = GPTConfig().to_hf_dict()
    hf.update(activation_function="gelu_pytorch_tanh", n_inner=3072, unknown_field=1)
    assert GPTConfig.from_hf_dict(hf) == GPTConfig(n_inner=3072)


def test_round_trip_through_hf_dict_and_transformers(tmp_path):
    from transformers import GPT2Config

    config = GPTConfig(n_layer=3, n_head=2, n_embd=32, n_positions=64, vocab_size=300)
    assert GPTConfig.from_hf_dict(config.to_hf_dict()) == config
    (tmp_path / "config.json").write_text(json.dumps(config.to_hf_dict()))
    hf = GPT2Config.from_pretrained(str(tmp_path))
    assert (hf.n_layer, hf.n_head, hf.n_embd, hf.vocab_size) == (3, 2, 32, 300)
    assert GPTConfig.from_json(tmp_path / "config.json") == config


def test_bad_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read config file"):
        GPTConfig.from_json(tmp_path / "config.json")
