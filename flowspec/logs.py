"""Log lines as they happen, on stderr: `12:03:04.567 INFO    say_hello[2] | message`."""
from __future__ import annotations

import logging
import sys
import time


class LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        label = getattr(record, "task", None) or "flow"
        text = f"{stamp} {record.levelname:<7} {label} | {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


# A live status line (flowspec.progress) at the bottom of the terminal, or None. It has `lock`,
# `clear()` and `draw()`; a log line clears it, prints, and draws it again below.
_status = None


def set_status_line(status) -> None:
    global _status
    _status = status


class StatusLineHandler(logging.StreamHandler):
    """A StreamHandler that keeps a live status line below the log lines it writes."""

    def emit(self, record: logging.LogRecord) -> None:
        status = _status
        if status is None:
            return super().emit(record)
        with status.lock:
            status.clear()
            super().emit(record)
            status.draw()


def configure(level: int = logging.INFO, stream=None) -> logging.Handler:
    """Send flowspec's and the tasks' log lines to `stream` (stderr by default)."""
    from flowspec.masking import MaskFilter
    from flowspec.task_output import original

    handler = StatusLineHandler(original(stream or sys.stderr))  # never a task's captured stderr
    handler.setFormatter(LineFormatter())
    handler.addFilter(MaskFilter())  # resolved secrets read MASK on the terminal too
    root = logging.getLogger("flowspec")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return handler


def fileno(stream) -> int | None:
    """The file descriptor behind a stream, or None (a StringIO, a closed stream)."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def whole_lines(fd: int):
    """A text stream on `fd` that writes a whole line per system call. Python's own stderr is
    unbuffered: print() writes its text and then the newline, and a log line written to the same
    file in between (by another thread, or by `flowspec run` for a pool process) lands in the
    middle of the task's line."""
    import io

    return io.TextIOWrapper(io.BufferedWriter(io.FileIO(fd, "w", closefd=False)), line_buffering=True,
                            encoding=getattr(sys.__stderr__, "encoding", None) or "utf-8", errors="backslashreplace")
