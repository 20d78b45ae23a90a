"""Unknown query parameters are a 422, not silently ignored (``?format=qcow2`` that filters nothing).

A router-level dependency: it compares the request's query string with the parameters the matched
operation declares (including those of its dependencies, such as paging), so new filters need no change here.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel


def _names(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    for param in dependant.query_params:
        model = param.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):  # a Query() model: its fields
            names |= {f.alias or n for n, f in model.model_fields.items()}
        else:
            names.add(param.alias)
    for sub in dependant.dependencies:
        names |= _names(sub)
    return names


def _declared(route: APIRoute) -> frozenset[str]:
    """Worked out once per route and kept on it (routes live exactly as long as their app)."""
    found: frozenset[str] | None = getattr(route, "_declared_query", None)
    if found is None:
        found = frozenset(_names(route.dependant))
        route._declared_query = found  # type: ignore[attr-defined]
    return found


def known_query_only(request: Request) -> None:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _declared(route)
    unknown = sorted(set(request.query_params) - declared)
    if unknown:
        takes = ", ".join(sorted(declared)) or "no query parameters"
        raise RequestValidationError(
            [
                {
                    "loc": ("query", name),
                    "msg": f"unknown query parameter {name!r}: this operation takes {takes}",
                    "type": "extra_forbidden",
                    "input": request.query_params[name],
                }
                for name in unknown
            ]
        )
