"""``serve_catalogue``: what ``invoke serve`` runs (migrate, optional bootstrap token, uvicorn), and
``migrate_catalogue``: what ``invoke catalogue-migrate`` runs.

These two are where the schema changes: opening the catalogue in-process never migrates an existing
database (it refuses one behind the code, naming ``invoke catalogue-migrate``).
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import uvicorn

from pipeline.catalogue import auth
from pipeline.catalogue.app import create_app
from pipeline.catalogue.db import current_revision, head_revision, make_engine, migrate, session_factory
from pipeline.catalogue.models import Role
from pipeline.catalogue.pages.links import is_loopback_url
from pipeline.catalogue.settings import DEFAULT_TOKEN_DAYS, CatalogueSettings, catalogue_settings
from pipeline.catalogue.signing import ImageListSigner
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


def migrate_catalogue(settings: Settings) -> tuple[str | None, str]:
    """Bring the catalogue database to the newest schema; (revision before, revision now)."""
    url = catalogue_settings(settings).database_url
    engine = make_engine(url)
    try:
        before = current_revision(engine)
    finally:
        engine.dispose()
    migrate(url)
    return before, head_revision()


def demo_settings(cat: CatalogueSettings, host: str, port: int, local_demo: bool) -> CatalogueSettings:
    """Refuse to sign lists for a loopback public URL (no site could use them) unless this is a local demo;
    a local demo's lists and links then name the address actually served (``--port`` included)."""
    if not is_loopback_url(cat.public_url) or cat.signing_key is None:
        return cat
    if not local_demo:
        raise ConfigError(
            f"vmi.catalogue_public_url: {cat.public_url} is a loopback address: image lists signed with it "
            "send every site to its own machine",
            hint="set VMI_CATALOGUE_PUBLIC_URL and VMI_REPOSITORY_PUBLIC_URL to the address sites reach "
            "(before publishing), or pass --local-demo for a trial on this machine",
        )
    served = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
    log.warning("local demo: signed lists and links name %s, reachable from this machine only", served)
    return dataclasses.replace(cat, public_url=served)


def serve_catalogue(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8080,
    create_token: str | None = None,
    local_demo: bool = False,
) -> None:
    """Run the catalogue until interrupted; the schema is migrated to the newest version first."""
    cat = demo_settings(catalogue_settings(settings), host, port, local_demo)
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
    if cat.signing_key is None or cat.signing_cert is None:
        log.warning("no VMI_SIGNING_KEY/VMI_SIGNING_CERT: endorsements (signed image lists) are refused")
    elif not cat.signing_key.expanduser().is_file():  # fail at start; the key itself is read at the first list
        raise ConfigError(f"VMI_SIGNING_KEY: {cat.signing_key}: signing key file not found")
    else:
        ImageListSigner(cat, cat.signing_key, cat.signing_cert).certificate()  # a wrong certificate fails here
    log.info(
        "catalogue on http://%s:%d/ (API docs at /api/v1/docs), database %s",
        host,
        port,
        cat.database_url.split("@")[-1],
    )
    uvicorn.run(create_app(cat), host=host, port=port, log_level="warning", proxy_headers=False)
