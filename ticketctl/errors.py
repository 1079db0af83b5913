"""Errors a user can cause, each mapped to one line on stderr and a documented exit code."""

from __future__ import annotations

# Exit codes (docs/artifacts.md "Exit codes and guarantees").
EXIT_FAILURE = 1  # unexpected failure: a bug or the environment (a traceback is printed)
EXIT_USAGE = 2  # bad command line: unknown option or task, value out of range
EXIT_INPUT = 3  # bad or incompatible input: unreadable artifact, mixed tasks, malformed TSV, ...
EXIT_JOBS_FAILED = 4  # protocol: some jobs failed (each listed with its log); the rest finished
EXIT_INTERRUPTED = 130


class TicketError(Exception):
    """A user-facing error: printed as one line, no traceback."""

    exit_code = EXIT_INPUT


class UsageError(TicketError):
    exit_code = EXIT_USAGE


class InputError(TicketError):
    exit_code = EXIT_INPUT


class NoLabels(InputError):
    """A training split without labels (no label column, or every label a placeholder): exit 3 for a command, a bad
    plan (exit 2) for ``protocol``, which checks it before anything trains."""


class JobsFailed(TicketError):
    exit_code = EXIT_JOBS_FAILED
