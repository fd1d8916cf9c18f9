"""A dependency-free progress line on stderr: redrawn in place on a terminal, a plain line now and then elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`update(done, **fields)` shows `label done/total [bar] pct fields... ETA`.

    On a terminal the line is redrawn at most `min_interval` s apart; otherwise (a log file, CI) one line is
    printed every `log_every` updates and at the end, so logs stay readable.
    """

    def __init__(self, total: int, *, label: str = "", stream: TextIO | None = None, enabled: bool = True,
                 start: int = 0, log_every: int | None = None, min_interval: float = 0.1) -> None:
        self.total = max(1, total)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.log_every = log_every or max(1, self.total // 20)
        self.min_interval = min_interval
        self.start_done = start
        self.started = time.perf_counter()
        self.last_draw = 0.0

    def eta(self, done: int) -> float | None:
        made = done - self.start_done
        if made <= 0:
            return None
        return (time.perf_counter() - self.started) / made * (self.total - done)

    def line(self, done: int, fields: dict[str, str]) -> str:
        width = 20
        filled = int(width * done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        eta = self.eta(done)
        parts = [f"{self.label} {done}/{self.total} [{bar}] {100 * done / self.total:3.0f}%".strip()]
        parts += [f"{k} {v}" for k, v in fields.items()]
        parts.append(f"ETA {format_duration(eta)}" if eta is not None else "ETA ?")
        return " | ".join(parts)

    def update(self, done: int, **fields: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        final = done >= self.total
        if self.tty:
            if final or now - self.last_draw >= self.min_interval:
                self.stream.write("\r\033[K" + self.line(done, fields))
                self.stream.flush()
                self.last_draw = now
        elif final or done % self.log_every == 0:
            self.stream.write(self.line(done, fields) + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own that does not garble the bar."""
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
