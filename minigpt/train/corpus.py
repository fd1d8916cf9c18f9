"""Raw text for language-model training: a corpus tokenized once into a memory-mapped file of uint16 token ids.

A corpus is a file, a directory (every file under it, sorted, hidden ones skipped) or a glob. Each file is one
or more documents (split by `separator` when given); every document's tokens are followed by `<|endoftext|>`,
so documents never run into each other without it. The token file lives in a cache directory (default
`.minigpt_tokens/` beside the corpus) under a name made from the corpus content, the separator and the
tokenizer's vocabulary, so a second run with the same corpus reuses it and a changed corpus gets a new one.
It is written through a temporary file and renamed, so an interrupted or failed tokenization leaves nothing.

Files are read and tokenized in pieces of about a megabyte, cut only after a newline with a non-space character on
both sides, where GPT-2's pre-tokenizer always cuts too: the result equals `Tokenizer.encode` of each whole
document, and a corpus larger than memory streams through (a document with no such newline in it is held whole).
"""

from __future__ import annotations

import array
import codecs
import glob
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..progress import Progress
from ..tokenizer import Tokenizer
from .data import DataError, DataReport

FORMAT = 1
CACHE_DIR_NAME = ".minigpt_tokens"
READ_BYTES = 1 << 20  # bytes read per chunk
PIECE_CHARS = 1 << 20  # a document longer than this is tokenized in pieces
# A lone newline between two non-space characters is always a pre-token of its own in GPT-2's pattern, so text
# cut right after it tokenizes the same in two pieces as in one. (After a run of whitespace it is not: a run at
# the end of a piece would become one token, "\n\n" = 628, where mid-text it splits into 198, 198.)
SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def corpus_files(spec: str) -> list[Path]:
    """The files of a corpus given as a file, a directory or a glob pattern (sorted; hidden ones skipped)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    elif glob.has_magic(spec):
        files = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file()]
    else:
        raise DataError(f"text corpus not found: {spec}")
    if not files:
        raise DataError(f"no files in the text corpus {spec}")
    return sorted(files)


def default_cache_dir(spec: str) -> Path:
    """`.minigpt_tokens/` in the corpus file's directory, the corpus directory, or a glob's fixed prefix."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.parent / CACHE_DIR_NAME
    if path.is_dir():
        return path / CACHE_DIR_NAME
    fixed = Path(os.path.expanduser(spec))
    while glob.has_magic(str(fixed)):
        fixed = fixed.parent
    return fixed / CACHE_DIR_NAME


def content_digest(files: list[Path]) -> str:
    """sha256 of the corpus: every file's bytes, in order, with its length (names do not count)."""
    digest = hashlib.sha256()
    for path in files:
        size = 0
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
                size += len(chunk)
        digest.update(f";file of {size} bytes;".encode())
    return digest.hexdigest()


def document_pieces(path: Path, separator: str | None) -> Iterator[tuple[str, bool]]:
    """(text, ends_document) pieces of one file in order; the file's end ends a document.

    UTF-8 is decoded strictly: a bad byte raises DataError naming the file and byte offset.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer, offset = "", 0
    with open(path, "rb") as handle:
        while True:
            raw = handle.read(READ_BYTES)
            try:
                buffer += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}: not UTF-8 text (byte {offset + exc.start}: {exc.reason}); convert it "
                                "or leave it out of the corpus") from None
            offset += len(raw)
            if separator:
                *documents, buffer = buffer.split(separator)
                for document in documents:
                    yield document, True
            if not raw:
                break
            if len(buffer) > PIECE_CHARS:
                # cut at the last safe place, never inside a separator that may still be arriving
                limit = len(buffer) - (len(separator) - 1 if separator else 0)
                cuts = [m.end() for m in SAFE_CUT.finditer(buffer, 0, max(0, limit))]
                if cuts:
                    yield buffer[: cuts[-1]], False
                    buffer = buffer[cuts[-1]:]
    yield buffer, True


@dataclass(frozen=True)
class TokenFile:
    """A tokenized corpus on disk: `tokens` is a read-only memory map of its uint16 ids."""

    path: Path
    num_tokens: int
    num_documents: int
    num_files: int
    reused: bool

    def tokens(self) -> Tensor:
        return torch.from_file(str(self.path), shared=False, size=self.num_tokens, dtype=torch.uint16)


def tokenize_corpus(files: list[Path], tokenizer: Tokenizer, separator: str | None, target: Path, *,
                    progress: bool = True) -> tuple[int, int]:
    """Write every document's ids + EOS as uint16 to `target` (through a temporary file); (tokens, documents)."""
    eos = tokenizer.eos_token_id
    total_bytes = sum(p.stat().st_size for p in files)
    bar = Progress(max(1, total_bytes), label="tokenize", enabled=progress)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tokens = documents = done_bytes = 0
    try:
        with open(tmp, "wb") as sink:
            for path in files:
                has_text, file_done = False, 0
                for text, ends_document in document_pieces(path, separator):
                    ids = tokenizer.encode(text) if text else []
                    if ids:
                        sink.write(array.array("H", ids).tobytes())
                        tokens += len(ids)
                        has_text = True
                    if ends_document and has_text:
                        sink.write(array.array("H", [eos]).tobytes())
                        tokens += 1
                        documents += 1
                        has_text = False
                    file_done += len(text)  # characters: near enough to bytes for a progress bar
                    bar.update(min(total_bytes, done_bytes + file_done), tokens=f"{tokens:,}")
                done_bytes += path.stat().st_size
                bar.update(done_bytes, tokens=f"{tokens:,}")
            sink.flush()
            os.fsync(sink.fileno())
        bar.close()
        if tokens == 0:
            raise DataError(f"the text corpus ({', '.join(map(str, files[:3]))}{', ...' if len(files) > 3 else ''}) "
                            "holds no text")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return tokens, documents


def load_token_file(spec: str, tokenizer: Tokenizer, *, separator: str | None = None, cache_dir: str | None = None,
                    digest: str | None = None, progress: bool = True, build: bool = True) -> TokenFile:
    """The token file of corpus `spec`: reused from the cache when its key matches, else tokenized now.

    digest: `content_digest` of the files when the caller has it already. build=False waits for no one and
    refuses to tokenize (for processes other than the first under torchrun, which read what it wrote)."""
    if tokenizer.vocab_size > 1 << 16:
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} tokens: more than uint16 token files hold")
    files = corpus_files(spec)
    digest = digest or content_digest(files)
    key = hashlib.sha256(f"minigpt-tokens-v{FORMAT};{digest};sep={separator!r};tok={tokenizer.fingerprint()}"
                         .encode()).hexdigest()[:24]
    directory = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(spec)
    target, meta_path = directory / f"{key}.u16", directory / f"{key}.json"
    if meta_path.is_file() and target.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta["key"] == key and target.stat().st_size == 2 * meta["tokens"]:
                return TokenFile(target, meta["tokens"], meta["documents"], len(files), reused=True)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt
    if not build:
        raise DataError(f"token file {target} is missing (the first process writes it)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot write the token cache in {directory} ({exc.strerror}); pass --cache-dir DIR") from None
    tokens, documents = tokenize_corpus(files, tokenizer, separator, target, progress=progress)
    meta = {"format": FORMAT, "key": key, "tokens": tokens, "documents": documents, "dtype": "uint16",
            "eos": tokenizer.eos_token_id, "separator": separator, "files": [str(p) for p in files]}
    tmp = meta_path.with_name(f"{meta_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, meta_path)
    return TokenFile(target, tokens, documents, len(files), reused=False)


def shared_token_file(spec: str, tokenizer: Tokenizer, *, separator: str | None = None,
                      cache_dir: str | None = None, digest: str | None = None, progress: bool = True) -> TokenFile:
    """`load_token_file` under torchrun too: the first process tokenizes (or finds the cache), the others wait
    for it and read its file."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    main = not distributed or torch.distributed.get_rank() == 0
    token_file = None
    if main:
        token_file = load_token_file(spec, tokenizer, separator=separator, cache_dir=cache_dir, digest=digest,
                                     progress=progress)
    if distributed:
        torch.distributed.barrier()
    if not main:
        token_file = load_token_file(spec, tokenizer, separator=separator, cache_dir=cache_dir, digest=digest,
                                     build=False)
    return token_file


class TokenWindows:
    """Windows of `block + 1` consecutive tokens of a token range [start, end): inputs and shifted targets.

    `len` and indexing are over aligned windows (offsets start, start + block, ...): an epoch, and the order
    `--sequential` walks; `at(offset)` reads the window at any token offset (random sampling).
    """

    def __init__(self, tokens: Tensor, block: int, start: int = 0, end: int | None = None) -> None:
        self.tokens = tokens
        self.block = block
        self.start = start
        self.end = tokens.numel() if end is None else end

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def max_offset(self) -> int:
        """The last offset at which a whole window fits."""
        return self.end - self.block - 1

    def __len__(self) -> int:
        return max(0, (self.num_tokens - 1) // self.block)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.at(self.start + index * self.block)

    def at(self, offset: int) -> Tensor:
        """Token ids [block + 1] (int64) from `offset`."""
        return self.tokens[offset: offset + self.block + 1].to(torch.int64)

    def split_tail(self, fraction: float) -> tuple["TokenWindows", "TokenWindows"]:
        """(head, tail): the last `fraction` of the tokens (at least one window) held out, so no training window
        overlaps an evaluation one."""
        held = max(self.block + 1, int(self.num_tokens * fraction))
        cut = self.end - held
        if cut - self.start < self.block + 1:
            raise DataError(f"{self.num_tokens:,} tokens are too few to hold out {fraction:.1%} and still train on "
                            f"windows of {self.block + 1}; use a larger corpus, --eval-text or a smaller --block-size")
        return TokenWindows(self.tokens, self.block, self.start, cut), TokenWindows(self.tokens, self.block, cut,
                                                                                    self.end)


@dataclass
class CorpusReport(DataReport):
    """DataReport for a text corpus: tokens, documents, files and where the token file is."""

    tokens: int = 0
    documents: int = 0
    files: int = 0
    token_file: str = ""
    reused: bool = False

    def summary(self) -> str:
        how = "reused" if self.reused else "written"
        return (f"{self.tokens:,} tokens in {self.documents:,} documents from {self.files} file(s) "
                f"(token file {how}: {self.token_file})")
