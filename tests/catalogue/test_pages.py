"""The web pages in headless Chromium (Debian's, driven by Playwright): browse, download, verify."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pipeline.catalogue import endorsements, services
from pipeline.catalogue.contract import AppliancePayload, PackageInfo, VersionPayload
from pipeline.catalogue.db import make_engine, session_factory
from pipeline.catalogue.models import Role
from pipeline.catalogue.uow import UnitOfWork
from tests.catalogue.conftest import WAIVED_AUDIT, LiveServer
from tests.catalogue.test_http import _image

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/setup does)")
    os.environ.setdefault("TMPDIR", str(tmp_path_factory.mktemp("chromium")))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


def _seed(server: LiveServer) -> VersionPayload:
    from pipeline.catalogue import auth
    from pipeline.catalogue.client import make_context

    engine = make_engine(server.settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    auth.ensure_user(uow, "alice", "alice@example.org", Role.ADMIN)
    services.ensure_appliance(
        uow,
        "alice",
        AppliancePayload("debian-12", "Debian 12 baseline", "Minimal hardened Debian 12.", ("vo.example.org",)),
    )
    packages = (
        PackageInfo("openssh-server", "1:9.2p1-2+deb12u3", "amd64"),
        PackageInfo("cloud-init", "22.4.2-1", "all"),
    )
    images = tuple(
        __import__("dataclasses").replace(
            _image(server, "2026.11.22", fmt), packages=packages, manifest={"arch": "x86_64"}
        )
        for fmt in ("ova", "qcow2")
    )
    payload = VersionPayload("debian-12", "2026.11.22", "Monthly rebuild with security updates.", images)
    services.register_version(uow, "alice", payload, server.settings)
    services.store_audit(uow, "alice", "debian-12", "2026.11.22", WAIVED_AUDIT)
    endorsements.endorse(uow, "alice", "debian-12", "2026.11.22", "vo.example.org", make_context(server.settings))
    engine.dispose()
    return payload


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_browse_download_and_endorsement_state(live_server: LiveServer, browser: Browser, tmp_path: Path) -> None:
    payload = _seed(live_server)
    page: Page = browser.new_page(viewport={"width": 1280, "height": 1100})
    # the Content-Security-Policy must not block anything the pages use (Chromium reports each block)
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: blocked.append(str(e)))
    first = page.goto(live_server.url + "/")
    assert first is not None and "frame-ancestors 'none'" in first.headers["content-security-policy"]
    assert first.headers["x-content-type-options"] == "nosniff"
    expect(page.locator("h1")).to_contain_text("Appliances")
    page.get_by_role("link", name="debian-12").click()
    expect(page.locator("#versions")).to_contain_text("2026.11.22")
    expect(page.locator("#versions")).to_contain_text("vo.example.org")
    page.get_by_role("link", name="2026.11.22").click()

    # images with download links and checksums
    sections = page.locator("section.image")
    expect(sections).to_have_count(2)
    for image in payload.images:
        expect(page.locator("code.sha512", has_text=image.sha512)).to_have_count(1)
        expect(page.locator("code.sha256", has_text=image.sha256)).to_have_count(1)
    href = page.locator("a.download").first.get_attribute("href")
    assert href is not None and href.startswith(live_server.url + "/repo/")
    body = requests.get(href, timeout=10).content
    assert hashlib.sha512(body).hexdigest() in {i.sha512 for i in payload.images}

    # audit report with its waived failure, and the endorsement state
    expect(page.locator("#audit-result")).to_contain_text("passes")
    expect(page.locator("#audit tr.waived")).to_have_count(2)
    expect(page.locator("#audit")).to_contain_text("regenerated at boot by a unit")
    expect(page.locator("#endorsements")).to_contain_text("vo.example.org")
    expect(page.locator("#endorsements")).to_contain_text("endorsed")
    shot = tmp_path / "version-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # package list and build manifest of one image
    page.get_by_role("link", name="2 packages and the build manifest").first.click()
    expect(page.locator("#packages")).to_contain_text("openssh-server")
    expect(page.locator("#manifest")).to_contain_text("x86_64")

    # the VO page shows the endorsed version and the signed list history; the stable list URL serves it
    page.goto(live_server.url + "/vos/vo.example.org")
    expect(page.locator("#endorsed")).to_contain_text("2026.11.22")
    expect(page.locator("#history tbody tr")).to_have_count(1)
    list_url = page.locator("#list-url").get_attribute("href")
    assert list_url == f"{live_server.url}/vo/vo.example.org/image.list"
    assert b"multipart/signed" in requests.get(list_url, timeout=10).content

    page.goto(live_server.url + "/appliances/nope")
    expect(page.locator("p.error")).to_contain_text("nope")
    # the stylesheet applied under the policy (a blocked one would leave the default font)
    page.goto(live_server.url + "/")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(247, 248, 250)"
    assert blocked == []
    # and nothing may frame the pages: the browser refuses, so the frame stays empty
    framer = "http://framer.invalid/"  # another origin, served by the browser itself
    page.route(framer, lambda route: route.fulfill(body=f'<iframe id="f" src="{live_server.url}/"></iframe>'))
    page.goto(framer)
    page.wait_for_timeout(1000)
    # Chromium shows its own error page in the frame instead of ours
    expect(page.frame_locator("#f").locator("a.brand")).to_have_count(0)
    assert any(f.url.startswith("chrome-error://") for f in page.frames[1:]), [f.url for f in page.frames]
    page.close()
