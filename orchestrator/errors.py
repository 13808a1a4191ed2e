"""Errors the CLI turns into a clear message and an exit code, never a traceback."""

from __future__ import annotations


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
    """The dataset cannot be read or does not match the spec (missing file, column, wrong dtype)."""

    exit_code = 2


class ResourceError(OrchestratorError):
    """The spec asks for more CPUs/GPUs than the cluster has."""

    exit_code = 2
