"""The exception types a user may see.

Every error that reaches the CLI is a `FlowspecError`; the CLI prints its message (and hint)
and exits with its `exit_code`. Anything else is an internal error and gets a crash report.
"""
from __future__ import annotations


class FlowspecError(Exception):
    """A problem the user can fix: bad input, a missing extra, an unreachable server."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(FlowspecError):
    """A wrong flag, file or argument on the command line (exit 2)."""

    exit_code = 2


class SpecError(FlowspecError):
    """A spec that does not validate; carries every diagnostic found."""

    exit_code = 1

    def __init__(self, diagnostics: list) -> None:
        self.diagnostics = diagnostics
        n = len(diagnostics)
        super().__init__(f"{n} error{'s' if n != 1 else ''} found")


class MissingExtraError(FlowspecError):
    """A driver needs an SDK that is not installed; names the pip extra to install."""

    exit_code = 2

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(
            f"{what} needs the Python package '{module}', which is not installed",
            hint=f"pip install 'flowspec[{extra}]'",
        )


class BackendError(FlowspecError):
    """The backend (SQLite file or PostgreSQL server) cannot be reached or used."""

    exit_code = 1


def require(module: str, extra: str, what: str):
    """Import a heavy SDK on demand; raise a MissingExtraError naming the extra if absent."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the SDK is there but something it needs is broken: show the real error
        raise MissingExtraError(module, extra, what) from None
