"""``invoke rebuild``: decide, rebuild in dependency order, then retire what retention says.

The steps, each deciding for itself whether it applies:
1. plan: every selected appliance gets a decision with its reasons (``decide.py``);
2. execute: build -> package -> audit -> publish -> endorse for the stale ones (``execute.py``);
3. retention: archive expired or superseded versions in the catalogue, then delete their objects,
   and report versions that expire soon (``retention.py``); then bound ``.cache/vmi`` (``cache.py``).
``--dry-run`` runs 1 and shows what 2 and 3 would do, changing nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipeline.appliance import Appliance
from pipeline.errors import PipelineError
from pipeline.log import log, step
from pipeline.rebuild.archive import ArchiveIndex
from pipeline.rebuild.cache import prune
from pipeline.rebuild.execute import RebuildReport, Stages, execute
from pipeline.rebuild.history import free_version, open_history
from pipeline.rebuild.plan import InputsOf, make_plan, select
from pipeline.rebuild.retention import RetentionReport, apply_retention
from pipeline.settings import Settings


def rebuild_appliances(
    settings: Settings,
    names: Sequence[str] | None = None,
    dry_run: bool = False,
    *,
    stages: Stages | None = None,
    inputs_of: InputsOf | None = None,
    now: datetime | None = None,
    offline: bool = False,
) -> RebuildReport:
    """Rebuild what is stale among ``names`` (all appliances when None) and retire old versions.

    What was built is read from the catalogue (``offline``: from ``output/``), so a fresh CI runner
    decides exactly as a warm one; see ``history.py``."""
    from pipeline.rebuild.inputs import current_inputs
    from pipeline.rebuild.stages import PipelineStages

    now = now or datetime.now(UTC)
    appliances = select(settings, names)
    archive = ArchiveIndex(settings.cache_dir / "archive")
    with step("decide"), open_history(settings, offline) as history:
        log.info("what was built: from %s", history.source)
        plan = make_plan(settings, appliances, inputs_of or current_inputs(settings), archive, now, history)
        versions = {name: free_version(history, name, now.date()) for name in plan.to_rebuild}
    for d in plan.decisions:
        log.info("%s: %s (%s)", d.appliance, "rebuild" if d.rebuild else "skip", d.why())
    results = execute(plan, stages or PipelineStages(settings), dry_run=dry_run, versions=versions)
    report = RebuildReport(results, dry_run=dry_run)
    with step("retention"):
        report.retention = _retention(settings, plan.appliances, now, dry_run)
    if not dry_run:
        with step("cache"):  # bounded in size and age (cache.py); real time: files age in real time
            log.info("%s", prune(settings.cache_dir, datetime.now(UTC)).summary().splitlines()[-1])
    return report


def _retention(
    settings: Settings, appliances: Mapping[str, Appliance], now: datetime, dry_run: bool
) -> RetentionReport:
    from pipeline.catalogue.client import open_catalogue
    from pipeline.repository import open_repository

    if dry_run and _missing_sqlite(settings.catalogue):
        return RetentionReport(dry_run=True)  # nothing published yet; do not create the database
    try:
        catalogue = open_catalogue(settings)
    except PipelineError as e:
        return RetentionReport(errors=[f"catalogue {settings.catalogue}: {e.message}"], dry_run=dry_run)
    try:
        mirrors = [open_repository(settings, url=url) for url in settings.mirror_repositories]
        return apply_retention(appliances, catalogue, open_repository(settings), now, dry_run=dry_run, mirrors=mirrors)
    finally:
        catalogue.close()


def _missing_sqlite(url: str) -> bool:
    return url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists()
