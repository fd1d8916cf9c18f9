"""The tokenizer against transformers' GPT-2 tokenizer on the real BPE files."""

import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import tokenizer_dir

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
def hf_tokenizer(tmp_path_factory):
    from transformers import GPT2TokenizerFast

    # transformers reads the hub names; the shared files are the same data under OpenAI's names.
    directory = tmp_path_factory.mktemp("hf_tok")
    shutil.copy(tokenizer_dir() / "encoder.json", directory / "vocab.json")
    shutil.copy(tokenizer_dir() / "vocab.bpe", directory / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(str(directory))


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


def test_hub_file_names_are_accepted(tmp_path):
    shutil.copy(tokenizer_dir() / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(tokenizer_dir() / "vocab.bpe", tmp_path / "merges.txt")
    assert Tokenizer.from_pretrained(tmp_path).encode("hello world") == [31373, 995]


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer files"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nope" / "x")


def test_mismatched_merges_are_refused(tmp_path):
    shutil.copy(tokenizer_dir() / "encoder.json", tmp_path / "vocab.json")
    lines = (tokenizer_dir() / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    lines[1], lines[2] = lines[2], lines[1]  # swap the first two merges
    (tmp_path / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(TokenizerError, match="merge 1 .* does not match vocab.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_environment_variable(monkeypatch):
    monkeypatch.setenv("MINIGPT_TOKENIZER_DIR", str(tokenizer_dir()))
    assert Tokenizer.from_pretrained().encode("The dog") == [464, 3290]
