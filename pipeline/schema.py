"""Documents from outside: a bounded YAML reader that yields only JSON-compatible data, checks for
text that cannot travel (control characters, lone surrogates...), and the JSON Schemas shipped in
``pipeline/schemas/`` (every error with its path; the schema's defaults applied once, so a default
is written in exactly one place).

A problem is ``(field path, message)``; callers prefix the file. Every message is one line.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Generator
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import jsonschema
import jsonschema_rs
import yaml

from pipeline.errors import ConfigError

SCHEMA_PACKAGE = "pipeline.schemas"
Problem = tuple[str, str]  # (dotted field path, message)
TOP = "(top level)"

# --- a bounded, JSON-only YAML reader -------------------------------------------------------------

# libyaml's parser when present (7x faster: the rebuild decision reads every definition). Only its
# event stream is used: objects are built here, so an alias is refused before anything is expanded.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_RESOLVER = yaml.resolver.Resolver()
_SCALARS = yaml.constructor.SafeConstructor()
_Y = "tag:yaml.org,2002:"
_MAP_TAGS = (None, "!", _Y + "map")
_SEQ_TAGS = (None, "!", _Y + "seq")


@dataclass(frozen=True)
class YamlLimits:
    """What one small configuration document may hold; far above any real one."""

    max_bytes: int = 64 * 1024
    max_depth: int = 12
    max_nodes: int = 5000
    max_number_chars: int = 32
    max_problems: int = 50


class _TooMuch(Exception):
    """Stop reading: a bound was reached (the problem is already recorded)."""


@dataclass
class _Frame:
    path: str
    value: dict[str, Any] | list[Any] | None  # None: a refused collection whose content is skipped
    key: str | None = None  # a mapping's key waiting for its value
    key_pending: bool = True
    drop_value: bool = False  # the key was refused: skip its value
    index: int = 0
    lines: dict[str, int] | None = None  # key -> line it first appeared on


def join_path(parent: str, key: str | int) -> str:
    """``parent.key`` with the key shown safely (escaped and shortened when it is not a plain name)."""
    shown = str(key) if isinstance(key, int) else show_key(key)
    return shown if parent in ("", TOP) else f"{parent}.{shown}"


def show_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", key):
        return key
    return json.dumps(key[:40] + ("..." if len(key) > 40 else ""))


def brief(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, shortened: messages never carry a whole hostile value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def parse_yaml(text: str, source: str, limits: YamlLimits = YamlLimits()) -> tuple[Any, list[Problem]]:
    """One YAML document as plain data: mappings with text keys, lists, text, int, finite float,
    bool, null. Anchors, aliases, merge keys, explicit or custom tags (``!!binary``, ``!!python/...``),
    dates, duplicate keys and non-text keys are problems (the offending value becomes ``None``).

    Bounded by ``limits`` (nesting depth, number of values, length of a number); a YAML syntax
    error raises ``ConfigError`` ``source:LINE:COL: not valid YAML: ...``.
    """
    problems: list[Problem] = []
    root: list[Any] = []
    stack: list[_Frame] = []
    nodes = documents = 0

    def problem(path: str, message: str, mark: Any = None) -> None:
        if len(problems) >= limits.max_problems:
            problems.append((TOP, f"more than {limits.max_problems} problems; stopped reading"))
            raise _TooMuch
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problems.append((path or TOP, message + where))

    def place(value: Any, event: Any) -> tuple[str, bool]:
        """Put ``value`` where the stream is; returns its path and whether it is kept."""
        if not stack:
            root.append(value)
            return TOP, True
        top = stack[-1]
        if top.value is None:
            return top.path, False
        if isinstance(top.value, list):
            path = join_path(top.path, top.index)
            top.index += 1
            top.value.append(value)
            return path, True
        if top.key_pending:
            raise AssertionError("a mapping key is handled by the caller")
        top.key_pending = True
        if top.drop_value or top.key is None:
            top.drop_value = False
            return top.path, False
        path = join_path(top.path, top.key)
        top.value[top.key] = value
        return path, True

    def mapping_key(event: Any) -> bool:
        """Handle ``event`` if it is a key of the mapping being read; True when it was."""
        if not stack or not isinstance(stack[-1].value, dict) or not stack[-1].key_pending:
            return False
        top = stack[-1]
        top.key_pending = False
        top.key, top.drop_value = None, True
        if not isinstance(event, yaml.ScalarEvent) or event.anchor is not None:
            problem(top.path, "keys must be plain text (no lists, mappings, anchors, aliases)", event.start_mark)
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                push(_Frame(top.path, None), event)
            return True
        tag = _tag(event)
        if tag != _Y + "str":
            what = "merge keys (<<)" if tag == _Y + "merge" else f"the key {brief(event.value)} ({_tag_name(tag)})"
            problem(top.path, f"{what} not allowed: keys must be text (quote it)", event.start_mark)
            return True
        assert top.lines is not None
        if event.value in top.lines:
            problem(
                join_path(top.path, event.value),
                f"is set twice (lines {top.lines[event.value]} and {_line(event.start_mark)})",
            )
            return True
        top.lines[event.value] = _line(event.start_mark)
        top.key, top.drop_value = event.value, False
        return True

    def push(frame: _Frame, event: Any) -> None:
        if len(stack) >= limits.max_depth:
            problem(frame.path, f"nested deeper than {limits.max_depth} levels", event.start_mark)
            raise _TooMuch
        stack.append(frame)

    events = cast(Generator[yaml.Event, None, None], yaml.parse(text, Loader=_YAML_LOADER))
    try:
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    problem(TOP, "more than one YAML document (---)", event.start_mark)
                    raise _TooMuch
                continue
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                stack.pop()
                continue
            if not isinstance(event, yaml.NodeEvent):
                continue
            nodes += 1
            if nodes > limits.max_nodes:
                problem(TOP, f"more than {limits.max_nodes} values", event.start_mark)
                raise _TooMuch
            if mapping_key(event):
                continue
            if isinstance(event, yaml.AliasEvent):
                path, kept = place(None, event)
                if kept:
                    problem(path, f"aliases (*{_anchor(event)}) are not allowed", event.start_mark)
                continue
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                is_map = isinstance(event, yaml.MappingStartEvent)
                container: dict[str, Any] | list[Any] = {} if is_map else []
                path, kept = place(container, event)
                bad = _collection_problem(event, is_map)
                if kept and bad:
                    problem(path, bad, event.start_mark)
                    _replace_with_none(stack, root)
                if kept and not bad:
                    push(_Frame(path, container, lines={} if is_map else None), event)
                else:
                    push(_Frame(path, None), event)
                continue
            value, bad = _scalar(event, limits)
            path, kept = place(value, event)
            if kept and bad:
                problem(path, bad, event.start_mark)
    except _TooMuch:
        return None, problems
    except yaml.YAMLError as e:
        raise ConfigError(_syntax_error(source, text, e)) from e
    finally:
        events.close()
    return (root[0] if root else None), problems


def _replace_with_none(stack: list[_Frame], root: list[Any]) -> None:
    """The collection just placed is refused: leave ``None`` in its place."""
    if not stack:
        root[-1] = None
        return
    top = stack[-1]
    if isinstance(top.value, list):
        top.value[-1] = None
    elif isinstance(top.value, dict):
        top.value[next(reversed(top.value))] = None


def _line(mark: Any) -> int:
    return int(mark.line) + 1 if mark is not None else 0


def _tag(event: Any) -> str:
    if event.tag is None or event.tag == "!":
        return str(_RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit))  # type: ignore[no-untyped-call]
    return str(event.tag)


def _tag_name(tag: str) -> str:
    """``!!binary`` for YAML's own tags; any tag shown on one short line."""
    return brief("!!" + tag[len(_Y) :] if tag.startswith(_Y) else tag)[1:-1]


def _anchor(event: Any) -> str:
    return brief(str(event.anchor), 40)[1:-1]


def _collection_problem(event: Any, is_map: bool) -> str | None:
    if event.anchor is not None:
        return f"anchors (&{_anchor(event)}) are not allowed"
    if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
        return _refused_tag(event.tag)
    return None


def _scalar(event: Any, limits: YamlLimits) -> tuple[Any, str | None]:
    """The value of a scalar event and, if it is refused, why (the value is then ``None``)."""
    if event.anchor is not None:
        return None, f"anchors (&{_anchor(event)}) are not allowed"
    tag, text = _tag(event), event.value
    node = yaml.ScalarNode(tag, text)
    if tag == _Y + "str":
        return text, None
    if tag == _Y + "null":
        return None, None
    if tag == _Y + "bool":
        return _SCALARS.construct_yaml_bool(node), None
    if tag in (_Y + "int", _Y + "float"):
        if len(text) > limits.max_number_chars:
            return None, f"a number longer than {limits.max_number_chars} characters"
        try:
            number = _SCALARS.construct_yaml_int(node) if tag == _Y + "int" else _SCALARS.construct_yaml_float(node)
        except (ValueError, IndexError):  # IndexError: PyYAML on an empty explicit !!int / !!float
            return None, f"{brief(text)} is not a valid {_tag_name(tag)}"
        if isinstance(number, float) and not math.isfinite(number):
            return None, f"{brief(text)}: only finite numbers are allowed"
        return number, None
    if tag == _Y + "timestamp":
        return None, f"{brief(text)} reads as a date: write it in quotes"
    return None, _refused_tag(tag)


def _refused_tag(tag: str) -> str:
    return f"the tag {_tag_name(tag)} is not allowed: only plain text, numbers, true/false, lists and mappings"


def _syntax_error(source: str, text: str, e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        where, why = f"{mark.line + 1}:{mark.column + 1}", str(getattr(e, "problem", e))
    elif isinstance(e, yaml.reader.ReaderError):
        before = text[: max(0, int(e.position))]
        where = f"{before.count(chr(10)) + 1}:{len(before) - before.rfind(chr(10))}"
        code = e.character if isinstance(e.character, int) else ord(str(e.character)[:1] or "\0")
        why = f"{e.reason} (U+{code:04X})"
    else:
        where, why = "1:1", str(e)
    return f"{source}:{where}: not valid YAML: {' '.join(why.split())[:200]}"


# --- text that can travel ---------------------------------------------------------------------------

_PLANE_NONCHARS = "".join(chr(p * 0x10000 + 0xFFFE) + chr(p * 0x10000 + 0xFFFF) for p in range(1, 17))
_ALWAYS_BAD = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 controls but tab/newline, DEL, C1 controls
    "\ud800-\udfff"  # lone surrogates (no encoding can carry them)
    "\ufdd0-\ufdef\ufffe\uffff"
    + _PLANE_NONCHARS  # non-characters (XML refuses U+FFFE/U+FFFF)
    + "\u2028\u2029"  # line/paragraph separators
    "\u202a-\u202e\u2066-\u2069"  # bidirectional overrides and isolates (text that reads backwards)
)
_BAD_MULTILINE = re.compile(f"[{_ALWAYS_BAD}]")
_BAD_LINE = re.compile(f"[{_ALWAYS_BAD}\t\n]")


def text_problem(value: str, multiline: bool = False) -> str | None:
    """Why ``value`` cannot go into a file name, an XML descriptor, a database or a log line, or None.
    ``multiline`` text may hold newlines and tabs."""
    found = (_BAD_MULTILINE if multiline else _BAD_LINE).search(value)
    if found is None:
        return None
    char = found.group()
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "the character"
    where = "" if multiline else "; only multi-line fields may span lines" if char == "\n" else ""
    return f"contains {kind} U+{ord(char):04X} at position {found.start()}{where}"


def text_problems(document: Any, multiline: frozenset[str] = frozenset(), path: str = TOP) -> list[Problem]:
    """Every string (keys too) in ``document`` that :func:`text_problem` refuses; ``multiline``
    names the field paths whose text may span lines."""
    problems: list[Problem] = []
    if isinstance(document, str):
        why = text_problem(document, path in multiline)
        if why:
            problems.append((path, why))
    elif isinstance(document, dict):
        for key, value in document.items():
            sub = join_path(path, str(key))
            if isinstance(key, str) and (why := text_problem(key)):
                problems.append((sub, f"the field name {why}"))
            problems += text_problems(value, multiline, sub)
    elif isinstance(document, list | tuple):
        for i, value in enumerate(document):
            problems += text_problems(value, multiline, join_path(path, i))
    return problems


# --- JSON Schemas ------------------------------------------------------------------------------------


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """The schema ``pipeline/schemas/<name>.schema.json``."""
    text = resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def _path(error: jsonschema.ValidationError) -> str:
    path = TOP
    for part in error.absolute_path:
        path = join_path(path, part if isinstance(part, int) else str(part))
    if "propertyNames" in error.relative_schema_path and isinstance(error.instance, str):
        path = join_path(path, error.instance)
    elif error.validator == "required" and "'" in error.message:
        path = join_path(path, str(error.message).split("'")[1])
    return path


def _extra_fields(error: jsonschema.ValidationError) -> list[str]:
    """The fields an ``additionalProperties: false`` error is about (jsonschema lists them in one message)."""
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    instance = error.instance if isinstance(error.instance, dict) else {}
    return [str(k) for k in instance if k not in known]


def _message(error: jsonschema.ValidationError) -> str:
    v, limit = error.validator, error.validator_value
    if v == "required":
        return "is required"
    if v == "additionalProperties":
        return "is not a known field"
    if v == "minimum":
        return f"must be >= {limit}"
    if v == "maximum":
        return f"must be <= {limit}"
    if v == "pattern":
        said = error.schema.get("x-pattern-message") if isinstance(error.schema, dict) else None
        return f"{brief(error.instance)} {said or f'does not match {limit}'}"
    if v == "enum":
        choices = limit if isinstance(limit, list) else []
        return f"{brief(error.instance)} is not one of {', '.join(map(str, choices))}"
    if v == "type":
        return f"must be of type {limit}"
    size = len(error.instance) if isinstance(error.instance, str | list | dict) else 0
    if v == "maxLength":
        return f"must be at most {limit} characters (has {size})"
    if v == "minLength":
        return "must not be empty" if limit == 1 else f"must be at least {limit} characters"
    if v == "maxItems":
        return f"must have at most {limit} items (has {size})"
    if v == "minItems":
        return f"must have at least {limit} item{'s' if limit != 1 else ''}"
    if v == "uniqueItems":
        return "has duplicate items"
    if v in ("minProperties", "maxProperties") and isinstance(error.instance, dict) and error.absolute_path:
        if error.absolute_path[-1] == "base":
            return f"must set exactly one of its options (has {len(error.instance)})"
        return f"must have {'at most' if v == 'maxProperties' else 'at least'} {limit} entries"
    return " ".join(str(error.message).split())[:200]


@functools.cache
def _fast_validator(name: str) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(load_schema(name))


def schema_problems(name: str, document: Any) -> list[Problem]:
    """Every violation of schema ``name`` in ``document`` as ``(path, message)``, sorted by path.

    A valid document is confirmed by the Rust validator (a manifest with a thousand packages: ~2 ms
    instead of ~250 ms); only an invalid one, or one the Rust side cannot take (a lone surrogate, an
    integer beyond 64 bits), is walked by ``jsonschema`` for the messages.
    """
    try:
        if _fast_validator(name).is_valid(document):
            return []
    except (ValueError, OverflowError):
        pass
    validator = jsonschema.Draft202012Validator(load_schema(name))
    errors = sorted(validator.iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    problems: list[Problem] = []
    for e in errors:
        if e.validator == "additionalProperties" and e.validator_value is False:
            problems += [(join_path(_path(e), k), "is not a known field") for k in _extra_fields(e)]
        else:
            problems.append((_path(e), _message(e)))
    return problems


def validation_errors(name: str, document: Any, source: str) -> list[str]:
    """Every schema violation in ``document`` as ``source: dotted.path: message``, sorted by path."""
    return [f"{source}: {path}: {message}" for path, message in schema_problems(name, document)]


def apply_defaults(name: str, document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` with the schema's ``default`` values filled in for absent properties."""

    def fill(schema: dict[str, Any], value: Any) -> Any:
        if not isinstance(value, dict) or schema.get("type") not in ("object", None):
            return value
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = fill(sub, value[key])
        return value

    result: dict[str, Any] = fill(load_schema(name), copy.deepcopy(document))
    return result
