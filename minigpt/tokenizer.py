"""GPT-2's byte-level BPE as a `tiktoken.Encoding`, built from the checkpoint's own vocabulary files.

Accepted file pairs: `vocab.json` + `merges.txt` (the hub's names) or `encoder.json` + `vocab.bpe` (OpenAI's).
Nothing is fetched through tiktoken's download URLs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tiktoken

from .errors import CheckpointError, TokenizerError

ENDOFTEXT = "<|endoftext|>"
# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, whitespace (not before a word).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
FILE_PAIRS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
ENV_VAR = "MINIGPT_TOKENIZER_DIR"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters used in its vocab files."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def load_ranks(vocab_path: Path, merges_path: Path) -> tuple[dict[bytes, int], int]:
    """Mergeable ranks {token bytes: id} from the vocab, checked against the merges; and the EOS id."""
    try:
        vocab: dict[str, int] = json.loads(vocab_path.read_text(encoding="utf-8"))
        merges = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read tokenizer files {vocab_path}, {merges_path}: {exc}") from None
    if merges and merges[0].startswith("#version"):
        merges = merges[1:]
    merges = [m for m in merges if m.strip()]
    if ENDOFTEXT not in vocab:
        raise TokenizerError(f"{vocab_path}: no {ENDOFTEXT} token")
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    try:
        ranks = {bytes(byte_of[ch] for ch in token): rank for token, rank in vocab.items() if token != ENDOFTEXT}
    except KeyError as exc:
        raise TokenizerError(f"{vocab_path}: not a GPT-2 byte-level vocabulary (character {exc})") from None
    # tiktoken merges by rank; GPT-2's ids are exactly 256 bytes then one id per merge, in merge order.
    for i, merge in enumerate(merges):
        parts = merge.split(" ")
        token = "".join(parts)
        if len(parts) != 2 or vocab.get(token) != 256 + i:
            raise TokenizerError(f"{merges_path}: merge {i + 1} ({merge!r}) does not match {vocab_path.name}")
    if len(ranks) != 256 + len(merges):
        raise TokenizerError(f"{vocab_path}: {len(ranks)} tokens but 256 bytes + {len(merges)} merges")
    return ranks, vocab[ENDOFTEXT]


def find_tokenizer_files(directory: Path) -> tuple[Path, Path] | None:
    for vocab_name, merges_name in FILE_PAIRS:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            return directory / vocab_name, directory / merges_name
    return None


class Tokenizer:
    """GPT-2 tokenizer: `encode(text) -> ids`, `decode(ids) -> text`, `eos_token_id`."""

    def __init__(self, vocab_path: str | Path, merges_path: str | Path) -> None:
        ranks, eos = load_ranks(Path(vocab_path), Path(merges_path))
        self.files = (Path(vocab_path), Path(merges_path))  # copied beside checkpoints this library writes
        self.eos_token_id = eos
        self._ranks = ranks
        self.encoding = tiktoken.Encoding(
            name="gpt2-minigpt", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: eos}
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, *, revision: str | None = None) -> "Tokenizer":
        """From a directory (or a file inside one) holding the vocab files, or a hub id.

        With no argument, the directory in $MINIGPT_TOKENIZER_DIR.
        """
        if name_or_path is None:
            if not os.environ.get(ENV_VAR):
                raise TokenizerError(f"no tokenizer given and ${ENV_VAR} is not set")
            name_or_path = os.environ[ENV_VAR]
        path = Path(name_or_path).expanduser()
        if path.is_file():
            path = path.parent
        if path.is_dir():
            found = find_tokenizer_files(path)
            if found is None:
                names = " or ".join(" + ".join(pair) for pair in FILE_PAIRS)
                raise TokenizerError(f"{path}: no tokenizer files ({names})")
            return cls(*found)
        from .hub import hub_download, hub_reachable
        from .loading import _looks_like_path

        if _looks_like_path(str(name_or_path)):
            raise TokenizerError(f"tokenizer path does not exist: {name_or_path}")
        online = hub_reachable()
        try:
            vocab = hub_download(str(name_or_path), "vocab.json", revision, online=online)
            merges = hub_download(str(name_or_path), "merges.txt", revision, online=online)
        except CheckpointError as exc:
            raise TokenizerError(str(exc)) from None
        return cls(vocab, merges)

    def save(self, directory: str | Path) -> None:
        """Write the vocabulary files into `directory` under the hub's names (vocab.json, merges.txt)."""
        import shutil

        for source, name in zip(self.files, FILE_PAIRS[0]):
            shutil.copyfile(source, Path(directory) / name)

    @classmethod
    def for_model(cls, model: str | Path | None, tokenizer: str | Path | None = None) -> "Tokenizer":
        """The tokenizer to use with checkpoint `model`: `tokenizer` if given; else the vocab files beside a
        local checkpoint (or $MINIGPT_TOKENIZER_DIR when it has none); else the hub repo's. model None: the
        environment directory."""
        if tokenizer:
            return cls.from_pretrained(tokenizer)
        if model is None:
            return cls.from_pretrained()
        path = Path(model).expanduser()
        local = path if path.is_dir() else path.parent if path.is_file() else None
        if local is None:
            return cls.from_pretrained(model)  # a hub id
        if find_tokenizer_files(local) is not None:
            return cls.from_pretrained(local)
        if not os.environ.get(ENV_VAR):
            raise TokenizerError(f"{local} has no tokenizer files; pass --tokenizer DIR "
                                 "(vocab.json+merges.txt or encoder.json+vocab.bpe)")
        return cls.from_pretrained()

    def fingerprint(self) -> str:
        """sha256 of the vocabulary (every token's bytes in rank order, and EOS): equal for equal tokenizers,
        whatever their files are called (vocab.json + merges.txt or encoder.json + vocab.bpe)."""
        import hashlib

        digest = hashlib.sha256(f"eos={self.eos_token_id};".encode())
        for token, _ in sorted(self._ranks.items(), key=lambda item: item[1]):
            digest.update(len(token).to_bytes(2, "little") + token)
        return digest.hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. `<|endoftext|>` in the text is plain text unless `allow_special` maps it to EOS."""
        if allow_special:
            return self.encoding.encode(text, allowed_special={ENDOFTEXT})
        return self.encoding.encode(text, disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        return self.encoding.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The raw bytes of `ids` (tokens may hold part of a UTF-8 character)."""
        return self.encoding.decode_bytes(list(ids))
