"""Every user-facing error and its exit code: the CLI turns each into one clear message and the code,
never a traceback.

Exit codes: 0 success; 1 a failure (OrchestratorError, K8sError, DivergedError); 2 bad input (SpecError,
DataError, ResourceError, RunDirError, CheckpointError); 3 a winner that failed the promotion gate
(NOT_PROMOTED_EXIT, NotPromotedError); 130 interrupted (Ctrl-C, or an interrupted search).

`one_line`, `first_line` and `last_line` turn a long or multi-line reason (a library's exception, a
command's output) into the one line these messages quote.
"""

from __future__ import annotations

from typing import Optional, Union

NOT_PROMOTED_EXIT = 3
INTERRUPTED_EXIT = 130


class OrchestratorError(Exception):
    """A user-facing failure: the message says what is wrong and where."""

    exit_code = 1


class SpecError(OrchestratorError):
    """A job spec that does not validate; one line per problem, each led by its field path."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid job spec\n" + "\n".join(f"  {p}" for p in problems))


class DataError(OrchestratorError):
    """The dataset cannot be read or does not match the spec (missing file, column, wrong dtype).
    `problems`: each problem on its own, when there are several (the message joins them)."""

    exit_code = 2

    def __init__(self, message: str, problems: Optional[list[str]] = None):
        self.problems = problems or [message]
        super().__init__(message)


class ResourceError(OrchestratorError):
    """The spec asks for more CPUs/GPUs than the cluster has."""

    exit_code = 2


class RunDirError(OrchestratorError):
    """A run directory that is incomplete or damaged: names the file and what to do."""

    exit_code = 2


class CheckpointError(OrchestratorError):
    """A checkpoint that cannot be loaded (missing, truncated, corrupt or tampered file): names the file."""

    exit_code = 2


class DivergedError(OrchestratorError):
    pass


class NotPromotedError(OrchestratorError):
    """Serving refused: the model failed the promotion gate (exit 3, like `orchestrator run`)."""

    exit_code = NOT_PROMOTED_EXIT


class K8sError(OrchestratorError):
    """A Kubernetes API call failed; the message is one line."""

    exit_code = 1


class NotFound(K8sError):
    pass


class AlreadyExists(K8sError):
    pass


# --------------------------------------------------------------------- one-line reasons


def shown_value(v: object, limit: int = 40) -> str:
    """A value from outside as it appears in an error: its repr, cut to `limit` characters."""
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def counted(n: float, noun: str, plural: str | None = None) -> str:
    """`1 worker`, `2 workers`: a count and its noun, in the number it needs."""
    return f"{n:g} {noun if n == 1 else plural or noun + 's'}"


def one_line(text: object, limit: int = 300) -> str:
    """`text` (or an exception's message) as one short printable line: messages quote user and server
    text, which may hold newlines or control characters."""
    s = " ".join("".join(c if c.isprintable() else " " for c in str(text)).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _lines(source: Union[BaseException, str]) -> list[str]:
    return [line.strip() for line in str(source).splitlines() if line.strip()]


def first_line(source: Union[BaseException, str], default: Optional[str] = None) -> Optional[str]:
    """The first non-blank line of a message (the summary a library puts first), stripped; for an
    exception without one, `default` or the exception's type name."""
    lines = _lines(source)
    return lines[0] if lines else _fallback(source, default)


def last_line(source: Union[BaseException, str], default: Optional[str] = None) -> Optional[str]:
    """The last non-blank line of a message, stripped: where a traceback quoted in an error (Ray's
    task and replica errors, a command's output) names the exception. For an exception without
    one, `default` or the exception's type name."""
    lines = _lines(source)
    return lines[-1] if lines else _fallback(source, default)


def _fallback(source: Union[BaseException, str], default: Optional[str]) -> Optional[str]:
    if default is None and isinstance(source, BaseException):
        return type(source).__name__
    return default
