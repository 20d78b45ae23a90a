"""Schema-driven fuzzing of the whole API with Schemathesis against the service on loopback.

The run is seeded with real data (an appliance, a version with a verified image, an audit, an
endorsement and its signed list) and authenticated as an admin, so generated requests reach the
use cases, not only the 401/404 paths. Any 5xx, any response that breaks the documented schema,
status codes or content types fails the test; the summary line gives the figures.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import AppliancePayload, VersionPayload
from pipeline.catalogue.db import make_engine, session_factory
from pipeline.catalogue.models import Role
from pipeline.catalogue.schemas import AuditIn
from pipeline.catalogue.uow import UnitOfWork
from tests.catalogue.conftest import PASSING_AUDIT, LiveServer
from tests.catalogue.test_http import _image

CHECKS = (
    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth,"
    "security_headers"  # ours: tests/catalogue/schemathesis_hooks.py
)
ROOT = Path(__file__).resolve().parents[2]


def _seed(server: LiveServer) -> str:
    engine = make_engine(server.settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    auth.ensure_user(uow, "admin", "admin@example.org", Role.ADMIN)
    token = auth.issue_token(uow, "admin", "admin", "fuzz").token
    services.ensure_appliance(
        uow,
        "admin",
        AppliancePayload(name="debian-12", title="Debian 12", description="baseline", vos=("vo.example.org",)),
    )
    payload = VersionPayload(
        appliance="debian-12", version="1.0", notes="seed", images=(_image(server, "1.0", "qcow2"),)
    )
    services.register_version(uow, "admin", payload, server.settings)
    services.store_audit(uow, "admin", "debian-12", "1.0", AuditIn.model_validate(PASSING_AUDIT))
    from pipeline.catalogue.inprocess import make_context

    endorsements.endorse(uow, "admin", "debian-12", "1.0", "vo.example.org", make_context(server.settings))
    engine.dispose()
    return token


@pytest.mark.slow
def test_schemathesis_finds_no_server_errors(live_server: LiveServer, tmp_path: Path) -> None:
    token = _seed(live_server)
    argv = [
        str(Path(sys.executable).parent / "schemathesis"),
        "run",
        f"{live_server.url}/api/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {token}",
        "--checks",
        CHECKS,
        "--max-examples",
        "15",
        "--mode",
        "all",  # schema-valid requests and schema-violating ones (wrong types, huge numbers, odd strings)
        "--seed",
        "20261122",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--exclude-path-regex",
        "^/repo/",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "fuzz.xml"),
        "--no-color",
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.catalogue.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=1200, check=False, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    figures = re.search(r"(\d+) generated, (\d+) passed.*", proc.stdout)
    sys.stdout.write(f"schemathesis: {figures[0] if figures else 'no summary'}\n")  # shown with -s
    assert figures and figures[1] == figures[2] and int(figures[1]) > 500, proc.stdout[-2000:]
