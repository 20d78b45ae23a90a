"""`invoke serve` end to end: migrates an empty database, prints a bootstrap token once, serves."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from tests.catalogue.conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]


def test_invoke_serve_bootstraps_an_admin_token(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "repo" / "a").mkdir(parents=True)
    (tmp_path / "repo" / "a" / "f.txt").write_text("hello")
    env = {
        **os.environ,
        "VMI_CATALOGUE": f"sqlite:///{tmp_path / 'cat.db'}",
        "VMI_CATALOGUE_PUBLIC_URL": url,
        "VMI_REPOSITORY": f"file://{tmp_path / 'repo'}",
        "VMI_REPOSITORY_PUBLIC_URL": f"{url}/repo",
    }
    env.pop("VMI_SIGNING_KEY", None)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "serve", "--port", str(port), "--create-token", "root:admin"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/api/v1/openapi.json", timeout=10).ok:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        found = re.search(r"API token for root \(shown once, expires (\S+ \S+) UTC\): (vmi_\S+)", log.read_text())
        assert found, log.read_text()
        expires = datetime.strptime(found[1], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        assert timedelta(days=89) < expires - datetime.now(UTC) <= timedelta(days=90)  # the default lifetime
        me = requests.get(f"{url}/api/v1/users/me", headers={"Authorization": f"Bearer {found[2]}"}, timeout=5)
        assert me.json()["role"] == "admin"
        assert requests.get(f"{url}/repo/a/f.txt", timeout=5).text == "hello"
        assert "no VMI_SIGNING_KEY" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(20)
