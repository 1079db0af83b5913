"""The option machinery of the command line: shell completion of option values, and :func:`options`, which makes
the fields of the option dataclasses of ``ticketctl.hparams`` Typer options (each field one option, declared once,
its help text beside it). Imports no torch (``--help`` and completion stay fast)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Annotated

import typer


def choices(*values: str):
    """Shell completion of an option's values (the option still validates them itself, with its own message)."""
    def complete(incomplete: str):
        return [v for v in values if v.startswith(incomplete)]

    return complete


def policy_choices(incomplete: str):
    """Shell completion of ``--policy``: the registered pruning policies (``ticketctl.masks.policies``)."""
    from ticketctl.masks import policies

    return [v for v in policies.names() if v.startswith(incomplete)]


def options(**groups: type):
    """Give a command the fields of the option dataclasses as Typer options: ``@options(train=TrainConfig)`` adds
    one option per field of ``TrainConfig`` (its flag, help and default from the field) and passes
    the command a ``train`` argument built from them. A group given as ``(cls, {"field", ...})`` leaves those
    fields out."""

    def wrap(fn):
        params = [p for p in inspect.signature(fn).parameters.values() if p.name not in groups]
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in params]
        built: dict[str, tuple[type, list[str]]] = {}
        for arg, spec in groups.items():
            cls, exclude = spec if isinstance(spec, tuple) else (spec, set())
            types = typing.get_type_hints(cls)
            names = []
            for f in dataclasses.fields(cls):
                if f.name in exclude:
                    continue
                meta = f.metadata
                decls = []  # Typer's own flag from the name (a bool gets --x / --no-x) unless the field names one
                if meta.get("flag") or meta.get("short"):
                    decls = ([meta.get("flag") or "--" + f.name.replace("_", "-")]
                             + [meta["short"]] * bool(meta["short"]))
                default = None if f.default is dataclasses.MISSING else f.default
                extra = {"autocompletion": choices(*meta["choices"])} if meta.get("choices") else {}
                if meta.get("metavar"):
                    extra["metavar"] = meta["metavar"]
                params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                annotation=Annotated[types[f.name], typer.Option(
                                                    *decls, help=meta["help"], **extra)]))
                names.append(f.name)
            built[arg] = (cls, names)

        @functools.wraps(fn)
        def command(**kwargs):
            for arg, (cls, names) in built.items():
                kwargs[arg] = cls(**{n: kwargs.pop(n) for n in names})
            return fn(**kwargs)

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # Typer must read the signature above, not the function's own
        return command

    return wrap


def print_version(value: bool) -> None:
    """``--version``'s callback: print ticketctl's version and exit."""
    if value:
        from ticketctl import __version__

        print(f"ticketctl {__version__}")
        raise typer.Exit()
