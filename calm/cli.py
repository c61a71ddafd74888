"""A typed dataclass as a command line: ``--field-name value`` for every field, help from field docs.

The one dataclass-to-argparse parser of the project (``python -m calm.train`` and every
``python -m experiments.<study>``). Supported field types: ``str``, ``int``, ``float``, ``bool``
(``--flag`` / ``--no-flag``), ``X | None`` (``none`` on the command line), ``Literal[...]`` (choices) and
``tuple[T, ...]`` / ``list[T]`` of those (several values after one flag). Each field's help is the
docstring written under it. A value that does not convert, a flag that does not exist, or a config that
refuses its values (``ValueError`` from ``__post_init__``) ends in argparse's one-line error and exit
status 2.

Two ways to use it:
    * ``parse_config(Config, argv)``: the dataclass itself, each flag defaulting to the field's default.
    * ``add_dataclass_args(parser, Config, overrides=True)`` + ``given_values(namespace, Config)``: flags
      whose absence means "not given" (a preset fills in the rest), as ``calm.train`` does.
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

__all__ = ["OneLineErrorParser", "add_dataclass_args", "build_parser", "field_docs", "given_values", "parse_config"]

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of the dataclass ``cls`` and its dataclass bases: ``{field name: doc}``.

    Whitespace runs (a docstring wrapped over several lines) become one space.
    """
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
        return type(values[0]), values
    if tp in (str, int, float):
        return tp, None
    raise TypeError(f"field {name!r}: unsupported type {tp!r} for the command line")


def _sequence(tp: Any, name: str) -> tuple[Any, type | None]:
    """``tuple[T, ...]`` / ``list[T]`` -> ``(T, tuple | list)``; anything else -> ``(tp, None)``."""
    origin = get_origin(tp)
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"field {name!r}: only tuple[T, ...] is supported, got {tp!r}")
        return args[0], tuple
    if origin is list:
        return get_args(tp)[0], list
    return tp, None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] | set[str] = (),
                       overrides: bool = False) -> None:
    """Add ``--field-name`` to ``parser`` for every field of the dataclass ``cls`` except those in ``skip``.

    Args:
        parser: the parser (or subparser) to extend.
        cls: the dataclass.
        skip: field names that get no flag.
        overrides: False: a flag defaults to the field's default (a field without one is a required
            flag). True: a flag that is not given leaves no attribute on the namespace, so that
            ``given_values`` returns exactly the fields typed on the command line (``none`` included).

    Raises:
        TypeError: a field not in ``skip`` has a type the command line cannot express.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = argparse.SUPPRESS if overrides else _field_default(f)
        extra: dict[str, Any] = {}
        if default is dataclasses.MISSING:
            extra["required"] = True
        else:
            extra["default"] = default
        help_text = docs.get(f.name, f.name).replace("%", "%%")  # argparse %-formats help ("10% warm-up")
        tp, optional = _strip_optional(hints[f.name])
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text, **extra)
            continue
        tp, container = _sequence(tp, f.name)
        kind, choices = _scalar(tp, f.name)
        metavar = kind.__name__.upper()
        if choices is not None:
            metavar = None
            if optional:  # ``none`` passes the choices check; show it as typed
                choices = [*choices, None]
                metavar = "{" + ",".join("none" if c is None else str(c) for c in choices) + "}"

        def convert(text: str, kind=kind, optional=optional) -> Any:
            if optional and text.lower() == "none":
                return None
            try:
                return kind(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None

        parser.add_argument(flag, dest=f.name, type=convert, nargs="+" if container else None, choices=choices,
                            help=help_text, metavar=metavar, **extra)


def given_values(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """``{field: value}`` for the fields of the dataclass ``cls`` present on ``namespace`` (with
    ``overrides=True``: the ones given), several values as the field's own container (tuple or list)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not hasattr(namespace, f.name):
            continue
        value = getattr(namespace, f.name)
        if isinstance(value, list):
            _, container = _sequence(_strip_optional(hints[f.name])[0], f.name)
            value = list(value) if container is list else tuple(value)
        values[f.name] = value
    return values


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``prog: error: ...``) and exit status 2: a
    study's usage runs to 50 lines, which would bury the one that says what is wrong."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(cls: type, *, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of the dataclass ``cls`` (defaults shown in help); its errors
    are one line and exit status 2."""
    parser = OneLineErrorParser(prog=prog, description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_dataclass_args(parser, cls)
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, **parser_kwargs: Any) -> T:
    """Parse ``argv`` (default ``sys.argv[1:]``) into an instance of the dataclass ``cls``.

    A ``ValueError`` from the dataclass (its own checks) becomes argparse's one-line error, exit status 2.
    """
    parser = build_parser(cls, **parser_kwargs)
    ns = parser.parse_args(argv)
    try:
        return cls(**given_values(ns, cls))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
