"""A real OCI registry on loopback for the tests: Debian's ``docker-registry`` (CNCF distribution 2.8)
with htpasswd (bcrypt) basic auth and TLS from a CA made here, plus skopeo as the independent reader.

bcrypt comes from the system's libxcrypt (``crypt_gensalt``/``crypt`` through ctypes), so neither
python-bcrypt nor apache2-utils' ``htpasswd`` is needed; the registry (Go's bcrypt) is the check.
"""

from __future__ import annotations

import base64
import ctypes
import datetime as dt
import ipaddress
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from .conftest import free_port, wait_for_port

REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"
USER, PASSWORD = "pusher", "s3cret-pass"


def bcrypt_hash(password: str, cost: int = 5) -> str:
    lib = ctypes.CDLL("libcrypt.so.1")
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt.restype = ctypes.c_char_p
    salt = lib.crypt_gensalt(b"$2b$", cost, None, 0)
    hashed = lib.crypt(password.encode(), salt)
    if not salt or not hashed or not hashed.startswith(b"$2b$"):
        raise RuntimeError("libcrypt has no bcrypt ($2b$)")
    return str(hashed.decode())


def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1/localhost: (ca.crt, server.crt, server.key)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmi test registry CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    ca: Path | None  # None: plain HTTP, no auth (behind the fault proxy)
    cert_dir: Path | None  # for skopeo --cert-dir (holds ca.crt only)
    root: Path  # storage
    auth: bool

    @property
    def scheme(self) -> str:
        return "https" if self.ca else "http"

    def skopeo(self, *args: str, tls: bool = True) -> subprocess.CompletedProcess[str]:
        """Run skopeo against this registry with its own clean HOME (no auth files of ours)."""
        home = self.root.parent / "skopeo-home"
        home.mkdir(exist_ok=True)
        flags = [f"--cert-dir={self.cert_dir}"] if self.cert_dir else ["--tls-verify=false"]
        if self.auth:
            flags.append(f"--creds={USER}:{PASSWORD}")
        env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return subprocess.run(
            [SKOPEO, args[0], *flags, *args[1:]], capture_output=True, text=True, timeout=120, env=env
        )

    def inspect_raw(self, reference: str) -> bytes:
        got = self.skopeo("inspect", "--raw", f"docker://{self.host}/{reference}")
        assert got.returncode == 0, got.stderr
        return got.stdout.encode()

    def tags(self, repository: str) -> list[str]:
        got = self.skopeo("list-tags", f"docker://{self.host}/{repository}")
        if got.returncode != 0:
            assert "name unknown" in got.stderr or "NAME_UNKNOWN" in got.stderr or "404" in got.stderr, got.stderr
            return []
        return sorted(json.loads(got.stdout)["Tags"] or [])

    def curl_blob(self, repository: str, digest: str, out: Path) -> None:
        """Download a blob with curl (another independent client), following the registry's redirects."""
        args = ["curl", "-sSfL", "-o", str(out), f"{self.scheme}://{self.host}/v2/{repository}/blobs/{digest}"]
        if self.ca:
            args += ["--cacert", str(self.ca)]
        if self.auth:
            args += ["-u", f"{USER}:{PASSWORD}"]
        got = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert got.returncode == 0, got.stderr


def start_registry(
    directory: Path, tls_and_auth: bool = True, auth: dict[str, object] | None = None
) -> Iterator[Registry]:
    """``docker-registry serve`` on a free loopback port; stopped when the generator is closed.

    ``tls_and_auth``: TLS from a test CA and htpasswd users (or the ``auth`` section given)."""
    port = free_port()
    root = directory / "storage"
    root.mkdir(parents=True)
    http: dict[str, object] = {"addr": f"127.0.0.1:{port}", "secret": "not-a-secret-test-only"}
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": http,
    }
    ca = cert_dir = None
    if tls_and_auth:
        ca, cert, key = make_ca(directory / "pki")
        cert_dir = directory / "certs.d"
        cert_dir.mkdir()
        shutil.copy(ca, cert_dir / "ca.crt")
        http["tls"] = {"certificate": str(cert), "key": str(key)}
        htpasswd = directory / "htpasswd"
        htpasswd.write_text(f"{USER}:{bcrypt_hash(PASSWORD)}\n")
        config["auth"] = auth or {"htpasswd": {"realm": "vmi-test", "path": str(htpasswd)}}
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log = directory / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", str(config_path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        time.sleep(0.2)
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text()[-2000:]}")
        yield Registry(f"127.0.0.1:{port}", ca, cert_dir, root, tls_and_auth)
    finally:
        proc.terminate()
        proc.wait(10)


# -- a registry with token (Bearer) auth: the Harbor/Docker Hub flow ----------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """A minimal Docker token service: checks basic credentials, signs an ES256 JWT granting the scope."""

    key: ec.EllipticCurvePrivateKey
    cert_der: bytes
    service: str = "vmi-test-registry"
    issuer: str = "vmi-test-issuer"
    scopes: list[str] = field(default_factory=list)  # every scope asked for, in order
    url: str = ""

    def token(self, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": USER,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 60,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def serve(self) -> ThreadingHTTPServer:
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected or query.get("service") != [server_self.service]:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                server_self.scopes.extend(scopes)
                body = json.dumps({"token": server_self.token(scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}/token"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def start_token_registry(directory: Path) -> Iterator[tuple[Registry, TokenServer]]:
    """docker-registry with TLS and ``auth.token``: every request is answered with a Bearer challenge."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmi test token signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    bundle = directory / "token-signer.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tokens = TokenServer(key, cert.public_bytes(serialization.Encoding.DER))
    server = tokens.serve()
    auth = {
        "token": {
            "realm": tokens.url,
            "service": tokens.service,
            "issuer": tokens.issuer,
            "rootcertbundle": str(bundle),
        }
    }
    try:
        for registry in start_registry(directory, auth=auth):
            yield registry, tokens
    finally:
        server.shutdown()
        server.server_close()
