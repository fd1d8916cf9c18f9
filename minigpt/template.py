"""The prompt template: how an instruction (and optional input) becomes the text a response follows.

Fine-tuned checkpoints save theirs as `prompt_template.json`, so generation, scoring and later training stages
prompt the model exactly as it was trained.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import DataError

TEMPLATE_FILE = "prompt_template.json"
FIELD = re.compile(r"\{instruction\}|\{input\}")


@dataclass(frozen=True)
class PromptTemplate:
    """How an instruction (and optional input) becomes the text the response follows.

    `{instruction}` and `{input}` are replaced literally, each once, in one pass over the template (no
    str.format: braces in user text are safe, and an instruction that contains the text `{input}` keeps it).
    """

    name: str = "minigpt-instruct-v1"
    prompt: str = "### Instruction:\n{instruction}\n\n### Response:\n"
    prompt_with_input: str = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"

    def render(self, instruction: str, input: str = "") -> str:
        """The prompt text for one instruction; the response is appended right after it."""
        fields = {"{instruction}": instruction, "{input}": input}
        template = self.prompt_with_input if input else self.prompt
        return FIELD.sub(lambda match: fields[match.group(0)], template)

    def save(self, directory: Path) -> None:
        (Path(directory) / TEMPLATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def for_model(cls, model: str | Path | None, template: str | Path | None = None) -> "PromptTemplate":
        """`template` if given; else the checkpoint directory `model`'s saved template; else the built-in one."""
        if template:
            return cls.load(template)
        directory = Path(model).expanduser() if model is not None else None
        if directory is not None and directory.is_dir() and (directory / TEMPLATE_FILE).is_file():
            return cls.load(directory)
        return cls()

    @classmethod
    def load(cls, path: str | Path) -> "PromptTemplate":
        """From a template JSON file, or a checkpoint directory holding `prompt_template.json`."""
        path = Path(path)
        if path.is_dir():
            path = path / TEMPLATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"no prompt template at {path} (fine-tuned checkpoints save {TEMPLATE_FILE})") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read prompt template {path}: {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"prompt template {path} does not hold a JSON object")
        known = {"name", "prompt", "prompt_with_input"}
        bad = sorted(set(data) - known) + [k for k in known if k in data and not isinstance(data[k], str)]
        if bad:
            raise DataError(f"prompt template {path}: unknown or non-string fields: {', '.join(bad)}")
        template = cls(**data)
        if "{instruction}" not in template.prompt or "{instruction}" not in template.prompt_with_input:
            raise DataError(f"prompt template {path}: 'prompt' and 'prompt_with_input' must contain {{instruction}}")
        return template
