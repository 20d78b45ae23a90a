"""Read a built disk's root filesystem offline, without the host kernel or any guest program.

The audit must never run code from the image, never let qemu-img guess a format (CVE-2010-3851:
a "raw" file posing as qcow2 reads host files through a backing file), and never let a symlink in
the guest reach the host. So: ``qemu-img info/convert -f <declared format>`` to a scratch raw file,
the MBR/GPT table parsed here, the ext2/3/4 root copied out with e2fsprogs' ``debugfs -c rdump``
(userspace, read-only), and every path resolved inside that copy as if it were ``/``. A GPT disk's
EFI system partition (vfat) is copied out the same way with mtools (``mcopy -i raw@@offset``, no
mount) and read as its own tree (``RootFs.esp``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import struct
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pipeline.errors import ArtifactError, CommandError
from pipeline.log import log
from pipeline.run import Limits, Result, find_tool, run

SECTOR = 512
EXT_MAGIC_OFFSET = 1024 + 0x38
EXT_MAGIC = b"\x53\xef"
GPT_PROTECTIVE = 0xEE
QEMU_IMG_LIMITS = Limits(cpu_seconds=120, address_space_bytes=2 * 1024**3)  # qemu-img on an image we did not write
# A small image can hold a sparse file of terabytes, and debugfs writes holes out as zeros: cap each
# copied file, and give the copy time in proportion to the image (plus a floor for small ones).
MAX_FILE_BYTES = 4 * 1024**3
MAX_VIRTUAL_BYTES = 2 * 1024**4
COPY_SECONDS_FLOOR = 300.0
COPY_SECONDS_PER_GIB = 120.0
MAX_SYMLINK_HOPS = 40
TOOL_HINTS = {"debugfs": "install Debian's 'e2fsprogs' package"}


UNKNOWN_ID = 0xFFFFFFFF  # (uid_t)-1: no owner recorded for a path (the audit reports it)
MAX_INODES = 2_000_000  # a Debian root holds some 30,000; a hostile image gets no more than this
MAX_DEPTH = 256
# `debugfs ls -p`: "/ino/mode/uid/gid/name/size/" per entry (a name never holds "/", but may hold "\n"),
# and with -f each command echoed first as "debugfs: ls -p <ino>"
LS_TOKEN = re.compile(r"debugfs: ls -p <(\d+)>\n|/(\d+)/([0-7]{6})/(\d+)/(\d+)/([^/]*)/\d*/\n|\n")


@dataclass(frozen=True)
class Inode:
    mode: int  # st_mode: file type and permission bits, set-id and sticky bits included
    uid: int
    gid: int


ESP_TYPE_GUID = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ESP_COPY_SECONDS = 120.0
TOOL_HINTS["mcopy"] = "install Debian's 'mtools' package"


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes
    size: int  # bytes
    table: str  # mbr | gpt | none
    type_guid: str = ""  # GPT partition type, upper-case text form

    @property
    def is_esp(self) -> bool:
        return self.table == "gpt" and self.type_guid == ESP_TYPE_GUID


@dataclass(frozen=True)
class DiskInfo:
    format: str
    virtual_size: int
    partition: Partition

    def describe(self) -> str:
        p = self.partition
        where = f"partition {p.number} ({p.table})" if p.table != "none" else "whole disk"
        return f"{self.format}, {self.virtual_size} bytes, no backing file; root ext filesystem on {where}"


def inspect_format(disk: Path, fmt: str) -> int:
    """``qemu-img info`` with the declared format; refuses backing files, external data files, a wrong format."""
    out = run(
        [find_tool("qemu-img"), "info", "-f", fmt, "--output=json", str(disk)],
        limits=QEMU_IMG_LIMITS,
        timeout=120,
        hint=f"is {disk} really a {fmt} image?",
    ).stdout
    info = json.loads(out)
    problems = []
    if info.get("format") != fmt:
        problems.append(f"qemu-img reads it as {info.get('format')}, not {fmt}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        problems.append(f"has a backing file {info.get('backing-filename')!r} (would read outside the image)")
    data_file = (info.get("format-specific") or {}).get("data", {}).get("data-file")
    if data_file:
        problems.append(f"has an external data file {data_file!r}")
    virtual: object = info.get("virtual-size")
    if not isinstance(virtual, int) or virtual <= 0:
        problems.append(f"qemu-img reports no usable virtual size ({virtual!r})")
    elif virtual > MAX_VIRTUAL_BYTES:
        problems.append(f"virtual size {virtual} bytes is over the audit's cap of {MAX_VIRTUAL_BYTES} bytes")
    if problems:
        raise ArtifactError(f"{disk}: refusing to inspect: " + "; ".join(problems))
    assert isinstance(virtual, int)
    return virtual


def _has_ext_magic(f: os.PathLike[str] | str, offset: int) -> bool:
    with open(f, "rb") as fh:
        fh.seek(offset + EXT_MAGIC_OFFSET)
        return fh.read(2) == EXT_MAGIC


def partitions(raw: Path) -> list[Partition]:
    """Partitions of a raw disk from its MBR, or GPT behind a protective MBR (primary entries only)."""
    with open(raw, "rb") as f:
        mbr = f.read(SECTOR)
        if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
            return []
        entries = [struct.unpack_from("<B3sB3sII", mbr, 446 + 16 * i) for i in range(4)]
        if any(e[2] == GPT_PROTECTIVE for e in entries):
            f.seek(SECTOR)
            header = f.read(92)
            if header[:8] != b"EFI PART":
                raise ArtifactError(f"{raw}: protective MBR but no GPT header")
            table_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
            if not (0 < count <= 1024 and 128 <= entry_size <= 4096):
                raise ArtifactError(f"{raw}: implausible GPT ({count} entries of {entry_size} bytes)")
            f.seek(table_lba * SECTOR)
            table = f.read(count * entry_size)
            found = []
            for i in range(count):
                entry = table[i * entry_size : (i + 1) * entry_size]
                if entry[:16] == bytes(16):
                    continue
                first, last = struct.unpack_from("<QQ", entry, 32)
                if last < first:
                    raise ArtifactError(f"{raw}: GPT entry {i + 1} ends before it starts")
                type_guid = str(uuid.UUID(bytes_le=bytes(entry[:16]))).upper()
                found.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, "gpt", type_guid))
            return found
        return [
            Partition(i + 1, start * SECTOR, sectors * SECTOR, "mbr")
            for i, (_status, _chs, ptype, _chs2, start, sectors) in enumerate(entries)
            if ptype != 0 and sectors > 0
        ]


def find_root_partition(raw: Path) -> Partition:
    """The largest partition holding an ext2/3/4 filesystem (or the whole disk if it is one)."""
    size = raw.stat().st_size
    candidates = [p for p in partitions(raw) if p.start + p.size <= size and _has_ext_magic(raw, p.start)]
    if not candidates and _has_ext_magic(raw, 0):
        return Partition(0, 0, size, "none")
    if not candidates:
        raise ArtifactError(
            f"{raw}: no ext2/3/4 root filesystem found in its partition table",
            hint="the audit reads ext filesystems (what the pipeline builds)",
        )
    return max(candidates, key=lambda p: p.size)


class RootFs:
    """A copy of the guest's root filesystem, read as ``/``: symlinks resolve inside it, never on the host."""

    def __init__(
        self, top: Path, origin: str, esp: RootFs | None = None, meta: Mapping[str, Inode] | None = None
    ) -> None:
        self.top = top
        self.origin = origin
        self.esp = esp  # the EFI system partition's files (GPT disks with an ESP), read as their own tree
        # guest path -> mode and owners as the filesystem records them (None: the copy's own are right,
        # e.g. a FAT ESP or a test tree); the copy's owners and set-id bits are not the guest's
        self.meta = meta

    def _real(self, host: Path, st: os.stat_result) -> os.stat_result:
        """``st`` of the copy with the guest's mode, uid and gid (unknown owners: ``UNKNOWN_ID``)."""
        if self.meta is None:
            return st
        guest = "/" + host.relative_to(self.top).as_posix()
        inode = self.meta.get("/" if guest == "/." else guest)
        mode, uid, gid = (inode.mode, inode.uid, inode.gid) if inode else (st.st_mode, UNKNOWN_ID, UNKNOWN_ID)
        return os.stat_result((mode, st.st_ino, st.st_dev, st.st_nlink, uid, gid, *tuple(st)[6:10]))

    def host_path(self, path: str, follow: bool = True) -> Path | None:
        """Where the guest's ``path`` is in the copy (symlinks resolved within the guest), None if absent."""
        parts = list(PurePosixPath("/", path).parts[1:])
        current: list[str] = []
        hops = 0
        while parts:
            name = parts.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if current:
                    current.pop()
                continue
            candidate = self.top.joinpath(*current, name)
            try:
                st = candidate.lstat()
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode) and (parts or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    return None
                target = PurePosixPath(os.readlink(candidate))
                if target.is_absolute():
                    current = []
                parts = list(target.parts[1:] if target.is_absolute() else target.parts) + parts
                continue
            current.append(name)
        return self.top.joinpath(*current)

    def lstat(self, path: str) -> os.stat_result | None:
        host = self.host_path(path, follow=False)
        return self._real(host, host.lstat()) if host is not None else None

    def is_file(self, path: str) -> bool:
        host = self.host_path(path)
        return host is not None and host.is_file() and not host.is_symlink()

    def read_bytes(self, path: str, limit: int = 16 * 1024 * 1024) -> bytes | None:
        host = self.host_path(path)
        if host is None or not host.is_file() or host.is_symlink():
            return None
        with open(host, "rb") as f:
            return f.read(limit)

    def read_text(self, path: str) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def listdir(self, path: str) -> list[str]:
        host = self.host_path(path)
        if host is None or not host.is_dir() or host.is_symlink():
            return []
        return sorted(p.name for p in host.iterdir())

    def walk(self, path: str = "/") -> Iterator[tuple[str, os.stat_result]]:
        """Every entry under ``path`` (guest path, lstat), never following symlinks."""
        host = self.host_path(path)
        if host is None:
            return
        for dirpath, dirnames, filenames in os.walk(host):
            rel = "/" + Path(dirpath).relative_to(self.top).as_posix()
            rel = "/" if rel == "/." else rel
            for name in sorted(dirnames + filenames):
                entry = Path(dirpath, name)
                yield (rel.rstrip("/") + "/" + name, self._real(entry, entry.lstat()))


@contextlib.contextmanager
def open_root(
    disk: Path, fmt: str, scratch: Path, max_file_bytes: int = MAX_FILE_BYTES
) -> Iterator[tuple[RootFs, DiskInfo]]:
    """Copy the root filesystem of ``disk`` (declared ``fmt``) into ``scratch`` and yield it read-only.

    The scratch copy (a raw conversion and the extracted tree) is removed when the block ends. No
    file of the copy may exceed ``max_file_bytes``, and the copy gets time in proportion to the disk.
    """
    if not disk.is_file():
        raise ArtifactError(f"{disk}: disk image not found")
    virtual_size = inspect_format(disk, fmt)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="audit-", dir=scratch))
    try:
        raw = disk
        if fmt != "raw":
            raw = work / "disk.raw"
            run(
                [find_tool("qemu-img"), "convert", "-f", fmt, "-O", "raw", str(disk), str(raw)],
                limits=Limits(cpu_seconds=1800),
                timeout=1800,
            )
        part = find_root_partition(raw)
        top = work / f"root-{uuid.uuid4().hex[:8]}"
        top.mkdir()
        debugfs = find_tool("debugfs", TOOL_HINTS["debugfs"])
        result = _copy_out(debugfs, raw, part, top, disk, max_file_bytes)
        noise = [line for line in result.stderr.splitlines() if line and not line.startswith("debugfs ")]
        if noise:
            log.debug("debugfs: %s", "; ".join(noise[:10]))
        if not any(top.iterdir()):
            raise ArtifactError(f"{disk}: the root filesystem could not be read ({'; '.join(noise[:3])})")
        meta = read_inodes(debugfs, raw, part, disk, work)
        _make_readable(top)
        esp = _copy_esp(raw, work, disk)
        if raw != disk:
            raw.unlink()  # the extracted trees are all we need; free the space early
        yield RootFs(top, str(disk), esp, meta), DiskInfo(fmt, virtual_size, part)
    finally:
        _remove_tree(work)


def _copy_out(debugfs: str, raw: Path, part: Partition, top: Path, disk: Path, max_file_bytes: int) -> Result:
    """``debugfs rdump`` of the root filesystem, each file capped, the whole bounded in time."""
    timeout = COPY_SECONDS_FLOOR + COPY_SECONDS_PER_GIB * part.size / 1024**3
    argv = [debugfs, "-c", "-R", f"rdump / {top}", f"{raw}?offset={part.start}"]
    try:
        result = run(argv, timeout=timeout, limits=Limits(file_size_bytes=max_file_bytes), check=False)
    except CommandError as e:
        raise ArtifactError(f"{disk}: copying the root filesystem out took over {timeout:.0f}s (audit bound)") from e
    if result.returncode == -signal.SIGXFSZ:
        raise ArtifactError(
            f"{disk}: a file in the root filesystem is larger than {max_file_bytes} bytes "
            "(the audit's per-file cap; sparse files count at their full size)"
        )
    if result.returncode != 0:
        raise ArtifactError(f"{disk}: debugfs could not read the root filesystem (exit {result.returncode})")
    return result


def read_inodes(debugfs: str, raw: Path, part: Partition, disk: Path, work: Path) -> dict[str, Inode]:
    """Mode, uid and gid of every path, as the filesystem records them: ``debugfs ls -p`` by inode
    number, one run per directory level. ``rdump`` cannot give them: it drops set-id and sticky bits,
    and a user who is not root cannot ``chown`` its copy. Directory inodes come from the listing
    itself (``<ino>``), so no guest name is ever quoted into a debugfs command."""
    meta: dict[str, Inode] = {}
    level: dict[int, str] = {2: "/"}  # ext's root directory inode
    seen = {2}
    for _depth in range(MAX_DEPTH):
        if not level:
            return meta
        commands = work / "ls.cmd"
        commands.write_text("".join(f"ls -p <{ino}>\n" for ino in level))
        out = run([debugfs, "-c", "-f", str(commands), f"{raw}?offset={part.start}"], timeout=COPY_SECONDS_FLOOR,
                  check=False).stdout  # fmt: skip
        following: dict[int, str] = {}
        directory, pos = "", 0
        while pos < len(out):
            m = LS_TOKEN.match(out, pos)
            if m is None:  # debugfs's own messages (a corrupt directory): skip the line
                pos = out.find("\n", pos) + 1 or len(out)
                continue
            pos = m.end()
            if m.group(1):
                directory = level.get(int(m.group(1)), "")
                continue
            if m.group(2) and directory == "/" and m.group(6) == ".":
                meta["/"] = Inode(int(m.group(3), 8), int(m.group(4)), int(m.group(5)))
            if not m.group(2) or not directory or m.group(6) in (".", ".."):
                continue
            ino, mode, name = int(m.group(2)), int(m.group(3), 8), m.group(6)
            path = directory.rstrip("/") + "/" + name
            meta[path] = Inode(mode, int(m.group(4)), int(m.group(5)))
            if stat.S_ISDIR(mode) and ino not in seen:
                seen.add(ino)
                following[ino] = path
        if len(meta) > MAX_INODES:
            raise ArtifactError(f"{disk}: the root filesystem lists over {MAX_INODES} entries (the audit's cap)")
        level = following
    raise ArtifactError(f"{disk}: directories nest deeper than {MAX_DEPTH} levels (the audit's cap)")


def _make_readable(top: Path) -> None:
    """Let the auditing user read every copied file and folder (``rdump`` keeps a mode-000 file's mode,
    and a user who is not root could not open it); the guest's real modes are in ``RootFs.meta``."""
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):  # chmod follows links: never touch what a guest link names
                os.chmod(path, 0o700)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def find_esp(raw: Path) -> Partition | None:
    """The EFI system partition of a GPT disk (the first one), None if it has none."""
    size = raw.stat().st_size
    esps = [p for p in partitions(raw) if p.is_esp]
    if esps and esps[0].start + esps[0].size > size:
        raise ArtifactError(f"{raw}: the EFI system partition lies beyond the end of the disk")
    return esps[0] if esps else None


def _copy_esp(raw: Path, work: Path, disk: Path) -> RootFs | None:
    """Copy the ESP's files out with mtools (userspace FAT reader, no mount), bounded by the partition's
    size and in time; None for a disk without an ESP."""
    esp = find_esp(raw)
    if esp is None:
        return None
    top = work / f"esp-{uuid.uuid4().hex[:8]}"
    top.mkdir()
    image = f"{raw}@@{esp.start}"
    env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}
    mcopy = find_tool("mcopy", TOOL_HINTS["mcopy"])
    listing = run([find_tool("mdir", TOOL_HINTS["mcopy"]), "-b", "-i", image, "::/"], env=env, check=False,
                  timeout=ESP_COPY_SECONDS)  # fmt: skip
    origin = f"{disk} (EFI system partition {esp.number})"
    if listing.returncode == 0 and not listing.stdout.strip():
        return RootFs(top, origin)  # an empty ESP (mcopy would call "::/*" not found)
    if listing.returncode != 0:
        raise ArtifactError(f"{disk}: the EFI system partition (partition {esp.number}) is not a readable FAT "
                            f"filesystem: {(listing.stderr or listing.stdout).strip().splitlines()[:1]}")  # fmt: skip
    try:
        result = run(
            [mcopy, "-s", "-n", "-p", "-m", "-Q", "-i", image, "::/*", str(top)],
            env=env,
            timeout=ESP_COPY_SECONDS,
            limits=Limits(file_size_bytes=max(esp.size, 1)),
            check=False,
        )
    except CommandError as e:
        raise ArtifactError(f"{disk}: copying the EFI system partition took over {ESP_COPY_SECONDS:.0f}s") from e
    if result.returncode != 0:
        raise ArtifactError(f"{disk}: mcopy could not read the EFI system partition (exit {result.returncode}): "
                            f"{result.stderr.strip().splitlines()[:1]}")  # fmt: skip
    return RootFs(top, origin)


@contextlib.contextmanager
def folder_copy(
    disk: Path, fmt: str, scratch: Path, folder: str, seconds: float, max_file_bytes: int = 64 * 1024**2
) -> Iterator[Path]:
    """One folder of a disk image's root filesystem (``/usr/share/doc``) copied out read-only into a
    partial tree laid out as in the guest (qemu-img + ``debugfs -c rdump``: no mount, no root); yields
    that tree's top. Each file is capped at ``max_file_bytes``, the copy at ``seconds``; the scratch
    copy (raw conversion included) is removed when the block ends."""
    inspect_format(disk, fmt)  # the declared format, never a guess (a backing file could read host files)
    scratch.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="copy-", dir=scratch))
    try:
        raw = disk
        if fmt != "raw":
            raw = work / "disk.raw"
            argv = [find_tool("qemu-img"), "convert", "-f", fmt, "-O", "raw", str(disk), str(raw)]
            run(argv, limits=Limits(cpu_seconds=1800), timeout=1800)
        part = find_root_partition(raw)
        inside = PurePosixPath(folder)
        top = work / "root"
        (top / inside.parent.relative_to("/")).mkdir(parents=True)
        debugfs = find_tool("debugfs", TOOL_HINTS["debugfs"])
        argv = [
            debugfs,
            "-c",
            "-R",
            f"rdump {inside} {top / inside.parent.relative_to('/')}",
            f"{raw}?offset={part.start}",
        ]
        try:
            result = run(argv, timeout=seconds, limits=Limits(file_size_bytes=max_file_bytes), check=False)
        except CommandError as e:
            raise ArtifactError(f"{disk}: copying {inside} out took over {seconds:.0f}s") from e
        if result.returncode != 0 or not (top / inside.relative_to("/")).is_dir():
            raise ArtifactError(f"{disk}: debugfs could not read {inside} (exit {result.returncode})")
        if raw != disk:
            raw.unlink()  # the copy is made: free the space while the caller reads it
        yield top
    finally:
        _remove_tree(work)


def _remove_tree(path: Path) -> None:
    """rmtree that also copes with the read-only folders an extracted guest tree has."""

    def _fix(func: object, p: str, exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(Path(p).parent, 0o700)
            os.chmod(p, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                os.unlink(p)

    shutil.rmtree(path, onerror=_fix)
