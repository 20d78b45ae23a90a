"""OCI push throughput: vmi-pipeline's registry client against `skopeo copy`, same file, same registry.

    .venv/bin/python bench/oci_bench.py [--size-mib 512] [--runs 1] [--smoke]

Starts Debian's docker-registry on a free loopback port (TLS from a throwaway CA, htpasswd auth: the
test fixture), writes one incompressible file, then times, each into a fresh repository so nothing is
skipped: our blob push (one PATCH streamed from disk, sha256 while reading),
the same plus the read-back publish does (download + sha256/sha512), and `skopeo copy --preserve-digests`
from an OCI layout holding the same file as the single layer of the same kind of manifest. Prints MiB/s
for each. The registry writes to the same disk on loopback; the figures compare clients, not stores.
Each client and run gets a fresh registry (one that already holds the blob lets a client skip the
transfer) and skopeo a fresh HOME (no blob-info cache).
``--smoke``: 8 MiB, one run (CI checks the bench still runs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.formats.oci import EMPTY_BLOB, EMPTY_DESCRIPTOR, MANIFEST_TYPE, canonical  # noqa: E402
from pipeline.fsutil import Digests, hash_file  # noqa: E402
from pipeline.repository import UploadTuning  # noqa: E402
from pipeline.repository.oci import OciRepository  # noqa: E402
from tests.publish.oci_registry import PASSWORD, USER, Registry, start_registry  # noqa: E402

MiB = 1024 * 1024


def write_file(path: Path, size: int) -> None:
    block = hashlib.sha512(b"oci bench").digest() * (MiB // 64)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(hashlib.sha256(i.to_bytes(8, "big")).digest() + block[32:])


def oci_layout(directory: Path, disk: Path, sha256: str, size: int) -> None:
    """An OCI image layout with the disk as the single layer (what skopeo copies)."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / sha256).symlink_to(disk)
    (blobs / str(EMPTY_DESCRIPTOR["digest"]).split(":")[1]).write_bytes(EMPTY_BLOB)
    manifest = canonical(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": EMPTY_DESCRIPTOR,
            "layers": [{"mediaType": "application/x-qemu-disk", "digest": f"sha256:{sha256}", "size": size}],
        }
    )
    digest = hashlib.sha256(manifest).hexdigest()
    (blobs / digest).write_bytes(manifest)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                "digest": f"sha256:{digest}",
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": "bench"},
            }
        ],
    }
    (directory / "index.json").write_text(json.dumps(index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="8 MiB, one run")
    args = parser.parse_args()
    size_mib, runs = (8, 1) if args.smoke else (args.size_mib, args.runs)
    with tempfile.TemporaryDirectory(prefix="oci-bench.", dir=ROOT / "work" if (ROOT / "work").is_dir() else None) as t:
        tmp = Path(t)
        disk = tmp / "disk.qcow2"
        write_file(disk, size_mib * MiB)
        digests = hash_file(disk)
        layout = tmp / "layout"
        oci_layout(layout, disk, digests.sha256, digests.size)
        results: dict[str, list[float]] = {"vmi push": [], "vmi push + read-back": [], "skopeo copy": []}
        for run in range(runs):
            # a fresh registry for each client and run: one that holds the blob already lets a client
            # skip the transfer (skopeo's second copy of 256 MiB takes 0.3 s instead of 2.6 s)
            for client in ("vmi", "skopeo"):
                registries = start_registry(tmp / f"registry-{client}-{run}")
                registry: Registry = next(registries)
                try:
                    if client == "vmi":
                        push_ours(registry, disk, digests, results)
                    else:
                        results["skopeo copy"].append(copy_with_skopeo(registry, layout, tmp))
                finally:
                    registries.close()
                    shutil.rmtree(registry.root, ignore_errors=True)
        print(f"{size_mib} MiB to docker-registry on loopback (TLS, basic auth), {runs} run(s), best of each:")
        for label, seconds in results.items():
            best = min(seconds)
            print(f"  {label:<22} {size_mib / best:8.1f} MiB/s  ({best:.2f} s)")


def push_ours(registry: Registry, disk: Path, digests: Digests, results: dict[str, list[float]]) -> None:
    env = {"VMI_OCI_USERNAME": USER, "VMI_OCI_PASSWORD": PASSWORD, "VMI_OCI_CA": str(registry.ca)}
    repository = OciRepository(f"oci://{registry.host}/bench", UploadTuning(), environ=env)
    repo = f"bench/r{uuid.uuid4().hex[:8]}"
    start = time.monotonic()
    repository.client.push_file(repo, disk, digests)
    pushed = time.monotonic() - start
    read = repository.client.blob_digests(repo, f"sha256:{digests.sha256}", digests.size)
    assert read == digests, "read-back differs"
    results["vmi push"].append(pushed)
    results["vmi push + read-back"].append(time.monotonic() - start)


def copy_with_skopeo(registry: Registry, layout: Path, tmp: Path) -> float:
    start = time.monotonic()
    copied = subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--preserve-digests",
            f"--dest-cert-dir={registry.cert_dir}",
            f"--dest-creds={USER}:{PASSWORD}",
            f"oci:{layout}:bench",
            f"docker://{registry.host}/bench/s{uuid.uuid4().hex[:8]}:bench",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        # a fresh HOME: no blob-info cache from an earlier run
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.mkdtemp(dir=tmp)},
    )
    if copied.returncode != 0:
        raise SystemExit(f"skopeo copy failed: {copied.stderr.strip()}")
    return time.monotonic() - start


if __name__ == "__main__":
    main()
