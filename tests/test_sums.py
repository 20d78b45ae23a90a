"""SHA*SUMS text (pipeline.formats.sums): what coreutils writes we read, what we write it checks."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline.formats.sums import parse_sums, sums_text
from tests.fuzzing import bounded

A256, B256 = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()


def test_sums_text_is_what_sha256sum_checks(tmp_path: Path) -> None:
    (tmp_path / "a.ova").write_bytes(b"a")
    (tmp_path / "b.qcow2").write_bytes(b"b")
    text = sums_text([("a.ova", A256), ("b.qcow2", B256)])
    assert text == f"{A256}  a.ova\n{B256}  b.qcow2\n".encode()
    (tmp_path / "SHA256SUMS").write_bytes(text)
    subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=tmp_path, check=True, capture_output=True)
    written = subprocess.run(["sha512sum", "-b", "a.ova"], cwd=tmp_path, check=True, capture_output=True).stdout
    assert parse_sums(written, "sha512") == ({"a.ova": hashlib.sha512(b"a").hexdigest()}, [])


def test_parse_round_trips_and_names_every_bad_line() -> None:
    assert parse_sums(sums_text([("a.ova", A256), ("b.qcow2", B256)]), "sha256") == (
        {"a.ova": A256, "b.qcow2": B256},
        [],
    )
    text = f"{A256}  a.ova\n{A256[:10]}  short\nnot a line\n{B256}  a.ova\n".encode()
    entries, problems = parse_sums(text, "sha256")
    assert entries == {"a.ova": A256}
    assert problems == [
        "line 2: short: 10 hex digits, sha256 has 64",
        "line 3: not '<hex>  <name>': 'not a line'",
        "line 4: a.ova is listed twice",
    ]
    assert parse_sums(b"\xff  x\n", "sha256") == ({}, ["checksum file is not ASCII text"])


@given(st.binary(max_size=400))
def test_any_bytes_give_entries_or_problems_never_a_crash(data: bytes) -> None:
    with bounded(seconds=1, memory_bytes=4 << 20):
        entries, problems = parse_sums(data, "sha512")
    assert all(len(h) == 128 for h in entries.values())
    assert entries or problems or data == b""
