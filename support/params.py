"""Parameters as typed dataclasses: a notebook's ``parameters`` cell or a YAML mapping -> config.

Unknown names and wrong types are errors that name the source and the field, so a typo in a
profile fails before hours of training rather than being silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TypeVar

T = TypeVar("T")
Check = tuple[bool, str, str]   # (holds, field, what the field must be)


class ParameterError(ValueError):
    pass


class Checked:
    """Mixin of config dataclasses, the one validation style: :meth:`checks` lists the rules,
    :meth:`validate` raises at the first that fails, naming the field, the value expected and
    the value given.

    By default the rules are those of the parts (fields that are ``Checked`` themselves), named
    under the part: a config made of parts needs no rules of its own.
    """

    title = "parameters"     # names the config in messages, e.g. "DDPM parameters"

    def checks(self) -> Iterable[Check]:
        for f in dataclasses.fields(self):
            part = getattr(self, f.name)
            if isinstance(part, Checked):
                yield from part_checks(f.name, part)

    def validate(self: T) -> T:
        """Raise ``ParameterError`` at the first rule that fails; return ``self`` otherwise."""
        for ok, field, expected in self.checks():
            if not ok:
                value = _value_at(self, field)
                got = "" if value is _MISSING else f", got {value!r}"
                raise ParameterError(f"{self.title}: {field} must be {expected}{got}")
        return self


def part_checks(prefix: str, part: Checked) -> Iterator[Check]:
    """The rules of a nested part, with its field names under ``prefix``."""
    for ok, field, expected in part.checks():
        yield ok, f"{prefix}.{field}", expected


_MISSING = object()


def _value_at(obj: Any, path: str) -> Any:
    """``obj.a.b`` for ``path == "a.b"``; a missing attribute yields ``_MISSING``."""
    for name in path.split("."):
        if not hasattr(obj, name):
            return _MISSING
        obj = getattr(obj, name)
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ParameterError as exc:
                errors.append(str(exc))
        raise ParameterError(f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ParameterError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ParameterError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_mapping(tp, value, source=where)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ParameterError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ParameterError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ParameterError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParameterError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ParameterError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParameterError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ParameterError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_mapping(cls: type[T], values: Mapping[str, Any], source: str = "parameters",
                 ignore_extra: bool = False) -> T:
    """Build dataclass ``cls`` from ``values``; unknown or ill-typed fields raise ``ParameterError``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown and not ignore_extra:
        raise ParameterError(f"{source}: unknown parameter(s) {unknown} for {cls.__name__}; "
                             f"expected some of {sorted(fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{source}: {cls.__name__}.{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ParameterError(f"{source}: missing required parameter {cls.__name__}.{name}")
    return cls(**kwargs)


def from_namespace(cls: type[T], namespace: Mapping[str, Any], source: str = "notebook parameters") -> T:
    """Pick ``cls``'s fields out of a namespace such as a notebook's ``globals()``."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return from_mapping(cls, {k: v for k, v in namespace.items() if k in names}, source=source)


def to_dict(obj: Any) -> dict:
    """Dataclass -> plain JSON-ready dict (paths as strings, tuples as lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def read_yaml_mapping(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The top-level mapping of a job/config YAML file; a missing file, invalid YAML, another
    top-level type or a missing ``required`` key is an error naming the file."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ParameterError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, Mapping):
        raise ParameterError(f"{path}: expected a mapping at the top level")
    missing = [k for k in required if k not in raw]
    if missing:
        raise ParameterError(f"{path}: expected a mapping with {', '.join(repr(k) for k in required)}; "
                             f"missing {missing}")
    return dict(raw)
