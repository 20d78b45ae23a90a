"""Packaging a real disk: OVA layout byte by byte, reproducibility, the VMDK against its source,
the other formats, checksum files, the build manifest, signing, and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from pipeline.errors import ArtifactError, ConfigError
from pipeline.formats.ova import MANIFEST_LINE
from pipeline.formats.sums import parse_sums
from pipeline.manifest import Artifact, BaseRef, BuildManifest, find_version
from pipeline.package import PackageResult, package_appliance, source_date_epoch
from pipeline.package.verify import verify_ova

from .helpers import ROOT, VERSION, make_disk, ova_members, settings_for, sh

STEM = f"debian-12-{VERSION}"


def raw_headers(path: Path) -> list[bytes]:
    """Every 512-byte tar header in the file, read without tarfile."""
    data, headers, offset = path.read_bytes(), [], 0
    while data[offset : offset + 512].strip(b"\0"):
        header = data[offset : offset + 512]
        headers.append(header)
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        offset += 512 + size + (-size % 512)
    return headers


def test_members_in_order_and_ustar_headers(ova_path: Path) -> None:
    headers = raw_headers(ova_path)
    names = [h[:100].rstrip(b"\0").decode() for h in headers]
    assert names == [f"{STEM}.ovf", f"{STEM}.mf", f"{STEM}-disk1.vmdk"]
    epoch = source_date_epoch(None, VERSION)
    for h in headers:
        assert h[257:265] == b"ustar\x0000"  # POSIX USTAR, no GNU or PAX
        assert h[156:157] == b"0"  # regular file
        assert int(h[100:108].rstrip(b"\0 "), 8) == 0o644
        assert int(h[108:116].rstrip(b"\0 "), 8) == 0  # uid
        assert int(h[116:124].rstrip(b"\0 "), 8) == 0  # gid
        assert int(h[136:148].rstrip(b"\0 "), 8) == epoch
    assert ova_path.stat().st_size % 10240 == 0


def test_manifest_lines_are_exact(ova_path: Path) -> None:
    members = ova_members(ova_path)
    lines = members[f"{STEM}.mf"].decode().splitlines()
    expected = {f"{STEM}.ovf", f"{STEM}-disk1.vmdk"}
    assert len(lines) == len(expected)
    for line in lines:
        match = MANIFEST_LINE.match(line)
        assert match and match["algo"] == "SHA256", line
        assert re.fullmatch(r"SHA256\([^)]+\)= [0-9a-f]{64}", line)
        assert hashlib.sha256(members[match["name"]]).hexdigest() == match["hex"]
    assert {MANIFEST_LINE.match(line)["name"] for line in lines} == expected  # type: ignore[index]


def test_vmdk_is_stream_optimized_v3_and_identical_to_the_source(
    ova_path: Path, source_disk: Path, tmp_path: Path
) -> None:
    vmdk = tmp_path / f"{STEM}-disk1.vmdk"
    vmdk.write_bytes(ova_members(ova_path)[vmdk.name])
    head = vmdk.read_bytes()[:4096]
    assert head[:4] == b"KDMV"
    assert int.from_bytes(head[4:8], "little") == 3
    assert int.from_bytes(head[8:12], "little") & 0x30000 == 0x30000
    assert b'createType="streamOptimized"' in head
    assert f'SPARSE "{vmdk.name}"'.encode() in head  # the extent name is the member name
    info = json.loads(sh("qemu-img", "info", "-f", "vmdk", "--output=json", vmdk))
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    sh("qemu-img", "check", "-f", "vmdk", vmdk)
    assert "identical" in sh("qemu-img", "compare", "-f", "qcow2", "-F", "vmdk", source_disk, vmdk)


def test_verify_accepts_our_ova(ova_path: Path) -> None:
    report = verify_ova(ova_path)
    assert report.manifest_algorithms == ("SHA256",)
    assert [d.capacity for d in report.disks] == [64 * 1024 * 1024]
    assert "sound OVA" in report.summary()


def test_same_disk_gives_byte_identical_ova(
    packaged: PackageResult, source_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    again = package_appliance(
        settings_for(tmp_path / "o"), "debian-12", version=VERSION, disk=source_disk, out=tmp_path
    )
    first = packaged.out_dir / f"{STEM}.ova"
    assert (tmp_path / f"{STEM}.ova").read_bytes() == first.read_bytes()
    assert again.artifacts[0].sha256 == packaged.artifacts[0].sha256


def test_source_date_epoch_sets_every_mtime(source_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    package_appliance(settings_for(tmp_path / "o"), "debian-12", version="7", disk=source_disk, out=tmp_path)
    assert {int(h[136:148].rstrip(b"\0 "), 8) for h in raw_headers(tmp_path / "debian-12-7.ova")} == {1700000000}


def test_other_formats_and_checksum_files(packaged: PackageResult, source_disk: Path) -> None:
    out = packaged.out_dir
    qcow2, raw = out / f"{STEM}.qcow2", out / f"{STEM}.raw"
    info = json.loads(sh("qemu-img", "info", "-f", "qcow2", "--output=json", qcow2))
    assert info["format-specific"]["data"]["compression-type"] == "zstd"
    assert qcow2.stat().st_size < source_disk.stat().st_size
    assert "identical" in sh("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", source_disk, qcow2)
    assert "identical" in sh("qemu-img", "compare", "-f", "qcow2", "-F", "raw", source_disk, raw)
    sh("sha256sum", "--check", "--strict", "SHA256SUMS", cwd=out)
    sh("sha512sum", "--check", "--strict", "SHA512SUMS", cwd=out)
    listed, problems = parse_sums((out / "SHA512SUMS").read_bytes(), "sha512")
    assert list(listed) == [f"{STEM}.ova", f"{STEM}.qcow2", f"{STEM}.raw"] and not problems
    for artifact in packaged.artifacts:
        data = (out / artifact.name).read_bytes()
        assert (artifact.size, artifact.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert artifact.sha512 == hashlib.sha512(data).hexdigest()
        assert (out / artifact.name).stat().st_mode & 0o777 == 0o644
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def _built_version(output: Path, version: str = "2026.11.21") -> Path:
    """A version folder as `invoke build` leaves it: build disk + manifest (no Packer needed here)."""
    version_dir = output / "debian-12" / version
    disk = make_disk(version_dir / "build" / f"debian-12-{version}.qcow2", 32)
    data = disk.read_bytes()
    manifest = BuildManifest(
        appliance="debian-12",
        version=version,
        created="2026-11-21T10:00:00Z",
        inputs_digest="0" * 64,
        inputs={},
        git_commit=None,
        tools={"qemu-img": "7.2"},
        accel="tcg",
        os={"family": "linux", "name": "Debian", "version": "12"},
        arch="x86_64",
        base=BaseRef("bootstrap", "bookworm", "0" * 64),
        packages=(),
        artifacts=(
            Artifact(
                f"build/{disk.name}",
                "build-disk",
                "qcow2",
                len(data),
                hashlib.sha256(data).hexdigest(),
                hashlib.sha512(data).hexdigest(),
            ),
        ),
        timings={"build": 1.0},
    )
    manifest.save(version_dir)
    return version_dir


def test_package_a_built_version_records_every_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    output = tmp_path / "output"
    version_dir = _built_version(output)
    result = package_appliance(settings_for(output), "debian-12")
    assert result.version == "2026.11.21" and result.out_dir == version_dir
    _, manifest = find_version(output, "debian-12")
    roles = {a.role: a for a in manifest.artifacts}
    assert set(roles) == {"build-disk", "ova", "qcow2", "sbom", "sha256sums", "sha512sums"}
    for role in ("ova", "qcow2", "sbom", "sha256sums", "sha512sums"):
        a = roles[role]
        data = (version_dir / a.name).read_bytes()
        assert (a.size, a.sha512) == (len(data), hashlib.sha512(data).hexdigest())
    assert roles["qcow2"].virtual_size == 32 * 1024 * 1024
    assert roles["ova"].name == "debian-12-2026.11.21.ova" and roles["ova"].format == "ova"
    # the SBOM is packaged next to the images and listed in the checksum files
    assert roles["sbom"].name == "debian-12-2026.11.21.cdx.json" and roles["sbom"].format == "json"
    assert f"{roles['sbom'].sha256}  debian-12-2026.11.21.cdx.json" in (version_dir / "SHA256SUMS").read_text()
    assert {"package.ova", "package.qcow2", "build"} <= set(manifest.timings)
    epoch = source_date_epoch("2026-11-21T10:00:00Z")
    assert {int(h[136:148].rstrip(b"\0 "), 8) for h in raw_headers(version_dir / result.artifacts[0].name)} == {epoch}
    verify_ova(version_dir / "debian-12-2026.11.21.ova")


def _signer(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vmi-pipeline test signer")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(__import__("datetime").datetime(2026, 1, 1))
        .not_valid_after(__import__("datetime").datetime(2036, 1, 1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def test_signed_ova_verifies_with_openssl(source_disk: Path, tmp_path: Path) -> None:
    key_path, cert_path = _signer(tmp_path, rsa.generate_private_key(public_exponent=65537, key_size=2048))
    out = tmp_path / "out"
    package_appliance(
        settings_for(tmp_path / "o"), "debian-12", version="1", disk=source_disk, out=out,
        sign_key=key_path, sign_cert=cert_path,
    )  # fmt: skip
    ova = out / "debian-12-1.ova"
    members = ova_members(ova)
    assert list(members) == ["debian-12-1.ovf", "debian-12-1.mf", "debian-12-1.cert", "debian-12-1-disk1.vmdk"]
    first, _, pem = members["debian-12-1.cert"].partition(b"\n")
    match = re.fullmatch(rb"SHA256\(debian-12-1\.mf\)= ([0-9a-f]+)", first)
    assert match and pem.startswith(b"-----BEGIN CERTIFICATE-----")
    (tmp_path / "mf").write_bytes(members["debian-12-1.mf"])
    (tmp_path / "sig").write_bytes(bytes.fromhex(match.group(1).decode()))
    (tmp_path / "cert").write_bytes(pem)
    sh("openssl", "x509", "-in", tmp_path / "cert", "-pubkey", "-noout", "-out", tmp_path / "pub")
    assert "Verified OK" in sh(
        "openssl", "dgst", "-sha256", "-verify", tmp_path / "pub", "-signature", tmp_path / "sig", tmp_path / "mf"
    )
    assert verify_ova(ova).signed


def test_signing_needs_a_matching_rsa_pair(source_disk: Path, tmp_path: Path) -> None:
    ec_key, ec_cert = _signer(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    settings = settings_for(tmp_path / "o")
    with pytest.raises(ConfigError, match="RSA"):
        package_appliance(
            settings, "debian-12", version="1", disk=source_disk, out=tmp_path, sign_key=ec_key, sign_cert=ec_cert
        )
    with pytest.raises(ConfigError, match="go together"):
        package_appliance(settings, "debian-12", version="1", disk=source_disk, out=tmp_path, sign_key=ec_key)
    assert not list(tmp_path.glob("*.ova"))
    assert not list(tmp_path.glob("*.qcow2")), "a bad signer must stop us before the background conversions"


def test_cli_package_and_verify(source_disk: Path, tmp_path: Path) -> None:
    invoke = [sys.executable, "-m", "invoke"]
    out = tmp_path / "out"
    proc = subprocess.run(
        [*invoke, "package", "--disk", str(source_disk), "--appliance", "debian-12", "--out", str(out),
         "--version", "3", "--profile", "vmware"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "debian-12-3.ova" in proc.stdout
    assert (
        b"<rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>"
        in ova_members(out / "debian-12-3.ova")["debian-12-3.ovf"]
    )
    wrong = subprocess.run(
        [*invoke, "package", "--disk", str(source_disk), "--appliance", "debian-12", "--out", str(out),
         "--profile", "hyperv"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert wrong.returncode == 2 and "--profile: 'hyperv' is not one of portable, vmware, virtualbox" in wrong.stderr
    ok = subprocess.run([*invoke, "verify-ova", str(out / "debian-12-3.ova")], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "sound OVA" in ok.stdout, ok.stderr
    broken = out / "broken.ova"
    data = bytearray((out / "debian-12-3.ova").read_bytes())
    data[-20000] ^= 0xFF  # inside the disk member
    broken.write_bytes(bytes(data))
    bad = subprocess.run([*invoke, "verify-ova", str(broken)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines and all(line.startswith(f"{broken}: ") for line in lines)
    assert any("debian-12-3-disk1.vmdk: SHA256 does not match the manifest" in line for line in lines)


def test_signing_key_and_certificate_must_match(source_disk: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    key_a, _ = _signer(tmp_path / "a", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    _, cert_b = _signer(tmp_path / "b", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ConfigError, match="does not match the key"):
        package_appliance(
            settings_for(tmp_path / "o"), "debian-12", version="1", disk=source_disk, out=tmp_path / "out",
            sign_key=key_a, sign_cert=cert_b,
        )  # fmt: skip
    assert not (tmp_path / "out" / "debian-12-1.ova").exists()


@pytest.mark.parametrize(
    ("env", "created", "version", "expected"),
    [
        ("1700000000", "2026-11-21T10:00:00Z", "2026.11.22", 1700000000),
        (None, "2026-11-21T10:00:00Z", "2026.11.22", 1795255200),
        (None, None, "2026.11.22.3", 1795305600),
        (None, None, "v1", 0),
    ],
)
def test_member_mtime_never_comes_from_the_clock(
    monkeypatch: pytest.MonkeyPatch, env: str | None, created: str | None, version: str, expected: int
) -> None:
    if env is None:
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    else:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", env)
    assert source_date_epoch(created, version) == expected


def test_bad_source_date_epoch_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ConfigError, match="SOURCE_DATE_EPOCH: 'yesterday' is not an integer"):
        source_date_epoch(None)


def test_cli_packages_the_newest_build(tmp_path: Path) -> None:
    output = tmp_path / "output"
    _built_version(output, "2026.11.20")
    version_dir = _built_version(output, "2026.11.21")
    env = {**os.environ, "VMI_OUTPUT_DIR": str(output)}
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "package", "--appliance", "debian-12", "--raw"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"recorded in {version_dir / 'manifest.json'}" in proc.stdout
    roles = {a.role for a in BuildManifest.load(version_dir).artifacts}
    assert roles == {"build-disk", "ova", "qcow2", "raw", "sbom", "sha256sums", "sha512sums"}
    assert not (output / "debian-12" / "2026.11.20" / "debian-12-2026.11.20.ova").exists()


def test_a_changed_build_disk_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "output"
    version_dir = _built_version(output)
    disk = version_dir / "build" / "debian-12-2026.11.21.qcow2"
    with open(disk, "ab") as f:
        f.write(b"\0" * 512)
    with pytest.raises(ArtifactError, match="the manifest recorded"):
        package_appliance(settings_for(output), "debian-12")
    assert not (version_dir / "debian-12-2026.11.21.ova").exists()


def test_ustar_limits_are_enforced_not_overflowed() -> None:
    from pipeline.formats.ova import USTAR_MAX_MEMBER, tar_header

    assert len(tar_header("disk.vmdk", USTAR_MAX_MEMBER, 0)) == 512
    with pytest.raises(ArtifactError, match="8 GiB"):
        tar_header("disk.vmdk", USTAR_MAX_MEMBER + 1, 0)
    for bad in ("../x", "/abs", "a/b", "x" * 101, "ünï"):
        with pytest.raises(ArtifactError, match="not a safe OVA member name"):
            tar_header(bad, 1, 0)


def test_tar_members_from_bytes_stream_and_chunks_give_the_same_archive() -> None:
    """A member's content may be bytes, an open stream or an iterator of chunks: same bytes out,
    and a member whose content is not the size announced is refused."""
    import io
    import tarfile

    from pipeline.formats.ova import BLOCK, RECORD, Member, write_tar

    data = bytes(range(256)) * 5
    archives = []
    for content in (data, io.BytesIO(data), iter([data[:700], data[700:]])):
        out = io.BytesIO()
        write_tar(out, [Member.from_bytes("a.ovf", b"<a/>"), Member("b.vmdk", len(data), content)], 7)
        archives.append(out.getvalue())
    assert archives[0] == archives[1] == archives[2] and len(archives[0]) % RECORD == 0
    with tarfile.open(fileobj=io.BytesIO(archives[0])) as tar:
        assert [(m.name, m.size, m.mtime) for m in tar.getmembers()] == [("a.ovf", 4, 7), ("b.vmdk", len(data), 7)]
        disk = tar.extractfile("b.vmdk")
        assert disk is not None and disk.read() == data
    with pytest.raises(ArtifactError, match=f"b.vmdk: {BLOCK} bytes, expected {BLOCK + 1}"):
        write_tar(io.BytesIO(), [Member("b.vmdk", BLOCK + 1, io.BytesIO(bytes(BLOCK)))], 0)


def test_package_bench_smoke_runs(tmp_path: Path) -> None:
    """CI runs the bench's smoke mode: a bench that crashes, or whose OVA does not verify, fails here."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "package_bench.py"), "--smoke", "--work", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^ratio ours/bare: \d+\.\d\d \(pairs", proc.stdout, re.M), proc.stdout
    assert re.search(r"^vmdk: ours [\d,]+ bytes, qemu-img [\d,]+ bytes: [+-]\d+\.\d %", proc.stdout, re.M), proc.stdout
    assert re.search(r"^load average at the end: \d+\.\d\d on \d+ CPUs$", proc.stdout, re.M), proc.stdout
