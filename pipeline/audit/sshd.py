"""sshd's effective settings computed from the guest's files, the way sshd reads them.

sshd keeps the FIRST value it reads for most keywords, ``Include`` is expanded in place (globs in
lexical order, relative to /etc/ssh), and a ``Match`` block (until the next ``Match`` or the end of
the file holding it) overrides the global value for the connections it matches. We cannot run the
guest's ``sshd -T``, so this parses; the audit treats any Match block that weakens a setting as a
failure, since some connection would get it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

from pipeline.audit.disk import RootFs

CONFIG = "/etc/ssh/sshd_config"
MAX_DEPTH = 16

ALIASES = {"challengeresponseauthentication": "kbdinteractiveauthentication"}

# OpenSSH 9.2 (Debian 12) built-in defaults, for keywords the files never set
DEFAULTS = {
    "permitrootlogin": "prohibit-password",
    "passwordauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
    "permitemptypasswords": "no",
    "hostbasedauthentication": "no",
    "permituserenvironment": "no",
}


@dataclass(frozen=True)
class Setting:
    value: str
    where: str  # file:line, or "built-in default"


@dataclass
class SshdConfig:
    global_: dict[str, Setting] = field(default_factory=dict)
    matches: list[tuple[str, str, Setting]] = field(default_factory=list)  # (criteria, keyword, setting)
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def effective(self, keyword: str) -> Setting:
        return self.global_.get(keyword) or Setting(DEFAULTS.get(keyword, ""), "built-in default")

    def match_overrides(self, keyword: str) -> list[tuple[str, Setting]]:
        return [(criteria, s) for criteria, k, s in self.matches if k == keyword]


_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+|$)(.*)$")


def _split(line: str) -> tuple[str, str] | None:
    """(lower-case keyword, value) of a config line; None for blanks and comments."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    m = _LINE.match(text)
    if m is None:
        return text.lower(), ""
    key, value = m.groups()
    value = value.split("#", 1)[0].strip()  # trailing comment: OpenSSH >= 8.7 stops at an unquoted #
    return key.lower(), value.strip('"')


def _glob(root: RootFs, pattern: str) -> list[str]:
    """Expand an Include glob inside the guest (only the last component may be a pattern, as in practice)."""
    if not pattern.startswith("/"):
        pattern = "/etc/ssh/" + pattern
    folder, _, name = pattern.rpartition("/")
    if not any(ch in name for ch in "*?["):
        return [pattern] if root.is_file(pattern) else []
    return [f"{folder}/{n}" for n in root.listdir(folder or "/") if fnmatch.fnmatchcase(n, name)]


def read_sshd_config(root: RootFs, path: str = CONFIG) -> SshdConfig | None:
    """The parsed configuration, or None when the guest has no sshd_config (no openssh-server)."""
    if root.read_text(path) is None:
        return None
    config = SshdConfig()
    _read(root, path, config, 0, None)
    return config


def _read(root: RootFs, path: str, config: SshdConfig, depth: int, inherited: str | None) -> None:
    text = root.read_text(path)
    if text is None:
        return
    config.files.append(path)
    criteria = inherited  # the Match block this file was included from, if any
    for number, line in enumerate(text.splitlines(), 1):
        parsed = _split(line)
        if parsed is None:
            continue
        key, value = parsed
        key = ALIASES.get(key, key)
        where = f"{path}:{number}"
        if key == "match":
            criteria = None if value.lower() == "all" else value
            continue
        if key == "include":
            if depth >= MAX_DEPTH:
                config.problems.append(f"{where}: Include nested deeper than {MAX_DEPTH}")
                continue
            for pattern in value.split():
                for included in sorted(_glob(root, pattern)):
                    _read(root, included, config, depth + 1, criteria)
            continue
        setting = Setting(value.split()[0].lower() if value else "", where)
        if criteria is not None:
            config.matches.append((criteria, key, setting))
        elif key not in config.global_:  # first value wins
            config.global_[key] = setting
