"""How the command line ends: one line on stderr and an exit status for every way a command can fail (a user's
mistake, a failed job, an interrupt or termination, a closed pipe), and non-finite floats refused as bad option
values. ``ticketctl.cli.main`` is :func:`run` over the app."""

from __future__ import annotations

import os
import signal
import sys
import typing
from pathlib import Path

import typer

from ticketctl.errors import EXIT_INTERRUPTED, TicketError


class _Signalled(BaseException):
    """Raised by our signal handlers: unlike KeyboardInterrupt, Typer does not swallow it, so ``main`` can print
    one line and exit with 128 + the signal number. Temporary files are removed on the way out."""

    def __init__(self, signum: int):
        self.signum = signum


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


def error_line(msg: str) -> None:
    """One line on stderr: ``ticketctl: error: MSG``."""
    sys.stderr.write(f"ticketctl: error: {msg}\n")
    sys.stderr.flush()


def _click_exceptions():
    """Typer 0.20+ vendors click as ``typer._click``; older Typer uses the click package."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the Typer version
        from click import exceptions
    return exceptions


def _finite_floats(command) -> None:
    """Every float option of every command refuses ``nan`` and ``inf`` (which float() accepts), with one line and
    exit 2, as any other bad option value: each float option's callback checks the parsed value first."""
    import math

    exceptions = _click_exceptions()

    def is_float(param) -> bool:
        descriptor = getattr(param, "type_descriptor", None)
        annotation = getattr(descriptor, "annotation", None)
        return annotation is float or float in typing.get_args(annotation)

    def finite(callback):
        def check(ctx, param, value):
            if isinstance(value, float) and not math.isfinite(value):
                raise exceptions.BadParameter(f"{value!r} is not a finite number", ctx=ctx, param=param)
            return callback(ctx, param, value) if callback is not None else value

        return check

    for cmd in getattr(command, "commands", {}).values():
        for param in cmd.params:
            if is_float(param):
                param.callback = finite(param.callback)


def run(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run ``app`` on ``argv`` (default: the process's arguments) as a Unix tool and exit: a user's mistake, a
    failed job or a signal is one line on stderr (``ticketctl: error: ...``) and its exit status, never a traceback;
    SIGPIPE (``| head``) ends quietly with 141."""
    click = _click_exceptions()
    signal.signal(signal.SIGTERM, _raise_signalled)
    if hasattr(signal, "SIGPIPE"):  # `ticketctl show ... | head`: end quietly like any Unix tool (exit 141)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # leave an inherited "ignore" alone
        signal.signal(signal.SIGINT, _raise_signalled)
    try:
        command = typer.main.get_command(app)
        _finite_floats(command)
        rv = command.main(args=argv, prog_name="ticketctl", standalone_mode=False)
    except TicketError as e:
        error_line(str(e))
        sys.exit(e.exit_code)
    except getattr(click, "NoArgsIsHelpError", ()) as e:  # bare `ticketctl`: the help as it is (click >= 8.2)
        sys.stderr.write(e.ctx.get_help() + "\n")
        sys.exit(2)
    except click.UsageError as e:
        error_line(e.format_message().replace("\n", " "))
        sys.exit(2)
    except click.ClickException as e:
        error_line(e.format_message())
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        error_line("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except _Signalled as e:
        error_line("interrupted" if e.signum == signal.SIGINT else "terminated")
        sys.exit(128 + e.signum)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): exit quietly, without a second error while flushing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(141)
    sys.exit(rv if isinstance(rv, int) else 0)


def print_paths(paths: list[Path]) -> None:
    """Artifact paths on stdout, one per line (process 0 speaks for a data-parallel run)."""
    if os.environ.get("RANK", "0") != "0":
        return
    for p in paths:
        sys.stdout.write(f"{p}\n")
    sys.stdout.flush()
