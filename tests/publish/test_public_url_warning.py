"""Issue 12: publishing with the default public URLs (``http://127.0.0.1:8080/repo``) says, in one line,
that sites cannot reach them and how to set them; a public configuration publishes without it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.publicurls import public_url_warning, unreachable
from tests.publish.conftest import make_packaged_version, make_settings, run_invoke, settings_env


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:8080/repo", "a loopback address"),
        ("http://localhost:8080", "a loopback address"),
        ("http://[::1]:8080/repo", "a loopback address"),
        ("https://10.1.2.3/repo", "a private address"),
        ("http://192.168.0.7", "a private address"),
        ("http://169.254.0.9/", "a link-local address"),
        ("http://0.0.0.0:8080", "an unspecified address"),
        ("https://repo.example.org/vmi", None),
        ("https://192.0.2.1.nip.io/repo", None),  # a host name: never resolved
        ("http://8.8.8.8/repo", None),
    ],
)
def test_unreachable(url: str, why: str | None) -> None:
    assert unreachable(url) == why


def test_one_warning_line_names_the_settings_and_how_to_set_them(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())  # the invoke.yaml defaults
    make_packaged_version(settings.output_dir)
    proc = run_invoke(["publish", "--appliance", "debian-12", "--dry-run"], settings_env(settings))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: sites cannot reach vmi.repository_public_url http://127.0.0.1:8080/repo (a loopback address) "
        "and vmi.catalogue_public_url http://127.0.0.1:8080 (a loopback address): set them to the address sites "
        "use, in invoke.yaml (vmi:) or as VMI_REPOSITORY_PUBLIC_URL and VMI_CATALOGUE_PUBLIC_URL, before "
        "publishing for sites (fine for a trial on this machine)"
    ]

    public = dataclasses.replace(
        settings, repository_public_url="https://repo.example.org/vmi", catalogue_public_url="https://cat.example.org"
    )
    proc = run_invoke(["publish", "--appliance", "debian-12", "--dry-run"], settings_env(public))
    assert proc.returncode == 0, proc.stderr
    assert "sites cannot reach" not in proc.stderr and "warning:" not in proc.stderr


def test_only_what_this_publish_records_is_judged(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, (tmp_path / "repository").as_uri())
    service = dataclasses.replace(
        settings, catalogue="https://cat.example.org", repository_public_url="http://10.0.0.5/repo"
    )  # a catalogue service signs with its own public URL: only the repository's is this publish's
    assert public_url_warning(service) == (
        "sites cannot reach vmi.repository_public_url http://10.0.0.5/repo (a private address): set it to the "
        "address sites use, in invoke.yaml (vmi:) or as VMI_REPOSITORY_PUBLIC_URL, before publishing for sites "
        "(fine for a trial on this machine)"
    )
    oci = dataclasses.replace(service, repository="oci://registry.example.org/vmi")  # references, not this URL
    assert public_url_warning(oci) is None
