"""The build's content-addressed inputs digest, exactly as ``invoke build`` computes its cache key, so
that "inputs changed" here means "a build now would not be up to date".

The digest includes the versions of Packer, QEMU, mmdebstrap...; asking them takes over a second
(Packer and mmdebstrap are slow to start), which would dominate a daily no-op decision. A tool's
version only changes when its binary does, so the answers are kept in ``<cache_dir>/rebuild/`` under
a fingerprint of every tool binary the pipeline knows (path, size, mtime, inode) and of the build
code that chooses which tools to ask; any change there asks again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import pipeline.builder
from pipeline.appliance import Appliance
from pipeline.builder import build_inputs, tool_versions
from pipeline.fsutil import write_text_atomic
from pipeline.rebuild.plan import InputsOf
from pipeline.run import TOOL_HINTS
from pipeline.settings import Settings


def tools_fingerprint() -> str:
    """Changes whenever a tool binary or the build's choice of tools changes."""
    parts = [hashlib.sha256(inspect.getsource(pipeline.builder).encode()).hexdigest()]
    for name in sorted(TOOL_HINTS):
        found = shutil.which(name)
        if found is None:
            parts.append(f"{name}:-")
            continue
        st = os.stat(found)
        parts.append(f"{name}:{os.path.realpath(found)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def current_inputs(settings: Settings) -> InputsOf:
    """``appliance -> (digest, components)`` from ``pipeline.builder.build_inputs``."""
    cache_file = settings.cache_dir / "rebuild" / "tool-versions.json"
    fingerprint = tools_fingerprint()
    known = _load(cache_file, fingerprint)

    def inputs_of(appliance: Appliance) -> tuple[str, Mapping[str, str]]:
        kind = appliance.base.kind.value
        if kind not in known:
            known[kind] = tool_versions(appliance)
            write_text_atomic(cache_file, json.dumps({"fingerprint": fingerprint, "tools": known}, sort_keys=True))
        return build_inputs(settings, appliance, dict(known[kind]))

    return inputs_of


def _load(path: Path, fingerprint: str) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint or not isinstance(data.get("tools"), dict):
        return {}
    return {str(k): {str(t): str(v) for t, v in tools.items()} for k, tools in data["tools"].items()}
