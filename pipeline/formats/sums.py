"""The ``SHA256SUMS``/``SHA512SUMS`` files published beside the images: ``sha256sum``'s text format,
one ``hex  name`` line per file (``sha256sum --check --strict`` reads what we write).

Pure: text in, text out; the package stage writes the file (atomically, hashed as written).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

HEX_DIGITS = {"sha256": 64, "sha512": 128}
# coreutils: the digest, a space, then a space (text mode) or '*' (binary mode), then the name
SUMS_LINE = re.compile(r"^(?P<hex>[0-9a-f]+) [ *](?P<name>[^\n]+)$")


def sums_text(entries: Sequence[tuple[str, str]]) -> bytes:
    """``hex  name`` for every ``(name, hex)``, in the order given."""
    return "".join(f"{digest}  {name}\n" for name, digest in entries).encode("ascii")


def parse_sums(text: bytes, algorithm: str) -> tuple[dict[str, str], list[str]]:
    """``{name: hex}`` and one problem per malformed, wrong-length or repeated line.

    ``algorithm`` is ``sha256`` or ``sha512`` (the file's name says which: ``SHA256SUMS``).
    """
    length = HEX_DIGITS[algorithm]
    entries: dict[str, str] = {}
    problems: list[str] = []
    try:
        lines = text.decode("ascii").split("\n")
    except UnicodeDecodeError:
        return {}, ["checksum file is not ASCII text"]
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        match = SUMS_LINE.match(line)
        if not match:
            problems.append(f"line {number}: not '<hex>  <name>': {line[:80]!r}")
        elif len(match["hex"]) != length:
            problems.append(f"line {number}: {match['name']}: {len(match['hex'])} hex digits, {algorithm} has {length}")
        elif match["name"] in entries:
            problems.append(f"line {number}: {match['name']} is listed twice")
        else:
            entries[match["name"]] = match["hex"]
    return entries, problems
