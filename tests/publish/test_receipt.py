"""The publish receipt: a publish to a file repository and the in-process SQLite catalogue leaves
``published.json`` last, and ``PublishResult.load`` rebuilds the same result from it offline; a version
never published, or a damaged receipt, fails in one line naming the file."""

from __future__ import annotations

import dataclasses
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.appliance import Appliance, find_appliance
from pipeline.catalogue.contract import CatalogueError
from pipeline.errors import ReceiptError
from pipeline.publish import PUBLISHED_FILE, PublishResult, publish_version
from pipeline.settings import Settings

from .conftest import ROOT, PackagedVersion, free_port, make_packaged_version, make_settings


@pytest.fixture
def definition() -> Appliance:
    return find_appliance(ROOT / "packer_templates", "debian-12", ROOT / "provisioners")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, (tmp_path / "repository").as_uri())


def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on any connection attempt of this process fails (the load must not need one)."""

    def refuse(self: socket.socket, address: object) -> None:
        raise OSError(f"no network in this test: connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_a_publish_reloads_from_its_receipt_as_it_was(
    settings: Settings, definition: Appliance, monkeypatch: pytest.MonkeyPatch
) -> None:
    packaged = make_packaged_version(settings.output_dir)
    published = publish_version(settings, "debian-12")
    receipt = packaged.directory / PUBLISHED_FILE
    data = json.loads(receipt.read_text())
    assert (data["receipt"], data["version"], data["repositories"]) == (
        "publish",
        packaged.version,
        [settings.repository],
    )
    assert data["registered"]["images"][0]["sha512"] in {a.sha512 for a in packaged.manifest.artifacts}

    no_network(monkeypatch)
    loaded = PublishResult.load(settings, definition, packaged.version)
    assert loaded == published
    assert loaded.summary() == published.summary()
    assert PublishResult.load(settings, definition) == published  # default: the newest built version


def test_the_receipt_keeps_the_repositories_it_was_published_to(
    settings: Settings, definition: Appliance, tmp_path: Path
) -> None:
    """Settings changed since (another repository, another public URL): the load plans what was done."""
    packaged = make_packaged_version(settings.output_dir)
    published = publish_version(settings, "debian-12")
    moved = dataclasses.replace(
        settings, repository=(tmp_path / "other").as_uri(), repository_public_url="https://images.example.org"
    )
    assert PublishResult.load(moved, definition, packaged.version) == published


def test_a_version_never_published_has_no_receipt(settings: Settings, definition: Appliance) -> None:
    packaged = make_packaged_version(settings.output_dir)
    with pytest.raises(ReceiptError) as failed:
        PublishResult.load(settings, definition, packaged.version)
    receipt = packaged.directory / PUBLISHED_FILE
    never = f"debian-12 {packaged.version} was never published (or its publish did not finish)"
    assert failed.value.message == f"{receipt}: no publish receipt: {never}"
    assert failed.value.hint == f"run `invoke publish debian-12 --version {packaged.version}`"


def _edit(where: list[Any], value: Any) -> Callable[[Path], None]:
    """Damage one field of the receipt at ``path`` (a list of keys and indexes into its JSON)."""

    def change(path: Path) -> None:
        data = json.loads(path.read_text())
        target = data
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
        path.write_text(json.dumps(data))

    return change


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda path: path.write_text('{"receipt": "publish", "form'), "not a readable publish receipt"),
        (lambda path: path.write_bytes(b"\xff\xfe"), "not a readable publish receipt"),
        (lambda path: path.write_text('{"receipt": "endorse", "format": 1}'), "not a publish receipt of format 1"),
        (lambda path: path.write_text("[]"), "not a publish receipt of format 1"),
        (_edit(["registered"], None), "damaged receipt (ValueError: VersionPublic: expected an object)"),
        (
            _edit(["registered", "created"], "yesterday"),
            "damaged receipt (ValueError: VersionPublic.created: Input should be a valid datetime",
        ),
        (_edit(["puts", 0, "outcome"], "teleported"), "damaged receipt (ValueError: 'teleported' is not a valid"),
        (_edit(["puts", 0, "colour"], "blue"), "damaged receipt (ValueError: PutResult: unknown field(s) colour)"),
        (_edit(["repositories"], []), "damaged receipt (IndexError"),
        (_edit(["keys"], {}), "records other keys than the plan"),
        (_edit(["registered", "images", 0, "sha512"], "0" * 128), "records images that are not this package's"),
    ],
)
def test_a_damaged_receipt_fails_in_one_line_naming_it(
    settings: Settings, definition: Appliance, damage: Callable[[Any], None], says: str
) -> None:
    packaged = make_packaged_version(settings.output_dir)
    publish_version(settings, "debian-12")
    receipt = packaged.directory / PUBLISHED_FILE
    damage(receipt)
    with pytest.raises(ReceiptError) as failed:
        PublishResult.load(settings, definition, packaged.version)
    assert failed.value.message.startswith(f"{receipt}: {says}"), failed.value.message
    assert "\n" not in failed.value.message


def test_a_publish_that_does_not_finish_leaves_no_receipt(settings: Settings, tmp_path: Path) -> None:
    """The receipt goes first and comes back last: a rerun that cannot reach the catalogue leaves none
    behind (nor a temporary file), and the next finished publish writes it again."""
    packaged: PackagedVersion = make_packaged_version(settings.output_dir)
    publish_version(settings, "debian-12")
    receipt = packaged.directory / PUBLISHED_FILE
    assert receipt.is_file()
    unreachable = dataclasses.replace(settings, catalogue=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CatalogueError):
        publish_version(unreachable, "debian-12")
    assert not receipt.exists()
    assert list(packaged.directory.glob(f".{PUBLISHED_FILE}*")) == []  # no temporary file either
    again = publish_version(settings, "debian-12")  # and a finished one writes it again
    assert receipt.is_file() and again.registered is not None
