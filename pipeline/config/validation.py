"""What every configuration file (rule pack, site overrides, product dictionary, mapping profiles) shares:
strict pydantic models, and one line naming the file, the dotted key and the nearest known key.

A configuration mistake stops the run before anything is read or written (the CLI exits 2): an unknown
key is never ignored, a string is never read as a number, a value outside its range is never used.
Defaults live in the TOML data; the models require keys rather than invent values.
"""

from __future__ import annotations

import copy
import difflib
import tomllib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """A configuration table: unknown keys refused, no type coercion ('7' is not 7), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def valid_regex(pattern: str) -> str:
    """A regular expression the Polars (Rust) regex engine accepts, as every pattern is run there."""
    try:
        pl.select(pl.lit("").str.contains(pattern))
    except pl.exceptions.PolarsError as exc:
        reasons = [line.strip().removeprefix("error:").strip() for line in str(exc).splitlines() if line.strip().startswith("error:")]
        raise ValueError(f"not a valid regular expression ({reasons[0] if reasons else 'invalid'})") from None
    return pattern


def _valid_time_zone(name: str) -> str:
    """An IANA time-zone name (Europe/London, America/New_York, UTC)."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time-zone name such as UTC or Europe/London") from None
    return name


Regex = typing.Annotated[str, AfterValidator(valid_regex)]
TimeZone = typing.Annotated[str, AfterValidator(_valid_time_zone)]


def dotted(loc: Iterable[Any]) -> str:
    """A pydantic error location as a dotted key: ('rules', 'x.y', 'severity') -> rules."x.y".severity."""
    parts = []
    for part in loc:
        text = str(part)
        parts.append(f'"{text}"' if "." in text else text)
    return ".".join(parts)


def nearest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key closest in spelling to `key` (difflib), if any is close."""
    matches = difflib.get_close_matches(str(key), sorted(set(map(str, known))), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """' (did you mean x?)', or ' (known: a, b, c)' when nothing is close, for an unknown key."""
    known = sorted(set(map(str, known)))
    close = nearest_key(key, known)
    if close:
        return f" (did you mean {close}?)"
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f" (known: {shown})" if known else ""


def _unwrap(annotation: Any) -> Any:
    """The type inside Annotated[...] and Optional[...]."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return annotation


def _keys_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys a model allows at a location (the fields of the table that holds the unknown key)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif typing.get_origin(current) in (dict, Mapping):
            current = typing.get_args(current)[1]
        elif typing.get_origin(current) in (list, tuple, Sequence):
            current = typing.get_args(current)[0]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _shown(value: Any) -> str:
    """A configuration value as quoted in an error (short)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(exc: ValidationError, model: type[BaseModel], file_of: Callable[[tuple], str]) -> str:
    """One line for the first problem of a validation error: file, dotted key, what is wrong, the nearest key.

    `file_of(loc)` names the file a location came from (a site override or the shipped file).
    """
    # An unknown key explains the rest (a misspelled key is also a missing one): it comes first.
    errors = sorted(
        exc.errors(include_url=False),
        key=lambda e: not (e["type"] == "extra_forbidden" or (e["loc"] and e["loc"][-1] == "[key]")),
    )
    first = errors[0]
    loc = tuple(first["loc"])
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    where, key = file_of(loc), dotted(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key {key}{did_you_mean(str(loc[-1]), _keys_at(model, loc[:-1]))}{more}"
    if loc and loc[-1] == "[key]":  # a key of a table whose keys are a fixed list (canonical column names)
        known = re.findall(r"'([^']*)'", str((first.get("ctx") or {}).get("expected", "")))
        return f"{where}: unknown key {dotted(loc[:-1])}{did_you_mean(str(loc[-2]), known)}{more}"
    if kind == "missing":
        return f"{where}: missing key {key}{more}"
    message = str(first["msg"])
    message = message[0].lower() + message[1:] if message else message
    message = message.removeprefix("value error, ")
    value = first.get("input")
    got = f" (got {_shown(value)})" if not isinstance(value, (dict, list)) else ""
    return f"{where}: {key}: {message}{got}{more}"


def unknown_key_problem(
    override: Mapping[str, Any], base: Mapping[str, Any], open_tables: Sequence[tuple[str, ...]], path: tuple = ()
) -> tuple[tuple, list[str]] | None:
    """The first key of a site override that the base file does not have: (its location, the keys known there).

    Tables listed in `open_tables` (locations such as ('groups',)) may gain new entries; everything else
    an override names must already exist in the base (a typo is never silently added).
    """
    for key, value in override.items():
        here = (*path, key)
        if key not in base:
            if path in open_tables:
                continue
            return here, list(base)
        if isinstance(value, dict) and isinstance(base[key], dict):
            found = unknown_key_problem(value, base[key], open_tables, here)
            if found:
                return found
    return None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A site's override merged into shipped data: tables merge key by key, other values replace."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_toml(path: Path, kind: str, error: type[Exception]) -> dict[str, Any]:
    """A site's TOML file, or `error` with one line naming the kind of file ('rule pack file'), the path and the problem."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{kind} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{kind} {path} is a folder, not a TOML file") from None
    except OSError as exc:
        raise error(f"cannot read {kind} {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{kind} {path} is not valid TOML: {exc}") from None
