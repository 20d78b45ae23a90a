"""Which versions retention keeps, retires and warns about (the rule; the real catalogue is in test_retention)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pipeline.rebuild.retention import plan_retention

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class V:
    version: str
    created: datetime
    expires: datetime
    archived: bool = False
    images: tuple[()] = ()


def v(version: str, age_days: float, expires_in_days: float, archived: bool = False) -> V:
    return V(version, NOW - timedelta(days=age_days), NOW + timedelta(days=expires_in_days), archived)


def test_keep_newest_n_by_version_order() -> None:
    versions = [v("2026.11.9", 13, 300), v("2026.11.22", 0, 365), v("2026.11.10", 12, 300), v("2026.11.22.1", 0, 365)]
    plan = plan_retention("a", versions, keep_versions=2, now=NOW)
    assert [k[1] for k in plan.keep] == ["2026.11.22.1", "2026.11.22"]
    assert [(r.version, r.reason) for r in plan.retire] == [
        ("2026.11.10", "superseded: 2 newer versions (newest 2026.11.22.1)"),
        ("2026.11.9", "superseded: 3 newer versions (newest 2026.11.22.1)"),
    ]
    assert plan.expiring == ()


def test_expired_versions_go_even_if_among_the_newest() -> None:
    plan = plan_retention("a", [v("3", 1, 200), v("2", 400, -1), v("1", 500, -30)], keep_versions=4, now=NOW)
    assert [k[1] for k in plan.keep] == ["3"]
    assert [(r.version, r.reason) for r in plan.retire] == [("2", "expired 2026-11-21"), ("1", "expired 2026-10-23")]


def test_expiring_within_five_days_is_reported_and_archived_ignored() -> None:
    versions = [v("4", 0, 365), v("3", 360, 4.5), v("2", 361, 6), v("1", 500, -10, archived=True)]
    plan = plan_retention("a", versions, keep_versions=4, now=NOW)
    assert [k[1] for k in plan.keep] == ["4", "3", "2"]
    assert plan.retire == ()  # "1" is archived already
    assert [(e.version, round(e.days_left, 1)) for e in plan.expiring] == [("3", 4.5)]
