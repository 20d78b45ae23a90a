"""Issue 12 item 4: download links follow the address the catalogue is served on; loopback lists refused."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uvicorn

from pipeline.catalogue.app import create_app
from pipeline.catalogue.contract import ImageInfo, Integrity
from pipeline.catalogue.db import migrate
from pipeline.catalogue.pages.links import download_url, is_loopback_url
from pipeline.catalogue.server import demo_settings
from pipeline.catalogue.settings import CatalogueSettings
from pipeline.errors import ConfigError
from tests.catalogue.conftest import PUBLIC, LiveServer, _free_port

ROOT = Path(__file__).resolve().parents[2]


def _image(uri: str) -> ImageInfo:
    return ImageInfo(
        appliance="a", version="1", identifier="id", uri=uri, format="qcow2", hypervisor="QEMU", size=1,
        sha512="0", sha256="0", arch="x86_64", os_family="linux", os_name="Debian", os_version="12",
        min_cores=1, recommended_cores=1, min_ram_mb=1, recommended_ram_mb=1, title="t", integrity=Integrity.VERIFIED,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("public", "repo_url", "uri", "expected"),
    [
        # the catalogue's own /repo: a key, rebuilt on the base asked for
        (PUBLIC, f"{PUBLIC}/repo", f"{PUBLIC}/repo/a/1/a.qcow2", "http://cat:8093/repo/a/1/a.qcow2"),
        ("https://cat.example.org", "https://cat.example.org/repo", "https://cat.example.org/repo/k", "http://cat:8093/repo/k"),
        # a separate file server, S3 and OCI locations stay as registered
        ("https://cat.example.org", "https://files.example.org/repo", "https://files.example.org/repo/k", "https://files.example.org/repo/k"),
        (PUBLIC, f"{PUBLIC}/repo", "https://s3.example.org/bucket/k", "https://s3.example.org/bucket/k"),
        (PUBLIC, f"{PUBLIC}/repo", "oci://registry.example.org/vm/a:1", None),
    ],
)  # fmt: skip
def test_download_url(tmp_path: Path, public: str, repo_url: str, uri: str, expected: str | None) -> None:
    settings = CatalogueSettings("sqlite://", public, tmp_path, repo_url)
    assert download_url(settings, _image(uri), "http://cat:8093") == expected
    file_uri = (tmp_path / "a" / "b.ova").as_uri()
    assert download_url(settings, _image(file_uri), "http://cat:8093") == "http://cat:8093/repo/a/b.ova"


def test_loopback_detection() -> None:
    assert all(
        map(is_loopback_url, ["http://127.0.0.1:8080", "http://localhost/x", "http://[::1]:80", "http://127.1.2.3"])
    )
    assert not any(map(is_loopback_url, ["https://cat.example.org", "http://10.0.0.1:8080", "http://0.0.0.0:8080"]))


def test_signing_for_a_loopback_base_needs_local_demo(tmp_path: Path) -> None:
    cat = CatalogueSettings("sqlite://", PUBLIC, tmp_path, f"{PUBLIC}/repo", tmp_path / "k", tmp_path / "c")
    with pytest.raises(ConfigError) as err:
        demo_settings(cat, "127.0.0.1", 8093, local_demo=False)
    assert str(err.value).startswith(
        "vmi.catalogue_public_url: http://127.0.0.1:8080 is a loopback address: image lists signed with it"
    )
    assert demo_settings(cat, "127.0.0.1", 8093, local_demo=True).public_url == "http://127.0.0.1:8093"
    assert demo_settings(cat, "0.0.0.0", 8093, local_demo=True).public_url == "http://127.0.0.1:8093"
    unsigned = dataclasses.replace(cat, signing_key=None, signing_cert=None)
    assert demo_settings(unsigned, "127.0.0.1", 8093, local_demo=False) == unsigned
    public = dataclasses.replace(cat, public_url="https://cat.example.org")
    assert demo_settings(public, "127.0.0.1", 8093, local_demo=False) == public


def test_invoke_serve_refuses_a_loopback_base_with_a_signing_key(tmp_path: Path, dev_ca: Path) -> None:
    env = {
        **os.environ,
        "VMI_CATALOGUE": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMI_CATALOGUE_PUBLIC_URL": "http://127.0.0.1:8080",
        "VMI_REPOSITORY": f"file://{tmp_path / 'repo'}",
        "VMI_REPOSITORY_PUBLIC_URL": "http://127.0.0.1:8080/repo",
        "VMI_SIGNING_KEY": str(dev_ca / "endorser.key"),
        "VMI_SIGNING_CERT": str(dev_ca / "endorser.pem"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "serve", "--port", str(_free_port())],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "error: vmi.catalogue_public_url: http://127.0.0.1:8080 is a loopback address" in proc.stderr
    assert "or pass --local-demo" in proc.stderr


@pytest.fixture
def moved_server(database_url: str, repository: Path, dev_ca: Path) -> Iterator[LiveServer]:
    """Published for http://127.0.0.1:8080 (the default), served on another port: the issue's case."""
    port = _free_port()
    settings = CatalogueSettings(
        database_url, PUBLIC, repository, f"{PUBLIC}/repo", dev_ca / "endorser.key", dev_ca / "endorser.pem"
    )
    migrate(database_url)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the catalogue did not start"
        time.sleep(0.05)
    yield LiveServer(f"http://127.0.0.1:{port}", settings)
    server.should_exit = True
    thread.join(10)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_links_follow_the_port_the_catalogue_is_served_on(moved_server: LiveServer) -> None:
    from tests.catalogue.test_pages import _seed

    payload = _seed(moved_server)
    version = requests.get(f"{moved_server.url}/api/v1/appliances/debian-12/versions/2026.11.22", timeout=10).json()
    assert {i["uri"] for i in version["images"]} == {i.uri for i in payload.images}  # registered for :8080
    for image in version["images"]:
        link = image["links"]["download"]
        assert link.startswith(moved_server.url + "/repo/debian-12/2026.11.22/")
        assert hashlib.sha512(requests.get(link, timeout=10).content).hexdigest() == image["sha512"]
    page = requests.get(f"{moved_server.url}/appliances/debian-12/2026.11.22", timeout=10).text
    assert f'href="{moved_server.url}/repo/debian-12/2026.11.22/' in page
    assert 'href="http://127.0.0.1:8080/repo' not in page


def test_invoke_serve_local_demo_names_the_served_address(tmp_path: Path, dev_ca: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "VMI_CATALOGUE": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMI_CATALOGUE_PUBLIC_URL": "http://127.0.0.1:8080",
        "VMI_REPOSITORY": f"file://{tmp_path / 'repo'}",
        "VMI_REPOSITORY_PUBLIC_URL": "http://127.0.0.1:8080/repo",
        "VMI_SIGNING_KEY": str(dev_ca / "endorser.key"),
        "VMI_SIGNING_CERT": str(dev_ca / "endorser.pem"),
    }
    (tmp_path / "repo").mkdir()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "serve", "--local-demo", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                page = requests.get(f"http://127.0.0.1:{port}/vos", timeout=10)
                if page.ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"local demo: signed lists and links name http://127.0.0.1:{port}" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
