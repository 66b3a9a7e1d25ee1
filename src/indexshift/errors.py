"""One root exception, and the exit codes every command shares.

Every error indexshift raises on purpose is an :class:`IndexshiftError`. Its message is one line
that says what went wrong and what to do next; the CLI prints it without a traceback and exits
with the error's code, so scripts can branch on the code alone.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (documented in the README; scripts depend on them)."""

    OK = 0
    CHECK_FAILED = 1  # the command ran, and what it checked did not hold
    BAD_INPUT = 2  # usage error, malformed file, unknown alias: nothing was changed
    UNREACHABLE = 3  # cluster unreachable, TLS failure, or authentication refused
    CLUSTER_REFUSED = 4  # the cluster answered with an error (not found, conflict, rejected, 5xx)
    ENVIRONMENT = 5  # this machine lacks something (Java, Maven, a free port, an artifact)
    INTERRUPTED = 130


class IndexshiftError(Exception):
    """Root of every error indexshift raises on purpose."""

    exit_code: ExitCode = ExitCode.CHECK_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class CheckFailed(IndexshiftError):
    exit_code = ExitCode.CHECK_FAILED


class BadInput(IndexshiftError):
    exit_code = ExitCode.BAD_INPUT


class EnvironmentProblem(IndexshiftError):
    """This machine lacks something a command needs (Java, Maven, a port, an artifact)."""

    exit_code = ExitCode.ENVIRONMENT


class ClusterError(IndexshiftError):
    """The cluster answered with an error. ``status`` is the HTTP status when there was one."""

    exit_code = ExitCode.CLUSTER_REFUSED

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint=hint)
        self.status = status


class ClusterUnreachable(ClusterError):
    exit_code = ExitCode.UNREACHABLE


class AuthFailed(ClusterError):
    exit_code = ExitCode.UNREACHABLE


class NotFound(ClusterError):
    pass


class Conflict(ClusterError):
    pass


class Rejected(ClusterError):
    """The cluster refused the request as invalid or too much (400, 413, 429)."""


class ServerError(ClusterError):
    pass
