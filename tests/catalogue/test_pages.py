"""The web pages in headless Chromium (Debian's, driven by Playwright): browse, download, verify."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from pipeline.catalogue import auth, endorsements, services
from pipeline.catalogue.contract import AppliancePayload, PackageInfo, VersionPayload
from pipeline.catalogue.db import make_engine, session_factory
from pipeline.catalogue.models import Role
from pipeline.catalogue.schemas import AuditIn
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
    from pipeline.catalogue.inprocess import make_context

    engine = make_engine(server.settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    auth.ensure_user(uow, "alice", "alice@example.org", Role.ADMIN)
    services.ensure_appliance(
        uow,
        "alice",
        AppliancePayload(
            name="debian-12",
            title="Debian 12 baseline",
            description="Minimal hardened Debian 12.",
            vos=("vo.example.org",),
        ),
    )
    packages = [
        PackageInfo(name="openssh-server", version="1:9.2p1-2+deb12u3", arch="amd64"),
        PackageInfo(name="cloud-init", version="22.4.2-1", arch="all"),
    ]
    images = [
        _image(server, "2026.11.22", fmt).model_copy(
            update={"packages": list(packages), "manifest": {"arch": "x86_64"}}
        )
        for fmt in ("ova", "qcow2")
    ]
    payload = VersionPayload(
        appliance="debian-12", version="2026.11.22", notes="Monthly rebuild with security updates.", images=images
    )
    services.register_version(uow, "alice", payload, server.settings)
    services.store_audit(uow, "alice", "debian-12", "2026.11.22", AuditIn.model_validate(WAIVED_AUDIT))
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


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_site_configured_only_from_the_vo_page_verifies_the_list(
    live_server: LiveServer, browser: Browser, dev_ca: Path, tmp_path: Path
) -> None:
    import yaml

    from pipeline.formats.dn import parse_dn
    from pipeline.formats.imagelist import list_identifier
    from pipeline.site.verify import verify_image_list

    _seed(live_server)
    page: Page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(live_server.url + "/vos/vo.example.org")
    list_url = page.locator("#list-url").inner_text()
    identifier = page.locator("#list-identifier").inner_text()
    dn, dn_rfc = page.locator("#endorser-dn").inner_text(), page.locator("#endorser-dn-rfc4514").inner_text()
    ca, ca_rfc = page.locator("#ca-dn").inner_text(), page.locator("#ca-dn-rfc4514").inner_text()
    assert list_url == f"{live_server.url}/vo/vo.example.org/image.list"
    assert identifier == list_identifier(list_url)
    assert dn == "/DC=org/DC=vmi-pipeline/O=Development/CN=vmi-pipeline dev endorser"
    assert dn_rfc == "CN=vmi-pipeline dev endorser,O=Development,DC=vmi-pipeline,DC=org"
    assert ca == "/DC=org/DC=vmi-pipeline/CN=vmi-pipeline DEV CA - NOT FOR PRODUCTION"
    assert ca_rfc == "CN=vmi-pipeline DEV CA - NOT FOR PRODUCTION,DC=vmi-pipeline,DC=org"
    version = page.locator("#list-version").inner_text()
    assert version.isdigit()
    expect(page.locator("#list-expires")).to_contain_text("T")

    # the pasted configurations carry exactly those values
    atrope = yaml.safe_load(page.locator("#atrope-config").inner_text())
    assert atrope == {
        "vo.example.org": {
            "url": list_url,
            "enabled": True,
            "endorser": {"dn": dn, "ca": ca},
            "token": "",
            "images": [],
            "prefix": "",
        }
    }
    vmcatcher = page.locator("#vmcatcher-config").inner_text()
    assert f"dc:identifier {identifier}" in vmcatcher and f"--subject='{dn}'" in vmcatcher
    assert f"--issuer='{ca}'" in vmcatcher and f"vmcatcher_subscribe -s {list_url}" in vmcatcher
    assert f"--image-list={list_url}" in page.locator("#cloudkeeper-config").inner_text()

    # what the page says is what the list is: verify with either DN spelling, the identifier, the CA
    from pipeline.errors import VerificationError

    with pytest.raises(VerificationError, match="a loopback address: not downloaded"):
        verify_image_list(list_url, dev_ca / "ca.pem", endorser_dn=dn, identifier=identifier, download=tmp_path / "x")
    for endorser in (dn, dn_rfc):
        # this catalogue serves on loopback: a site's downloads from there must be allowed explicitly
        report = verify_image_list(
            list_url,
            dev_ca / "ca.pem",
            endorser_dn=parse_dn(endorser),
            identifier=identifier,
            download=tmp_path / "dl",
            allow_private_urls=True,
        )
        assert report.version == version and report.signer_dn == dn
        assert len(report.downloads) == 2

    # the endorsement names the endorser's certificate and the account that acted, not an internal user
    page.goto(live_server.url + "/appliances/debian-12/2026.11.22")
    cell = page.locator("#endorsements td.endorser")
    expect(cell).to_contain_text("vmi-pipeline dev endorser")
    expect(cell).to_contain_text(dn)
    expect(cell).to_contain_text("by account alice")
    page.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_unknown_names_give_commands_not_internal_function_names(live_server: LiveServer) -> None:
    unknown_vo = requests.get(f"{live_server.url}/vo/vo.nowhere/image.list", timeout=10).json()
    command = unknown_vo["hint"].removeprefix("an admin creates it: ").partition(", or ")[0]
    assert command.startswith("curl ") and unknown_vo["hint"].endswith(
        "or `invoke publish` an appliance listing it under vos: with a sqlite:// or postgresql:// catalogue"
    )
    # the command, pasted as printed by an admin whose VMI_CATALOGUE* are set as for `invoke publish`
    engine = make_engine(live_server.settings.database_url)
    uow = UnitOfWork(session_factory(engine))
    auth.ensure_user(uow, "root", "root@example.org", Role.ADMIN)
    token = auth.issue_token(uow, "root", "root", "tests").token
    engine.dispose()
    env = {"PATH": os.environ["PATH"], "VMI_CATALOGUE": live_server.url, "VMI_CATALOGUE_TOKEN": token}
    made = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert made.returncode == 0, made.stderr
    assert requests.get(f"{live_server.url}/api/v1/vos/vo.nowhere", timeout=10).json()["name"] == "vo.nowhere"
    unknown = requests.get(f"{live_server.url}/api/v1/appliances/nope/versions", timeout=10).json()
    assert unknown["hint"] == "publish it first: `invoke publish --appliance nope`"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_docs_render_offline_from_shipped_files(live_server: LiveServer, browser: Browser) -> None:
    from pipeline.catalogue.pages.apidocs import BUNDLE_HINT, swagger_ui_dir

    if swagger_ui_dir() is None:
        pytest.fail(f"Swagger UI's files are missing: {BUNDLE_HINT} (a dependency of the catalogue)")
    page: Page = browser.new_page()
    outside: list[str] = []

    def only_the_catalogue(route: Any) -> None:
        if route.request.url.startswith(live_server.url + "/"):
            route.continue_()
        else:  # a machine without internet: nothing but the catalogue answers
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_catalogue)
    page.goto(live_server.url + "/api/v1/docs")
    expect(page.locator(".swagger-ui .information-container")).to_contain_text("vmi-pipeline catalogue")
    expect(
        page.locator(".swagger-ui .opblock-summary-path", has_text="/api/v1/appliances/{name}/versions/{version}")
    ).not_to_have_count(0)
    assert outside == []
    page.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_error_in_the_pages_is_an_html_page(live_server: LiveServer, browser: Browser) -> None:
    _seed(live_server)
    page: Page = browser.new_page()
    base = live_server.url + "/appliances/debian-12/2026.11.22/images/"
    # the dc:identifier sites see in the list opens the image page too
    listed = requests.get(live_server.url + "/api/v1/appliances/debian-12/versions/2026.11.22", timeout=10).json()
    uuid = listed["images"][0]["identifier"]
    response = page.goto(base + uuid)
    assert response is not None and response.status == 200
    expect(page.locator("body")).to_contain_text(listed["images"][0]["sha512"])

    cases = [
        (base + "0b6c5a0e-1d1e-4b8e-9a47-3c1f6e1f2a10", 404, "Not Found", "has no image 0b6c5a0e"),
        (base + "2147483647", 404, "Not Found", "has no image 2147483647"),
        # ids beyond what the databases store are an invalid address, as in the API (test_trust)
        (base + "12345678901234567890", 422, "This address is not valid", "from 1 to 2147483647"),
        (base + "not-an-id", 422, "This address is not valid", "nor an image's dc:identifier (a UUID)"),
        (live_server.url + "/appliances/" + "x" * 65, 422, "This address is not valid", "at most 64 characters"),
        (live_server.url + "/vos/vo.nowhere", 404, "Not Found", "VO 'vo.nowhere' is not in the catalogue"),
        (live_server.url + "/no/such/page", 404, "Not Found", "no such page"),
    ]
    for url, status, title, text in cases:
        response = page.goto(url)
        assert response is not None and response.status == status, url
        assert response.headers["content-type"].startswith("text/html"), url
        expect(page.locator("h1")).to_have_text(title)
        expect(page.locator("main")).to_contain_text(text)
    page.close()

    wrong_method = requests.post(live_server.url + "/vos", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["content-type"].startswith("text/html")
    assert "<h1>Method Not Allowed</h1>" in wrong_method.text
    # programs keep getting JSON
    api = requests.get(live_server.url + "/api/v1/appliances/debian-12/versions/2026.11.22/images/" + uuid, timeout=10)
    assert api.status_code == 422 and api.json()["detail"][0]["loc"] == ["path", "image_id"]
