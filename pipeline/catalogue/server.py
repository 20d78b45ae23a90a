"""``serve_catalogue``: what ``invoke serve`` runs (migrate, optional bootstrap token, uvicorn)."""

from __future__ import annotations

from datetime import datetime

import uvicorn

from pipeline.catalogue import auth
from pipeline.catalogue.app import create_app
from pipeline.catalogue.db import make_engine, migrate, session_factory
from pipeline.catalogue.models import Role
from pipeline.catalogue.settings import DEFAULT_TOKEN_DAYS, catalogue_settings
from pipeline.catalogue.uow import UnitOfWork
from pipeline.errors import ConfigError
from pipeline.log import log
from pipeline.settings import Settings


def bootstrap_token(database_url: str, spec: str, token_days: int = DEFAULT_TOKEN_DAYS) -> tuple[str, datetime]:
    """A new token for ``NAME[:ROLE]`` (the user is created if missing; role admin or user).

    This is how the first admin gets in: whoever can start the service owns its database anyway.
    """
    name, _, role_text = spec.partition(":")
    try:
        role = Role(role_text or "admin")
    except ValueError as e:
        raise ConfigError(f"--create-token: role {role_text!r} is not one of admin, user") from e
    engine = make_engine(database_url)
    try:
        uow = UnitOfWork(session_factory(engine))
        auth.ensure_user(uow, name, f"{name}@localhost", role)
        issued = auth.issue_token(uow, name, name, "created by invoke serve --create-token", default_days=token_days)
        return issued.token, issued.info.expires
    finally:
        engine.dispose()


def serve_catalogue(
    settings: Settings, host: str = "127.0.0.1", port: int = 8080, create_token: str | None = None
) -> None:
    """Run the catalogue until interrupted; the schema is migrated to the newest version first."""
    cat = catalogue_settings(settings)
    migrate(cat.database_url)
    if create_token:
        token, expires = bootstrap_token(cat.database_url, create_token, cat.token_days)
        # the secret is shown once, here, and stored only as a hash
        log.warning(
            "API token for %s (shown once, expires %s UTC): %s",
            create_token.partition(":")[0],
            f"{expires:%Y-%m-%d %H:%M}",
            token,
        )
    if cat.signing_key is None:
        log.warning("no VMI_SIGNING_KEY/VMI_SIGNING_CERT: endorsements (signed image lists) are refused")
    log.info(
        "catalogue on http://%s:%d/ (API docs at /api/v1/docs), database %s",
        host,
        port,
        cat.database_url.split("@")[-1],
    )
    uvicorn.run(create_app(cat), host=host, port=port, log_level="warning", proxy_headers=False)
