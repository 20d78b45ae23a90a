"""File-system hardening checks: set-id files, world-writable paths, owners and modes of the files that
hold secrets or decide who may log in, files nobody owns.

Modes and owners are the guest filesystem's own (``RootFs.meta``, read with ``debugfs ls -p``), so an
audit run by a user who is not root sees what root would. Sources: CIS Debian Linux benchmark §6.1
(file permissions), Debian's own defaults (shadow 0640 root:shadow, sudoers 0440 root:root), the
set-id files a minimal Debian 12/13 installs (research: security-and-reliability.md §1.4).
"""

from __future__ import annotations

import stat

from pipeline.audit.disk import UNKNOWN_ID
from pipeline.audit.policy import SKIP_TREES, AuditContext, Finding, verdict

# What Debian's packages install set-id (merged /usr: the paths below /usr). A set-id file must be
# one of these with at most these special bits; anything else is a backdoor until proven otherwise.
SETID_ALLOWED = {
    "/usr/bin/passwd": "4755", "/usr/bin/chfn": "4755", "/usr/bin/chsh": "4755", "/usr/bin/gpasswd": "4755",
    "/usr/bin/newgrp": "4755", "/usr/bin/su": "4755", "/usr/bin/mount": "4755", "/usr/bin/umount": "4755",
    "/usr/bin/sudo": "4755", "/usr/bin/fusermount": "4755", "/usr/bin/fusermount3": "4755",
    "/usr/bin/pkexec": "4755", "/usr/lib/polkit-1/polkit-agent-helper-1": "4755",
    "/usr/lib/dbus-1.0/dbus-daemon-launch-helper": "4754", "/usr/lib/openssh/ssh-keysign": "4755",
    "/usr/bin/chage": "2755", "/usr/bin/expiry": "2755", "/usr/sbin/unix_chkpwd": "2755",
    "/usr/bin/ssh-agent": "2755", "/usr/bin/crontab": "2755", "/usr/bin/wall": "2755",
    "/usr/bin/write.ul": "2755", "/usr/bin/bsd-write": "2755", "/usr/bin/dotlockfile": "2755",
    "/usr/bin/plocate": "2755", "/usr/sbin/postdrop": "2555", "/usr/sbin/postqueue": "2555",
    "/usr/sbin/exim4": "4755", "/usr/lib/x86_64-linux-gnu/utempter/utempter": "2755",
    "/usr/lib/aarch64-linux-gnu/utempter/utempter": "2755",
}  # fmt: skip
SETID_BITS = stat.S_ISUID | stat.S_ISGID


def _usr(path: str) -> str:
    """A path in merged-/usr form (/bin/su -> /usr/bin/su), as the allow-list spells it."""
    return "/usr" + path if path.startswith(("/bin/", "/sbin/", "/lib/")) else path


def setid_files(ctx: AuditContext) -> Finding:
    problems, found = [], []
    for path, st in ctx.entries:
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & SETID_BITS:
            continue
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        kind = "setuid" if st.st_mode & stat.S_ISUID else "setgid"
        allowed = SETID_ALLOWED.get(_usr(path))
        if allowed is None:
            problems.append(f"{path}: {kind} (mode {mode}, uid {st.st_uid}) is not on Debian's set-id allow-list")
        elif int(mode, 8) & ~int(allowed, 8):
            problems.append(f"{path}: mode {mode} has more bits than Debian's {allowed}")
        else:
            found.append(path)
    return verdict(problems, f"{len(found)} set-id files, all on Debian's allow-list: {', '.join(found)}")


def world_writable(ctx: AuditContext) -> Finding:
    """No world-writable file; a world-writable folder (/tmp, /var/tmp, /run/lock) has the sticky bit."""
    problems, sticky = [], []
    for path, st in ctx.entries:
        if path.startswith(SKIP_TREES) or not st.st_mode & stat.S_IWOTH:
            continue
        mode = f"{stat.S_IMODE(st.st_mode):04o}"
        if stat.S_ISDIR(st.st_mode):
            if st.st_mode & stat.S_ISVTX:
                sticky.append(path)
            else:
                problems.append(f"{path}: world-writable folder without the sticky bit (mode {mode})")
        elif stat.S_ISREG(st.st_mode):
            problems.append(f"{path}: world-writable file (mode {mode})")
    return verdict(problems, "no world-writable files; sticky world-writable folders: " + ", ".join(sticky))


def _owned(ctx: AuditContext, path: str, max_mode: int, groups: tuple[str, ...]) -> tuple[str | None, str]:
    """(problem or None, evidence) for a file that must belong to root and one of ``groups`` by name,
    with no permission bit beyond ``max_mode``."""
    st = ctx.root.lstat(path)
    assert st is not None
    mode = stat.S_IMODE(st.st_mode)
    group = ctx.group_names.get(st.st_gid, str(st.st_gid))
    line = f"{path}: mode {mode:04o}, owner {st.st_uid}:{group}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path}: is a symlink (must be a file)", line
    if st.st_uid != 0:
        return f"{line}: must be owned by root (uid 0)", line
    if group not in groups:
        return f"{line}: group must be {' or '.join(groups)}", line
    if mode & ~max_mode:
        return f"{line}: must be at most {max_mode:04o}", line
    return None, line


def _check_owned(ctx: AuditContext, paths: list[str], max_mode: int, groups: tuple[str, ...], what: str) -> Finding:
    problems, evidence = [], []
    for path in paths:
        if ctx.root.lstat(path) is None:
            continue
        problem, line = _owned(ctx, path, max_mode, groups)
        evidence.append(line)
        if problem:
            problems.append(problem)
    return verdict(problems, "; ".join(evidence) or f"no {what}")


def shadow_modes(ctx: AuditContext) -> Finding:
    paths = ["/etc/shadow", "/etc/gshadow"]
    problems = [f"{p} is missing" for p in paths[:1] if ctx.root.lstat(p) is None]
    found = _check_owned(ctx, paths, 0o640, ("root", "shadow"), "shadow files")
    return verdict(problems + ([] if found.ok else list(found.evidence)), "; ".join(found.evidence))


def sudoers_modes(ctx: AuditContext) -> Finding:
    paths = ["/etc/sudoers"] + [f"/etc/sudoers.d/{n}" for n in ctx.root.listdir("/etc/sudoers.d")]
    found = _check_owned(ctx, paths, 0o440, ("root",), "sudoers files (sudo not installed)")
    folder = ctx.root.lstat("/etc/sudoers.d")
    if folder is not None and stat.S_IMODE(folder.st_mode) & 0o022:
        return Finding(False, (f"/etc/sudoers.d: mode {stat.S_IMODE(folder.st_mode):04o} is group/world-writable",))
    return found


def sshd_config_modes(ctx: AuditContext) -> Finding:
    """sshd's configuration is root's alone to change (any user who could would own every login)."""
    paths = ["/etc/ssh/sshd_config"] + [
        f"/etc/ssh/sshd_config.d/{n}" for n in ctx.root.listdir("/etc/ssh/sshd_config.d")
    ]
    return _check_owned(ctx, paths, 0o644, ("root",), "sshd configuration (openssh-server not installed)")


def unowned_files(ctx: AuditContext) -> Finding:
    """Every path belongs to a user in /etc/passwd and a group in /etc/group (a stray uid is a build
    account's leftover, and whoever later gets that uid owns the file)."""
    users = {int(r[2]) for r in ctx.passwd if r[2].isdigit()}
    groups = set(ctx.group_names)
    problems = []
    for path, st in ctx.entries:
        if st.st_uid == UNKNOWN_ID or st.st_gid == UNKNOWN_ID:
            problems.append(f"{path}: owner not readable from the filesystem")
        elif st.st_uid not in users:
            problems.append(f"{path}: uid {st.st_uid} is not in /etc/passwd")
        elif st.st_gid not in groups:
            problems.append(f"{path}: gid {st.st_gid} is not in /etc/group")
    return verdict(problems[:50], f"all {len(ctx.entries)} paths belong to users and groups the image defines")
