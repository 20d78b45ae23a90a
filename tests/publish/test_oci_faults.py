"""A push to a registry killed at any point, or hit by 5xx replies, never leaves a tag on a partial
artifact, and a rerun finishes it. `invoke publish` runs in a child process through the loopback
fault proxy in front of a plain-HTTP docker-registry (``--insecure``: loopback only); the proxy holds
the chosen request and the test SIGKILLs the child there. skopeo reads the registry."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.errors import UploadError
from pipeline.publish import publish_version
from pipeline.repository import UploadTuning
from pipeline.settings import load_settings

from .conftest import ROOT, MiB, make_packaged_version, make_settings, run_invoke, settings_env
from .faultproxy import FaultProxy, Rule
from .oci_registry import Registry, start_registry
from .test_publish import all_versions

pytestmark = pytest.mark.slow

LONG, ROLLING = "12-2026.11.22", "12"
WAIT = 240
Spawn = Callable[[list[str], dict[str, str], Path], subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from start_registry(tmp_path_factory.mktemp("registry-plain"), tls_and_auth=False)


@pytest.fixture
def oci_proxy(plain_registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(f"http://{plain_registry.host}").start()
    yield p
    p.stop()


def patch_chunk(method: str, target: str) -> bool:
    return method == "PATCH" and "/blobs/uploads/" in target


def put_manifest(reference: str = "") -> Callable[[str, str], bool]:
    return lambda method, target: method == "PUT" and f"/manifests/{reference}" in target


def env_for(tmp_path: Path, proxy: FaultProxy) -> tuple[dict[str, str], str]:
    project = f"vmi{uuid.uuid4().hex[:10]}"
    settings = make_settings(tmp_path, f"oci://{proxy.url.removeprefix('http://')}/{project}")
    make_packaged_version(settings.output_dir, qcow2_size=11 * MiB)
    env = {**settings_env(settings), "HOME": str(tmp_path / "home")}
    for var in ("VMI_OCI_USERNAME", "VMI_OCI_PASSWORD", "VMI_OCI_CA", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG"):
        env.pop(var, None)
    return env, f"{project}/debian-12"


TUNING = UploadTuning(backoff=0.05)
PUBLISH = ["publish", "--appliance", "debian-12", "--insecure"]


def rolling_tag(method: str, target: str) -> bool:
    return method == "PUT" and target.endswith(f"/manifests/{ROLLING}")


@pytest.mark.parametrize(
    ("point", "match", "after", "long_tag_left"),
    [
        ("during the blob upload", patch_chunk, 0, False),
        ("after the blobs, before any manifest", put_manifest(), 0, False),
        ("before the rolling tag", rolling_tag, 0, True),
    ],
)
def test_a_killed_push_leaves_no_tag_on_a_partial_artifact_and_a_rerun_finishes(
    tmp_path: Path,
    plain_registry: Registry,
    oci_proxy: FaultProxy,
    spawn: Spawn,
    point: str,
    match: Callable[[str, str], bool],
    after: int,
    long_tag_left: bool,
) -> None:
    env, repo = env_for(tmp_path, oci_proxy)
    rule = Rule(match, "hold", after=after)
    oci_proxy.add(rule)
    child = spawn(PUBLISH, env, tmp_path / "killed.log")
    assert rule.reached.wait(WAIT), (tmp_path / "killed.log").read_text()
    child.kill()
    child.wait(30)
    tags = plain_registry.tags(repo)  # while the held request is still held: it never reached the registry
    if long_tag_left:
        assert ROLLING not in tags and LONG in tags  # the long tag, proved; the rolling one not moved yet
        long_manifest = json.loads(plain_registry.inspect_raw(f"{repo}:{LONG}"))
        assert len(long_manifest["layers"]) == 1
    else:
        assert tags == [], point
    rule.release.set()  # the proxy forwards it now, as if it reached the registry just before the kill

    again = run_invoke(PUBLISH, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "blobs, manifests and tags read back and verified" in again.stdout
    tags = plain_registry.tags(repo)
    assert LONG in tags and ROLLING in tags
    assert plain_registry.inspect_raw(f"{repo}:{LONG}") == plain_registry.inspect_raw(f"{repo}:{ROLLING}")


def test_a_5xx_on_the_blob_upload_is_retried_from_where_the_registry_got(
    tmp_path: Path, plain_registry: Registry, oci_proxy: FaultProxy
) -> None:
    env, repo = env_for(tmp_path, oci_proxy)
    failed = oci_proxy.add(Rule(patch_chunk, "fail", status=503))
    result = publish_version(load_settings({}, ROOT, env), "debian-12", tuning=TUNING, insecure=True)
    assert failed.acted == 1
    assert oci_proxy.statuses(lambda m, t: m == "PATCH") == [503, 202, 202]  # the qcow2 twice, then the OVA
    assert oci_proxy.statuses(lambda m, t: m == "GET" and "/blobs/uploads/" in t) == [204]  # asked how far it got
    assert result.pushes and LONG in plain_registry.tags(repo)


def test_a_registry_that_keeps_failing_manifests_gets_no_tag_and_nothing_registered(
    tmp_path: Path, plain_registry: Registry, oci_proxy: FaultProxy
) -> None:
    env, repo = env_for(tmp_path, oci_proxy)
    oci_proxy.add(Rule(put_manifest(), "fail", times=1000, status=500, code="InternalError"))
    settings = load_settings({}, ROOT, env)
    with pytest.raises(UploadError) as e:
        publish_version(settings, "debian-12", tuning=TUNING, insecure=True)
    assert f"PUT manifest {repo}:sha256:" in str(e.value) and "HTTP 500" in str(e.value)
    assert plain_registry.tags(repo) == []
    assert all_versions(settings) == []


class CuttingProxy:
    """A raw TCP relay that forwards the first PATCH's head and ``keep`` bytes of its body, then drops
    both connections: the registry got part of the blob, the client sees a reset mid-upload."""

    def __init__(self, upstream: str, keep: int) -> None:
        self.upstream = upstream.split(":")
        self.keep = keep
        self.cut = False
        self.client_bytes = bytearray()  # everything clients sent (heads are counted in tests)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.upstream[0], int(self.upstream[1])))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        seen = bytearray()
        try:
            while data := src.recv(65536):
                if from_client:
                    self.client_bytes += data
                    seen += data
                    start = seen.find(b"PATCH ")
                    if not self.cut and start >= 0 and b"\r\n\r\n" in seen[start:]:
                        body_at = seen.index(b"\r\n\r\n", start) + 4
                        if len(seen) - body_at >= self.keep:
                            self.cut = True
                            dst.sendall(data[: len(data) - (len(seen) - body_at - self.keep)])
                            time.sleep(0.5)  # let the registry write what it got
                            raise OSError("cut")
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.server.close()


def test_a_connection_cut_mid_blob_starts_the_blob_again_in_a_new_session(
    tmp_path: Path, plain_registry: Registry
) -> None:
    cutter = CuttingProxy(plain_registry.host, keep=3 * MiB + 17)
    try:
        project = f"vmi{uuid.uuid4().hex[:10]}"
        settings = make_settings(tmp_path, f"oci://{cutter.host}/{project}")
        packaged = make_packaged_version(settings.output_dir, qcow2_size=11 * MiB)
        result = publish_version(settings, "debian-12", tuning=TUNING, insecure=True)
        assert cutter.cut
        heads = bytes(cutter.client_bytes)
        # distribution 2.8 drops a session whose PATCH broke off (its status answers 404): a new session
        # from byte 0, never an append to bytes of unknown state
        # the disk twice, the empty config, the SBOM and the OVA once each
        assert heads.count(b"POST /v2/") == 5
        assert heads.count(b"PATCH /v2/") == 3
        assert heads.count(f"Content-Range: 0-{11 * MiB - 1}".encode()) == 2
        pulled = tmp_path / "pulled"
        plain_registry.curl_blob(f"{project}/debian-12", "sha256:" + packaged.manifest.artifact("qcow2").sha256, pulled)
        assert hashlib.sha256(pulled.read_bytes()).hexdigest() == packaged.manifest.artifact("qcow2").sha256
        assert result.pushes
    finally:
        cutter.close()
