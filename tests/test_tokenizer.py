"""The tokenizer against transformers' GPT-2 tokenizer on the real BPE files."""

import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import copy_tokenizer_files

from minigpt import Tokenizer, TokenizerError

CORPUS = [
    "hello world",
    "Hello world",
    "The dog",
    "The quick brown fox jumps over the lazy dog. It's 3:14pm, isn't it? We'll see; they've gone, I'd say.",
    "你好，世界！机器学习很有趣。",
    "日本語のテキストも大丈夫ですか",
    "Emoji: 🙂🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\n",
    "    leading spaces, trailing spaces    ",
    "runs   of    spaces\n\n\n\nand newlines\r\n\r\n",
    "digits 0123456789 3.14159 1,000,000 2026-11-28",
    "Ünïcödé àccents — em-dash … ellipsis «quotes» ‘single’",
    "   ",
    "\n",
    "",
    "a" * 300,
    "Ἀρχιμήδης ∑∫√∞ ≠ ≤ ≥ ∂x/∂t",
    "<html><body class=\"x\">&amp;</body></html>",
]


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_path):
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(tokenizer_path))


def test_known_ids(tokenizer):
    assert tokenizer.encode("hello world") == [31373, 995]
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode("The dog") == [464, 3290]
    assert tokenizer.eos_token_id == 50256
    assert tokenizer.vocab_size == 50257


@pytest.mark.parametrize("text", CORPUS)
def test_same_ids_as_transformers(tokenizer, hf_tokenizer, text):
    assert tokenizer.encode(text) == hf_tokenizer.encode(text)


@pytest.mark.parametrize("text", CORPUS)
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_endoftext_is_plain_text_by_default(tokenizer, hf_tokenizer):
    text = "a <|endoftext|> b"
    ids = tokenizer.encode(text)
    assert 50256 not in ids
    assert tokenizer.decode(ids) == text
    special = tokenizer.encode(text, allow_special=True)
    assert special == [64, 220, 50256, 275] == hf_tokenizer.encode(text)
    assert tokenizer.decode(special) == text


def test_decode_bytes_of_split_character(tokenizer):
    ids = tokenizer.encode("🚀")
    assert len(ids) > 1, "the rocket is several byte-level tokens"
    assert b"".join(tokenizer.decode_bytes([i]) for i in ids) == "🚀".encode()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_property(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_both_file_name_pairs_are_accepted(tokenizer_files, tmp_path):
    copy_tokenizer_files(tokenizer_files, tmp_path / "hub")
    shutil.copy(tokenizer_files[0], tmp_path / "encoder.json")
    shutil.copy(tokenizer_files[1], tmp_path / "vocab.bpe")
    assert Tokenizer.from_pretrained(tmp_path / "hub").encode("hello world") == [31373, 995]
    assert Tokenizer.from_pretrained(tmp_path).encode("hello world") == [31373, 995]


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope" / "x")


def test_mismatched_merges_are_refused(tokenizer_files, tmp_path):
    shutil.copy(tokenizer_files[0], tmp_path / "vocab.json")
    lines = tokenizer_files[1].read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # swap the first two merges
    (tmp_path / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerError, match="merge 1 .* does not match vocab.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_environment_variable(tokenizer_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_TOKENIZER_DIR", str(tokenizer_path))
    assert Tokenizer.from_pretrained().encode("The dog") == [464, 3290]
