"""Rebuild on schedule: decide what is stale and why, rebuild it in dependency order, retire old versions.

Entry points (what ``tasks.py`` calls): ``rebuild_appliances``, ``ci_matrix``, ``scaffold_appliance``.
"""

from __future__ import annotations

from pipeline.rebuild.matrix import ci_matrix
from pipeline.rebuild.rebuild import rebuild_appliances
from pipeline.rebuild.scaffold import scaffold_appliance

__all__ = ["ci_matrix", "rebuild_appliances", "scaffold_appliance"]
