"""Where the rebuild reads what was built: the catalogue, or this runner's ``output/`` when offline.

CI runners start empty, so a runner's disk cannot say what exists: the catalogue records every
published version with its build manifest (``Catalogue.build_record``). ``output/`` is read only
when asked to work offline, or when the catalogue is a local database that was never created
(nothing was ever published from here). A catalogue that cannot be read stops the decision: deciding
without it would rebuild and republish everything.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from pipeline.catalogue.contract import Catalogue, NotFound, outdated_reason
from pipeline.errors import ConfigError
from pipeline.manifest import BuildManifest, list_versions
from pipeline.settings import Settings


class History(Protocol):
    source: str  # for the log: where the decision came from

    def newest(self, name: str) -> BuildManifest | None:
        """The manifest of the newest built version of ``name``; None if it was never built."""
        ...

    def taken(self, name: str) -> set[str]:
        """Every version name of ``name`` in use (a new build must not reuse one)."""
        ...

    def outdated(self, name: str, version: str, now: dt.datetime) -> str | None:
        """Why ``name`` ``version`` is no longer a base to build on (archived, expired, revoked), else None."""
        ...


class LocalHistory:
    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.source = f"{output_dir} (offline)"

    def newest(self, name: str) -> BuildManifest | None:
        versions = list_versions(self.output_dir / name)
        return BuildManifest.load(self.output_dir / name / versions[-1]) if versions else None

    def taken(self, name: str) -> set[str]:
        folder = self.output_dir / name
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def outdated(self, name: str, version: str, now: dt.datetime) -> str | None:
        return None  # endorsements, revocations and archival live in the catalogue, not in output/


class CatalogueHistory:
    def __init__(self, catalogue: Catalogue, url: str, output_dir: Path) -> None:
        self.catalogue = catalogue
        self.source = f"the catalogue {url}"
        self._local = LocalHistory(output_dir)
        self._newest: dict[str, BuildManifest | None] = {}
        self._outdated: dict[tuple[str, str], str | None] = {}

    def newest(self, name: str) -> BuildManifest | None:
        if name not in self._newest:
            record = self.catalogue.build_record(name)
            self._newest[name] = (
                None
                if record is None
                else BuildManifest.from_dict(dict(record.manifest), f"catalogue: {name} {record.version}")
            )
        return self._newest[name]

    def taken(self, name: str) -> set[str]:
        try:
            published = {v.version for v in self.catalogue.list_versions(name)}
        except NotFound:  # never registered
            published = set()
        return published | self._local.taken(name)

    def outdated(self, name: str, version: str, now: dt.datetime) -> str | None:
        if (name, version) not in self._outdated:
            info = self.catalogue.get_version(name, version)
            self._outdated[name, version] = (
                f"{name} {version} is not in the catalogue" if info is None else outdated_reason(info, now)
            )
        return self._outdated[name, version]


def free_version(history: History, name: str, today: dt.date) -> str:
    """``YYYY.MM.DD`` for the first build of the day, then ``.1``, ``.2``... unused here and in the catalogue.

    Fixed when the run decides: two runners deciding at once pick the same name, so the catalogue lets
    exactly one of them register it (the other finds it "already built by another run")."""
    taken = history.taken(name)
    stem = today.strftime("%Y.%m.%d")
    if stem not in taken:
        return stem
    n = 1
    while f"{stem}.{n}" in taken:
        n += 1
    return f"{stem}.{n}"


@contextmanager
def open_history(
    settings: Settings, offline: bool = False, environ: Mapping[str, str] | None = None
) -> Iterator[History]:
    url = settings.catalogue
    never_published = url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists()
    env = os.environ if environ is None else environ
    if never_published and not offline and env.get("CI"):
        # a fresh CI runner with the embedded default would find nothing and republish everything
        raise ConfigError(
            f"vmi.catalogue: {url} does not exist on this CI runner, so every appliance would look never built",
            hint="set VMI_CATALOGUE to the catalogue service (https://...) and VMI_CATALOGUE_TOKEN; see docs/ci.md",
        )
    if offline or never_published:
        yield LocalHistory(settings.output_dir)
        return
    from pipeline.catalogue.client import open_catalogue

    catalogue = open_catalogue(settings)
    try:
        yield CatalogueHistory(catalogue, url.split("@")[-1], settings.output_dir)
    finally:
        catalogue.close()
