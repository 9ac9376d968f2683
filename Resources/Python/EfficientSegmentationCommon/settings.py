"""One settings object per method: how a user option travels from panel, console and CLI to the model.

Each method declares its options once, as the fields of a frozen dataclass (``MedNCASettings``,
``OSSNetSettings``) made with :func:`option`. Everything else is derived from that declaration:

- console users pass the options to ``segment`` as keyword arguments, in Slicer's camelCase
  (``runs=1, globalSteps=10``) or as the field names; :func:`settings_from_keywords` builds the
  settings and names the options it does not know;
- the command lines get one flag per option (``--global-steps``) from :func:`add_arguments`,
  and :func:`settings_from_arguments` reads them back;
- the panel's parameter node gets one parameter per option (``parameter_fields``), bound to the
  ``.ui`` widget whose ``SlicerParameterName`` is the camelCase name, and
  :func:`settings_from_parameters` reads them back.

So a new option needs its field here, a widget in the ``.ui`` and the code that uses it. Values
are validated once, in the dataclass's ``__post_init__`` (:func:`validate`).
"""

from __future__ import annotations

import argparse
import contextvars
import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

# Metadata keys of an option's dataclass field.
_HELP, _RANGE, _TRAINED, _CLI, _PANEL, _ALIASES = "help", "range", "trained", "cli", "panel", "aliases"
_SLIDER, _PANEL_DEFAULT, _CHOICES = "slider", "panel_default", "choices"


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           trained: bool = False, cli: bool = True, panel: bool = True, aliases: tuple[str, ...] = (),
           slider: bool = False, panel_default: Any = None, choices: tuple[str, ...] = ()) -> Any:
    """A settings field: its default, the help text users see, and where it appears.

    Args:
        default: the value when the user gives none. ``None`` for a ``trained`` option means
            "the value the model was trained with" (read from the model card).
        help: one sentence for the CLI's ``--help`` and the docs.
        minimum, maximum: the valid range (inclusive); also the panel slider's range.
        trained: the model card holds the default (the panel's "use trained settings" box).
        cli: the command line has a flag for it.
        panel: the panel's parameter node has a parameter for it.
        aliases: further command-line flags for it (kept from earlier releases).
        slider: the panel shows a whole number on a slider (ctkSliderWidget binds floats only).
        panel_default: the panel's initial value where ``default`` is None ("trained"): the
            shipped model's value, shown until a run reads the chosen model's.
        choices: the valid values of a text option (the CLI's choices, the panel's combo box).
    """
    metadata = {_HELP: help, _RANGE: (minimum, maximum), _TRAINED: trained, _CLI: cli, _PANEL: panel,
                _ALIASES: aliases, _SLIDER: slider, _PANEL_DEFAULT: panel_default, _CHOICES: choices}
    return dataclasses.field(default=default, metadata=metadata)


def camel_case(name: str) -> str:
    """``global_steps`` -> ``globalSteps``: how Slicer's logic arguments and parameter nodes name it."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def flag(name: str) -> str:
    """``global_steps`` -> ``--global-steps``: the command-line flag of an option."""
    return "--" + name.replace("_", "-")


# How messages name an option: its console keyword, or its flag while settings are made from a
# command's flags (settings_from_arguments), so that each user reads the name they typed.
_NAMING: contextvars.ContextVar[Callable[[str], str]] = contextvars.ContextVar("option_naming", default=camel_case)


def option_name(name: str) -> str:
    """The name of option ``name`` (a field name) for an error message: ``outputSpacing``, or
    ``--output-spacing`` while :func:`settings_from_arguments` builds the settings."""
    return _NAMING.get()(name)


def snake_case(name: str) -> str:
    """``globalSteps`` -> ``global_steps``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _fields(settings_class: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(settings_class)


def _value_type(settings_class: type, field: dataclasses.Field) -> type:
    """The field's plain type (``int`` for ``int | None``)."""
    hint = typing.get_type_hints(settings_class)[field.name]
    arguments = [a for a in typing.get_args(hint) if a is not type(None)]
    return arguments[0] if arguments else hint


def validate(settings: Any) -> None:
    """Check every field against its type and range; ValueError naming the option and the valid values."""
    for field in _fields(type(settings)):
        value = getattr(settings, field.name)
        if value is None:
            continue
        kind = _value_type(type(settings), field)
        name = option_name(field.name)
        choices = field.metadata.get(_CHOICES, ())
        if choices and value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, not {value!r}")
            continue
        if kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if kind is int and float(value) != int(value):
                raise ValueError(f"{name} must be a whole number, not {value!r}")
            if value != value:  # NaN
                raise ValueError(f"{name} must be a number, not NaN")
            low, high = field.metadata.get(_RANGE, (None, None))
            if (low is not None and value < low) or (high is not None and value > high):
                bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
                raise ValueError(f"{name} must be {bounds}, not {value!r}")


def settings_from_keywords(settings_class: type, base: Any = None, **keywords: Any) -> Any:
    """Settings from keyword arguments in camelCase (``globalSteps``) or snake_case, over ``base``.

    Raises TypeError for an unknown option (listing the known ones) and ValueError for an
    invalid value.
    """
    known = {field.name for field in _fields(settings_class)}
    values = {}
    for key, value in keywords.items():
        name = key if key in known else snake_case(key)
        if name not in known:
            options = ", ".join(camel_case(n) for n in sorted(known))
            raise TypeError(f"unknown option '{key}'; the options are: {options}")
        values[name] = value
    base = base if base is not None else settings_class()
    return dataclasses.replace(base, **values)


def add_arguments(parser: argparse.ArgumentParser, settings_class: type) -> None:
    """One flag per option (``global_steps`` -> ``--global-steps``); booleans get ``--no-...`` too."""
    for field in _fields(settings_class):
        if not field.metadata.get(_CLI, False):
            continue
        flags = (flag(field.name), *field.metadata.get(_ALIASES, ()))
        kind = _value_type(settings_class, field)
        help_text = field.metadata[_HELP]
        if field.metadata.get(_TRAINED):
            help_text += " (default: the model's trained value)"
        elif field.default is not None and kind is not bool:
            help_text += f" (default {field.default})"
        if kind is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=field.default, help=help_text,
                                dest=field.name)
        elif kind in (int, float, str):
            parser.add_argument(*flags, type=kind, default=field.default, help=help_text, dest=field.name,
                                choices=field.metadata.get(_CHOICES) or None)
        else:  # a tuple of numbers, e.g. a spacing: one value, or one per axis
            parser.add_argument(*flags, type=float, nargs="+", default=field.default, help=help_text, dest=field.name)


def settings_from_arguments(settings_class: type, arguments: argparse.Namespace) -> Any:
    """Settings from the flags :func:`add_arguments` added (options without a flag keep their defaults).

    Raises ValueError as the settings class does, with each option named by its flag
    (``--output-spacing``), not by its console keyword (``outputSpacing``): the command's user
    typed the flag.
    """
    values = {}
    for field in _fields(settings_class):
        if field.metadata.get(_CLI, False):
            value = getattr(arguments, field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    naming = _NAMING.set(flag)
    try:
        return settings_class(**values)
    finally:
        _NAMING.reset(naming)


def parameter_fields(settings_class: type) -> list[tuple[str, type, Any, tuple[float | None, float | None]]]:
    """(camelCase name, type, default, (minimum, maximum)) of each option the panel holds.

    Floats, and whole numbers shown on a slider, are floats (ctkSliderWidget binds floats); an
    option whose default is "trained" starts at its ``panel_default``.
    """
    fields = []
    for field in _fields(settings_class):
        if not field.metadata.get(_PANEL, False):
            continue
        kind = _value_type(settings_class, field)
        default = field.default if field.default is not None else field.metadata.get(_PANEL_DEFAULT)
        if kind is float or (kind is int and field.metadata.get(_SLIDER)):
            kind, default = float, float(default)
        elif kind is str:
            default = default or ""
        fields.append((camel_case(field.name), kind, default, field.metadata.get(_RANGE, (None, None))))
    return fields


def option_choices(settings_class: type) -> dict[str, tuple[str, ...]]:
    """camelCase name -> valid values, for the options that declare ``choices``."""
    return {camel_case(field.name): field.metadata[_CHOICES] for field in _fields(settings_class)
            if field.metadata.get(_CHOICES)}


def settings_from_parameters(settings_class: type, parameters: Any, use_trained: bool = False,
                             overrides: Mapping[str, Any] | None = None) -> Any:
    """Settings from a panel's parameter node (any object with the camelCase names as attributes).

    Slider floats become integers where the option is whole; an empty string (an empty combo
    box) is the option's default. With
    ``use_trained``, the options the model card holds are left to the model (None).
    ``overrides``: field values the panel sets by hand (e.g. from a combo box).
    """
    values = {}
    for field in _fields(settings_class):
        if not field.metadata.get(_PANEL, False):
            continue
        if use_trained and field.metadata.get(_TRAINED):
            values[field.name] = None
            continue
        value = getattr(parameters, camel_case(field.name))
        kind = _value_type(settings_class, field)
        if kind is int:
            value = int(round(value))
        elif kind is str:
            value = value or field.default
        values[field.name] = value
    values.update(overrides or {})
    return settings_class(**values)


def option_help(settings_class: type) -> str:
    """The options as docstring lines: ``camelName``: help (default)."""
    lines = []
    for field in _fields(settings_class):
        default = "trained" if field.metadata.get(_TRAINED) else repr(field.default)
        lines.append(f"``{camel_case(field.name)}``: {field.metadata[_HELP]} (default {default}).")
    return "\n".join(lines)
