"""Package indexes from a mirror are outside input: bounded decompression, and no crash on any text."""

from __future__ import annotations

import gzip
import lzma

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.formats.debian_index import BadIndex, decompress_checked, iter_versions
from pipeline.rebuild.archive import ArchiveError, parse_packages, parse_packages_xz
from tests.fuzzing import bounded

INDEX = (
    "Package: openssl\nVersion: 3.0.15-1~deb12u1\nArchitecture: amd64\n\n"
    "Package: openssl\nVersion: 3.0.16-1~deb12u1\nArchitecture: amd64\n\n"
    "Package: broken\nVersion: :1\nArchitecture: amd64\n\n"
    "Package: tzdata\nVersion: 2025b-0+deb12u1\nArchitecture: all\n"
)


def test_newest_valid_versions_win_and_invalid_ones_are_skipped() -> None:
    assert parse_packages(INDEX) == {"openssl": "3.0.16-1~deb12u1", "tzdata": "2025b-0+deb12u1"}
    assert ("tzdata", "all", "2025b-0+deb12u1") in list(iter_versions(INDEX))


@pytest.mark.parametrize(("compress", "kind"), [(lzma.compress, "xz"), (gzip.compress, "gz")])
def test_a_decompression_bomb_is_refused_at_the_cap(compress: object, kind: str) -> None:
    bomb = compress(b"\0" * (64 << 20))  # type: ignore[operator]
    assert len(bomb) < 200_000
    with bounded(seconds=10, memory_bytes=48 << 20), pytest.raises(BadIndex, match="inflates to over 16777216 bytes"):
        decompress_checked(bomb, kind, limit=16 << 20)


def test_truncated_and_foreign_data_are_refused() -> None:
    data = lzma.compress(INDEX.encode())
    with pytest.raises(BadIndex, match="truncated xz data"):
        decompress_checked(data[: len(data) // 2], "xz")
    with pytest.raises(BadIndex, match="not gz-compressed"):
        decompress_checked(b"PK\x03\x04 not gzip", "gz")
    with pytest.raises(ArchiveError, match=r"http://m/Packages.xz: not a usable xz-compressed package index \("):
        parse_packages_xz(b"\xfd7zXZ\x00garbage", "http://m/Packages.xz")


_FIELD = st.sampled_from(["Package", "Version", "Architecture", "Source", "package", " Version", "Version:"])
_LINE = st.one_of(
    st.tuples(_FIELD, st.text(max_size=40)).map(lambda kv: f"{kv[0]}: {kv[1]}"),
    st.text(max_size=60),
)


@given(st.lists(_LINE, max_size=40).map("\n".join))
def test_any_text_parses_without_crashing(text: str) -> None:
    with bounded(seconds=2, memory_bytes=16 << 20):
        result = parse_packages(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


@given(st.binary(max_size=4096), st.sampled_from(["xz", "gz"]))
def test_any_bytes_decompress_or_are_refused(data: bytes, kind: str) -> None:
    with bounded(seconds=2, memory_bytes=16 << 20):
        try:
            decompress_checked(data, kind, limit=1 << 20)
        except BadIndex:
            pass
