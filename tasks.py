"""vmi-pipeline's command line: `invoke <task> --help` for each.

Only wiring: load settings, call the library, turn a PipelineError into an exit code.
Data flows one way: validate -> build -> package -> publish -> endorse -> (sites) verify-list.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Context, Exit, task

from pipeline.errors import PipelineError, VerificationError
from pipeline.log import setup_logging
from pipeline.run import Stopped, stop_on_signals
from pipeline.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent
F = TypeVar("F", bound=Callable[..., Any])
# Invoke checks required arguments only for positional ones (which still take `--name value`), but its
# parser gives a missing positional the next token, `--help` included: when help is asked for, no
# argument is positional, so Invoke's own help answers `invoke <task> --help`.
_HELP_ASKED = not {"--help", "-h"}.isdisjoint(sys.argv[1:])


def _required(*names: str) -> list[str]:
    """The task's required arguments, in the order they may be given without their flag."""
    return [] if _HELP_ASKED else list(names)


def _settings(c: Context) -> Settings:
    return load_settings(dict(c.config.get("vmi", {})), ROOT)


def _edge(func: F) -> F:
    """Run a task; report a PipelineError as a message and a non-zero exit, never a traceback."""

    @functools.wraps(func)
    def wrapper(c: Context, *args: Any, **kwargs: Any) -> Any:
        setup_logging(verbose=bool(c.config.get("run", {}).get("echo")))
        stop_on_signals()  # SIGTERM/SIGHUP unwind like Ctrl-C: children stopped, partial files removed
        try:
            return func(c, *args, **kwargs)
        except VerificationError as e:
            for problem in e.problems:
                print(f"{e.subject}: {problem}", file=sys.stderr)
            raise Exit(code=1) from e
        except PipelineError as e:
            raise Exit(f"error: {e}", code=2) from e
        except Stopped as e:
            raise Exit(f"stopped by {signal.Signals(e.signum).name}", code=128 + e.signum) from e
        except KeyboardInterrupt as e:
            raise Exit("interrupted", code=130) from e

    return wrapper  # type: ignore[return-value]


@task(positional=[])
@_edge
def validate(c: Context) -> None:
    """Check every appliance definition (all mistakes at once, with file and field) and `packer validate` it."""
    from pipeline.builder import validate_appliances

    for line in validate_appliances(_settings(c)):
        print(line)


@task(
    positional=_required("appliance"),
    help={
        "appliance": "appliance name (folder under packer_templates/)",
        "version": "version to build (default: today's date, YYYY.MM.DD[.N])",
        "force": "rebuild even when an up-to-date build of the same inputs exists",
    },
)
@_edge
def build(c: Context, appliance: str, version: str | None = None, force: bool = False) -> None:
    """Build an appliance with Packer + QEMU into output/<appliance>/<version>/ (qcow2 + manifest.json)."""
    from pipeline.builder import build_appliance

    result = build_appliance(_settings(c), appliance, version=version, force=force)
    print(result.summary())


@task(
    positional=_required("appliance"),
    help={
        "appliance": "appliance whose metadata describes the image",
        "version": "built version to package (default: the newest)",
        "disk": "package this qcow2/raw disk instead of a built version",
        "out": "output folder (with --disk)",
        "raw": "also write a raw image",
        "sign_key": "PEM private key to sign the OVA manifest (.cert)",
        "sign_cert": "PEM certificate matching --sign-key",
        "profile": "hardware section tuned for: portable (default: VMware, VirtualBox, virt-v2v), vmware, virtualbox",
    },
)
@_edge
def package(
    c: Context,
    appliance: str,
    version: str | None = None,
    disk: str | None = None,
    out: str | None = None,
    raw: bool = False,
    sign_key: str | None = None,
    sign_cert: str | None = None,
    profile: str = "portable",
) -> None:
    """Package a built version (or any disk) as OVA, compressed qcow2, optional raw, and SHA256SUMS/SHA512SUMS."""
    from pipeline.formats.ovf import hardware_profile
    from pipeline.package import package_appliance

    result = package_appliance(
        _settings(c),
        appliance,
        version=version,
        disk=Path(disk) if disk else None,
        out=Path(out) if out else None,
        raw=raw,
        sign_key=Path(sign_key) if sign_key else None,
        sign_cert=Path(sign_cert) if sign_cert else None,
        profile=hardware_profile(profile),
    )
    print(result.summary())


@task(
    name="verify-ova",
    positional=_required("path"),
    help={
        "path": "the .ova to check",
        "max_capacity_gib": "refuse disks whose declared capacity is larger (default 16384 GiB = 16 TiB)",
        "max_members": "refuse archives with more tar entries (default 100)",
    },
)
@_edge
def verify_ova(c: Context, path: str, max_capacity_gib: int = 16384, max_members: int = 100) -> None:
    """Check any OVA strictly (layout, manifest, descriptor, every disk grain); exit 0 only if it is sound."""
    from pipeline.package.verify import verify_ova as check

    report = check(Path(path), max_capacity_gib=max_capacity_gib, max_members=max_members)
    print(report.summary())


@task(
    positional=_required("appliance"),
    help={
        "appliance": "appliance to publish",
        "version": "packaged version (default: the newest)",
        "dry_run": "show the repository keys and the catalogue payload; write nothing",
        "insecure": "plain HTTP to an oci:// registry on a loopback address (tests only)",
    },
)
@_edge
def publish(
    c: Context, appliance: str, version: str | None = None, dry_run: bool = False, insecure: bool = False
) -> None:
    """Upload the packaged artifacts to the repository and register the version in the catalogue."""
    from pipeline.publish import publish_version

    print(publish_version(_settings(c), appliance, version=version, dry_run=dry_run, insecure=insecure).summary())


@task(positional=_required("appliance"), help={"appliance": "appliance to release"})
@_edge
def release(c: Context, appliance: str) -> None:
    """Build, package and publish in one go; prints the catalogue URL of the new version."""
    from pipeline.recipe import release_appliance

    print(release_appliance(_settings(c), appliance).summary())


@task(
    positional=[],
    help={
        "host": "address to listen on",
        "port": "port to listen on",
        "create_token": "USER[:ROLE]: an API token for USER (created if new, as admin by default), shown once",
        "local_demo": "a trial on this machine: sign lists for the loopback address actually served",
    },
)
@_edge
def serve(
    c: Context, host: str = "127.0.0.1", port: int = 8080, create_token: str | None = None, local_demo: bool = False
) -> None:
    """Run the catalogue service (REST API, web pages, signed VO image lists, file repository downloads)."""
    from pipeline.catalogue.server import serve_catalogue

    serve_catalogue(_settings(c), host=host, port=port, create_token=create_token, local_demo=local_demo)


@task(name="catalogue-migrate", positional=[])
@_edge
def catalogue_migrate(c: Context) -> None:
    """Migrate the catalogue database (vmi.catalogue) to the newest schema; `invoke serve` does this at start."""
    from pipeline.catalogue.server import migrate_catalogue

    before, after = migrate_catalogue(_settings(c))
    print(f"catalogue schema: {before or 'empty'} -> {after}" if before != after else f"catalogue schema at {after}")


@task(positional=[])
@_edge
def audit(c: Context) -> None:
    """Re-check every registered image against every repository (exists, size, checksum); report drift."""
    from pipeline.publish import audit_repositories

    reports = audit_repositories(_settings(c))
    print("\n".join(r.summary() for r in reports))
    if not all(r.ok for r in reports):
        raise Exit(code=1)


@task(
    name="audit-image",
    positional=_required("appliance"),
    help={"appliance": "appliance", "version": "built version (default: the newest)"},
)
@_edge
def audit_image(c: Context, appliance: str, version: str | None = None) -> None:
    """Inspect a built disk offline against the endorsement policy; exit 0 only if every check passes."""
    from pipeline.audit.report import audit_version

    report = audit_version(_settings(c), appliance, version=version)
    print(report.summary())
    if not report.passed:
        raise Exit(code=1)


@task(
    positional=_required("appliance", "version", "vo"),
    help={
        "appliance": "appliance",
        "version": "published version",
        "vo": "the VO to endorse it for",
        "revoke": "withdraw the endorsement instead",
        "cascade": "with --revoke: also every version layered on it, in every VO (each list re-signed once)",
    },
)
@_edge
def endorse(c: Context, appliance: str, version: str, vo: str, revoke: bool = False, cascade: bool = False) -> None:
    """Endorse (or revoke) a published version for a VO: audit, then a new signed VO image list."""
    from pipeline.endorse import endorse_version, revoke_cascade

    if cascade and not revoke:
        raise Exit("error: --cascade goes with --revoke: endorsing never cascades", code=2)
    if cascade:
        print(revoke_cascade(_settings(c), appliance, version, vo).summary())
        return
    print(endorse_version(_settings(c), appliance, version, vo, revoke=revoke).summary())


@task(
    name="dev-ca",
    positional=[],
    help={"out": "folder for the throwaway CA and endorser key/certificate (default ~/.vmi-dev-ca, outside the clone)"},
)
@_edge
def dev_ca(c: Context, out: str = "~/.vmi-dev-ca") -> None:
    """Make a throwaway CA and endorser certificate for local use (never for production)."""
    from pipeline.endorse.pki import make_dev_ca

    print(make_dev_ca(Path(out).expanduser()).summary())


@task(
    name="verify-list",
    positional=_required("source", "ca"),
    help={
        "source": "image list file or URL",
        "ca": "CA certificate(s) (PEM) to trust",
        "endorser_dn": "the endorser DN the list must be signed by: /DC=org/CN=name or RFC 4514 CN=name,DC=org",
        "download": "download and verify every image into this folder",
        "state": "file that remembers the last hv:version seen",
        "identifier": "the dc:identifier the list must have (the subscribed list)",
        "allow_private_urls": "let --download fetch from loopback, link-local and private addresses",
        "crl": "CRL (PEM/DER file or URL) of the signer's CA: refuse a revoked signer, like vmcatcher",
    },
)
@_edge
def verify_list(
    c: Context,
    source: str,
    ca: str,
    endorser_dn: str | None = None,
    download: str | None = None,
    state: str | None = None,
    identifier: str | None = None,
    allow_private_urls: bool = False,
    crl: str | None = None,
) -> None:
    """Verify a signed HEPiX image list the way a site does (signature, signer, dates, version, images)."""
    from pipeline.formats.dn import parse_dn
    from pipeline.site.crl import check_revocation
    from pipeline.site.verify import verify_image_list

    checked = check_revocation(source, crl, Path(ca)) if crl else None
    report = verify_image_list(
        source,
        ca=Path(ca),
        endorser_dn=parse_dn(endorser_dn) if endorser_dn else None,
        download=Path(download) if download else None,
        state=Path(state) if state else None,
        identifier=identifier,
        allow_private_urls=allow_private_urls,
    )
    if checked is not None and report.signer_dn not in checked:  # the list changed between the two reads
        raise VerificationError(source, [f"signed by {report.signer_dn}, not the signer checked against the CRL"])
    print(report.summary())


@task(
    positional=_required("old", "new", "appliance"),
    help={
        "appliance": "appliance whose two built versions to compare",
        "old": "the earlier version (e.g. 2026.11.22)",
        "new": "the later version",
        "json": "print the difference as JSON",
        "changelogs": "read changelog entries from the newer image (--no-changelogs: manifests and audits only)",
    },
)
@_edge
def diff(c: Context, appliance: str, old: str, new: str, json: bool = False, changelogs: bool = True) -> None:
    """What changed between two versions: packages (+ changelog entries, CVEs, security), audit, inputs."""
    import json as jsonlib

    from pipeline.diff import diff_versions

    found = diff_versions(_settings(c), appliance, old, new, changelogs=changelogs)
    print(jsonlib.dumps(found.to_dict(), indent=2) if json else found.summary())


@task(
    iterable=["appliance"],
    positional=[],
    help={
        "appliance": "limit to these appliances (repeatable)",
        "dry_run": "print the plan and the reasons only",
        "offline": "decide from output/ instead of the catalogue (no network; not for CI runners)",
    },
)
@_edge
def rebuild(c: Context, appliance: list[str], dry_run: bool = False, offline: bool = False) -> None:
    """Rebuild what needs it (changed inputs, newer packages, new base, too old), then package, publish, endorse."""
    from pipeline.rebuild import rebuild_appliances

    report = rebuild_appliances(_settings(c), appliance or None, dry_run=dry_run, offline=offline)
    print(report.summary())
    if not report.ok:
        raise Exit(code=1)


@task(
    help={
        "prune": "remove entries over the bounds (without it: only show what would go)",
        "max_gb": "size bound of the cache in GiB (default 20)",
        "max_age_days": "remove entries unused for longer (default 30)",
    }
)
@_edge
def cache(c: Context, prune: bool = False, max_gb: float = 20.0, max_age_days: float = 30.0) -> None:
    """Show .cache/vmi (bootstrap tarballs, base disks, package indexes) and, with --prune, bound it."""
    from datetime import UTC, datetime

    from pipeline.rebuild.cache import prune as prune_cache

    report = prune_cache(
        _settings(c).cache_dir, datetime.now(UTC), int(max_gb * 1024**3), max_age_days, dry_run=not prune
    )
    print(report.summary())


@task(
    name="ci-matrix",
    positional=[],
    help={
        "changed_only": "only appliances whose inputs changed since this git revision (and those layered on them)",
        "format": "github (a strategy.matrix object) or gitlab (a child pipeline)",
    },
)
@_edge
def ci_matrix(c: Context, changed_only: str | None = None, format: str = "github") -> None:
    """Print the CI build matrix as JSON: one entry per baseline and the appliances layered on it, in build order."""
    from pipeline.rebuild import ci_matrix as matrix

    print(matrix(_settings(c), changed_since=changed_only, fmt=format))


@task(
    name="new-appliance",
    positional=_required("name"),
    help={"name": "new appliance name", "from_": "appliance to layer it on"},
)
@_edge
def new_appliance(c: Context, name: str, from_: str = "debian-13") -> None:
    """Scaffold a layered appliance (definition, template, provisioner stub) that validates and builds."""
    from pipeline.rebuild import scaffold_appliance

    print(scaffold_appliance(_settings(c), name, base=from_))
