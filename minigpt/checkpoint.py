"""Writing checkpoints in the hub layout, atomically: what `GPT.from_pretrained` and transformers both load.

A directory holds `model.safetensors` (`transformer.`-prefixed keys, no lm_head: it is tied), `config.json`,
and optionally the vocabulary (`vocab.json`, `merges.txt`), the prompt template and anything else a caller
writes (the trainer adds its optimizer and progress). It is assembled in a temporary sibling directory and
renamed into place, so a crash leaves either the old checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from .errors import CheckpointError
from .model import Transformer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def model_tensors(model: Transformer) -> dict:
    """The state dict under the names transformers' GPT2LMHeadModel saves, on CPU and contiguous."""
    if getattr(model, "quantized", False):
        raise CheckpointError("an int8-quantized model cannot be saved in the hub layout (transformers would not "
                              "load it): save the float model and quantize when loading (quantize='int8')")
    return {f"transformer.{k}": v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def write_model_files(model: Transformer, directory: Path) -> None:
    """model.safetensors + config.json into an existing directory (not atomic by itself)."""
    write_weights_and_config(model_tensors(model), model.config.to_hf_dict(), directory)


def write_weights_and_config(tensors: dict, config: dict, directory: Path) -> None:
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def write_atomically(directory: str | Path, fill: Callable[[Path], None]) -> Path:
    """Call `fill(tmp)` on a fresh temporary directory beside `directory`, then move it into place.

    An existing `directory` is replaced only after the new one is complete, and keeps every file this write
    does not replace (a README, a generation config, the user's own files: they are hard-linked into the new
    directory before the swap, as transformers' save_pretrained leaves them). Nothing is ever half-written.
    """
    target = Path(directory).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"cannot write a checkpoint to {target}: it exists and is not a directory")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise CheckpointError(f"cannot write a checkpoint to {target}: {exc}") from None
    try:
        fill(tmp)
        _fsync_dir_files(tmp)
        if target.exists():
            _carry_over(target, tmp)
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as exc:  # Ctrl-C included: never leave a half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write a checkpoint to {target}: {exc}") from None
        raise
    return target


def _carry_over(target: Path, tmp: Path) -> None:
    """Link into `tmp` every entry of `target` that `tmp` does not hold, so the swap keeps it."""
    for entry in target.iterdir():
        dest = tmp / entry.name
        if not (dest.exists() or dest.is_symlink()):
            _link_tree(entry, dest)


def _link_tree(source: Path, dest: Path) -> None:
    """`dest` as a hard-linked copy of `source` (symlinks copied as links, directories recursed)."""
    if source.is_symlink():
        os.symlink(os.readlink(source), dest)
    elif source.is_dir():
        dest.mkdir()
        shutil.copystat(source, dest)
        for child in source.iterdir():
            _link_tree(child, dest / child.name)
    else:
        try:
            os.link(source, dest)
        except OSError:  # a file system without hard links
            shutil.copy2(source, dest)


def _fsync_dir_files(directory: Path) -> None:
    """Flush every file to disk and give files and directory the usual permissions (mkdtemp makes it 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    os.chmod(directory, 0o777 & ~umask)


def save_pretrained(
    model: Transformer,
    directory: str | Path,
    *,
    tokenizer=None,
    template=None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write `model` (and the tokenizer's files, the prompt template, `extra(dir)`'s files) atomically."""
    return save_with(lambda tmp: write_model_files(model, tmp), directory, tokenizer=tokenizer, template=template,
                     extra=extra)


def save_reward_model(model, directory: str | Path, *, tokenizer=None, template=None,
                      extra: Callable[[Path], None] | None = None) -> Path:
    """Write a `minigpt.RewardModel` as transformers' GPT2ForSequenceClassification (num_labels 1, key
    `score.weight`, pad_token_id = EOS), atomically, with the tokenizer, template and `extra(dir)`'s files."""
    tensors = model_tensors(model.transformer)
    tensors["score.weight"] = model.score.weight.detach().to("cpu").contiguous()
    config = model.config.to_hf_dict()
    config.update(architectures=["GPT2ForSequenceClassification"], num_labels=1, id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0}, pad_token_id=model.config.eos_token_id)
    return save_with(lambda tmp: write_weights_and_config(tensors, config, tmp), directory, tokenizer=tokenizer,
                     template=template, extra=extra)


def save_with(write_model: Callable[[Path], None], directory: str | Path, *, tokenizer, template,
              extra: Callable[[Path], None] | None) -> Path:
    """Atomically: the model files, then the tokenizer's files, the template and `extra(dir)`'s files."""

    def fill(tmp: Path) -> None:
        write_model(tmp)
        if tokenizer is not None:
            tokenizer.save(tmp)
        if template is not None:
            template.save(tmp)
        if extra is not None:
            extra(tmp)

    return write_atomically(directory, fill)
