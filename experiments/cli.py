"""A typed dataclass as a command line: ``--field-name value`` for every field, help from field docs.

Supported field types: ``str``, ``int``, ``float``, ``bool`` (``--flag`` / ``--no-flag``), ``X | None``
(``none`` on the command line), ``Literal[...]`` (choices) and ``tuple[T, ...]`` of those (several
values after one flag). Each field's help is the one-line docstring written under it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin

__all__ = ["build_parser", "field_docs", "parse_config"]

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls`` and its dataclass bases: ``{field name: doc}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's doc of a redefined field wins
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                    docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(tp: Any, name: str) -> tuple[Any, list | None]:
    """(converter, choices) for a scalar field type."""
    if get_origin(tp) is Literal:
        values = list(get_args(tp))
        kind = type(values[0])
        return kind, values
    if tp in (str, int, float):
        return tp, None
    raise TypeError(f"field {name!r}: unsupported type {tp!r} for the command line")


def build_parser(cls: type, *, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass ``cls`` (defaults shown in help)."""
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = docs.get(f.name, f.name).replace("%", "%%")  # argparse %-formats help ("10% warm-up")
        tp, optional = _strip_optional(hints[f.name])
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        nargs = None
        if get_origin(tp) is tuple:
            args = get_args(tp)
            if len(args) != 2 or args[1] is not Ellipsis:
                raise TypeError(f"field {f.name!r}: only tuple[T, ...] is supported, got {tp!r}")
            tp, nargs = args[0], "+"
        kind, choices = _scalar(tp, f.name)

        def convert(text: str, kind=kind, optional=optional, name=f.name) -> Any:
            if optional and text.lower() == "none":
                return None
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"--{name.replace('_', '-')}: {text!r} is not a {kind.__name__}") from None

        parser.add_argument(flag, dest=f.name, type=convert, nargs=nargs, choices=choices, default=default,
                            help=help_text, metavar=None if choices else kind.__name__.upper())
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, **parser_kwargs: Any) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``."""
    parser = build_parser(cls, **parser_kwargs)
    ns = parser.parse_args(argv)
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(ns, f.name)
        if isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    try:
        return cls(**values)
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
