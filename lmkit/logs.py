"""How lmkit's log messages reach a person: what is informative reads as ordinary output, what is a
warning looks like one.

Jupyter draws everything written to stderr as a pink block, which a learner reads as an error; so in
a notebook (``lmkit.notebook.setup``) INFO messages go to stdout as plain lines and only WARNING and
above go to stderr, with their level. On the command line (``python -m lmkit``) all of them go to
stderr, where logs belong, so that what a command prints on stdout (samples, JSON) stays clean.
Only the ``lmkit`` logger is configured: other libraries keep Python's default (their warnings
show, their INFO chatter does not).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

InfoStream = Literal["stdout", "stderr"]


class _ConsoleHandler(logging.Handler):
    """Writes a record to stdout or stderr by its level, looking the stream up at each record (a
    notebook kernel and pytest both replace ``sys.stdout``/``sys.stderr``)."""

    def __init__(self, info_stream: InfoStream):
        super().__init__()
        self.info_stream = info_stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING or self.info_stream == "stderr" else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # a logging call must never take the caller down (logging's own rule)
            self.handleError(record)


class _LevelFormatter(logging.Formatter):
    """``message`` for INFO and below; ``WARNING lmkit.dedup: message`` for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname} {record.name}: {message}"
        return message


def show_logs(level: int = logging.INFO, info_stream: InfoStream = "stdout") -> logging.Logger:
    """Show lmkit's log records at ``level`` and above: below WARNING as plain lines on
    ``info_stream``, WARNING and above on stderr with their level and logger. Calling it again
    replaces the earlier set-up (one handler, never two). Returns the ``lmkit`` logger."""
    if info_stream not in ("stdout", "stderr"):
        raise ValueError(f"info_stream={info_stream!r} must be 'stdout' or 'stderr'")
    logger = logging.getLogger("lmkit")
    for old in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(old)
    handler = _ConsoleHandler(info_stream)
    handler.setFormatter(_LevelFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return logger
