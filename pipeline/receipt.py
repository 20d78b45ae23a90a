"""Receipts: the small JSON record a step writes once its work is done, so that its result can be
rebuilt from disk later without asking the repository or the catalogue (``PublishResult.load``,
``EndorseResult.load``).

A receipt exists only for a step that finished: it is written after the step's last side effect
(the catalogue registration, the signed list), with one atomic rename, so a kill leaves either no
receipt or a complete one. It lives in the version folder, so it goes with the build it describes
(a forced rebuild replaces the folder). ``to_json``/``from_json`` turn the frozen result dataclasses
into plain JSON and back: datetimes as ISO 8601, enums by value, tuples as lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pipeline.errors import ReceiptError
from pipeline.fsutil import write_text_atomic

RECEIPT_FORMAT = 1
T = TypeVar("T")


def write_receipt(path: Path, kind: str, body: Mapping[str, Any]) -> None:
    """Write the receipt of a finished ``kind`` step (``publish``, ``endorse``) atomically at ``path``."""
    data = {"receipt": kind, "format": RECEIPT_FORMAT, **body}
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_receipt(path: Path, kind: str, missing: str, hint: str) -> dict[str, Any]:
    """The receipt at ``path``; a ``ReceiptError`` of one line naming the file if there is none
    (``missing`` says what that means) or it is not a ``kind`` receipt this code writes."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ReceiptError(f"{path}: no {kind} receipt: {missing}", hint) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReceiptError(f"{path}: not a readable {kind} receipt ({e})", hint) from e
    if not isinstance(data, dict) or data.get("receipt") != kind or data.get("format") != RECEIPT_FORMAT:
        raise ReceiptError(f"{path}: not a {kind} receipt of format {RECEIPT_FORMAT}", hint)
    return data


@contextlib.contextmanager
def reading(path: Path, hint: str) -> Iterator[None]:
    """Turn a field that is absent or of the wrong shape into one ``ReceiptError`` naming the file."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ReceiptError(f"{path}: damaged receipt ({type(e).__name__}: {e})", hint) from e


def to_json(value: Any) -> Any:
    """Plain JSON data for a result dataclass (and what it holds: the catalogue's schemas too)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float):
        return value
    raise TypeError(f"a {type(value).__name__} has no JSON form in a receipt")


def from_json(cls: type[T], data: Any) -> T:
    """The dataclass ``cls`` from what ``to_json`` wrote; ``ValueError`` naming the field on any mismatch."""
    return typing.cast(T, _decode(cls, data, cls.__name__))


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]  # only ``X | None`` is used in results
        return _decode(inner, value, where)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        try:
            return tp.model_validate(value)
        except ValidationError as e:  # pydantic's report spans lines: the first error, in one
            first = e.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{where}.{field}: {first['msg']}") from None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        if unknown := sorted(set(value) - known):
            raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
        return tp(**{k: _decode(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin is tuple:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} items")
        return tuple(_decode(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin in (Mapping, dict) or tp is Any:
        if tp is not Any and not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is dt.datetime:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected an ISO 8601 time")
        return dt.datetime.fromisoformat(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, bool):
        if type(value) is not tp:
            raise ValueError(f"{where}: expected {tp.__name__}, found {type(value).__name__}")
        return value
    raise TypeError(f"{where}: {tp!r} is not a type a receipt holds")
