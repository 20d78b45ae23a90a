"""Fixtures for the build tests: a scratch project (templates, provisioners) and a loopback HTTP server."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pipeline.settings import Settings, load_settings


@pytest.fixture()
def scratch_project(tmp_path: Path, project_root: Path) -> Settings:
    """Settings over a copy of the project's appliances and provisioners, writing only under tmp_path."""
    root = tmp_path / "project"
    shutil.copytree(project_root / "packer_templates", root / "packer_templates")
    shutil.copytree(project_root / "provisioners", root / "provisioners")
    config = yaml.safe_load((project_root / "invoke.yaml").read_text())["vmi"]
    return load_settings(config, root, environ={})


@pytest.fixture()
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
