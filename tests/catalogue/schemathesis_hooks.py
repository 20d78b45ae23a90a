"""Schemathesis checks of our own (loaded with ``SCHEMATHESIS_HOOKS`` by ``test_fuzz.py``)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def security_headers(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every response, error or not, carries the security headers (issue 14, section 7)."""
    headers = {k.lower(): v for k, v in response.headers.items()}

    def first(name: str) -> str:
        value = headers.get(name, [""])
        return value[0] if isinstance(value, list) else str(value)

    csp = first("content-security-policy")
    assert "frame-ancestors 'none'" in csp, f"Content-Security-Policy without frame-ancestors 'none': {csp!r}"
    assert first("x-content-type-options") == "nosniff", "X-Content-Type-Options is not nosniff"
    assert first("referrer-policy"), "no Referrer-Policy"
    return None
