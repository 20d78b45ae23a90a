"""Upload throughput: vmi-pipeline's uploader against `aws s3 cp`, same file, same moto endpoint.

    .venv/bin/python bench/upload_bench.py [--size-mib 1024] [--runs 1]
    .venv/bin/python bench/upload_bench.py --smoke

Starts moto's S3 server on a free loopback port, writes one incompressible file, then times:
our ``put`` (hash while reading, SHA-256 per part, conditional complete, journal), our ``put`` plus
the read-back verification publish does, and ``aws s3 cp`` (awscli, installed in the venv for this
bench only). Each object is deleted before the next run so the server's memory stays bounded.
Prints MiB/s for each, with the machine's core count and load average. moto is the bottleneck on
loopback; the figures compare clients, not stores.

--smoke: an 8 MiB file in 5 MiB parts (so the multipart path runs), one run; ``aws s3 cp`` only if
awscli is installed (it is a bench-only dependency, absent from CI).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.fsutil import hash_file  # noqa: E402
from pipeline.repository import UploadTuning  # noqa: E402
from pipeline.repository.s3 import S3Repository  # noqa: E402

BIN = Path(sys.executable).parent
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit("moto_server did not start")


def machine() -> str:
    """Cores and load average, printed with every set of figures (the machine is shared)."""
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    return f"machine: {os.cpu_count()} cores, load average {load} (1/5/15 min)"


def timed(label: str, size: int, fn: object, results: dict[str, list[float]]) -> None:
    start = time.monotonic()
    fn()  # type: ignore[operator]
    seconds = time.monotonic() - start
    rate = size / 1048576 / seconds
    results.setdefault(label, []).append(rate)
    print(f"  {label:<34} {seconds:6.1f} s  {rate:6.1f} MiB/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="8 MiB in 5 MiB parts, one run")
    args = parser.parse_args()
    tuning = UploadTuning(progress=False)
    if args.smoke:
        args.size_mib, args.runs = 8, 1
        tuning = UploadTuning(part_size=5 * 1048576, multipart_threshold=5 * 1048576, progress=False)
    os.environ.update(ENV)
    aws = BIN / "aws" if (BIN / "aws").exists() else None
    if aws is None and not args.smoke:
        raise SystemExit(f"{BIN / 'aws'} not found: .venv/bin/pip install awscli (bench-only dependency)")

    workdir = Path(tempfile.mkdtemp(prefix="upload-bench-", dir=ROOT / "work" if (ROOT / "work").is_dir() else None))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    try:
        wait_for(port)
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(request_checksum_calculation="when_required", response_checksum_validation="when_required"),
        )
        client.create_bucket(Bucket="bench")
        path = workdir / "image.bin"
        size = args.size_mib * 1048576
        with open(path, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1048576))
        digests = hash_file(path)  # in a real publish these come from the build manifest
        os.sync()  # no writeback of the fresh file competing with the first timed run
        repo = S3Repository("bench", "", "http://127.0.0.1/", endpoint_url=endpoint, tuning=tuning)
        print(f"{args.size_mib} MiB file, moto on {endpoint}, {args.runs} run(s); aws: {aws or 'not installed'}")
        print(machine())

        def ours() -> None:
            repo.put("ours/image.bin", path, digests)

        def ours_verified() -> None:
            repo.put("verified/image.bin", path, digests)
            problems = repo.verify("verified/image.bin", digests)
            assert not problems, problems

        def awscli() -> None:
            subprocess.run(
                [
                    str(aws),
                    "s3",
                    "cp",
                    "--only-show-errors",
                    "--endpoint-url",
                    endpoint,
                    str(path),
                    "s3://bench/aws/image.bin",
                ],
                check=True,
                env={**os.environ, **ENV},
            )

        results: dict[str, list[float]] = {}
        contenders = [
            ("vmi put", ours, "ours/image.bin"),
            ("vmi put + read-back verify", ours_verified, "verified/image.bin"),
        ]
        if aws is not None:
            contenders.append(("aws s3 cp", awscli, "aws/image.bin"))
        for _ in range(args.runs):
            for label, fn, key in contenders:
                timed(label, size, fn, results)
                assert client.head_object(Bucket="bench", Key=key)["ContentLength"] == size
                client.delete_object(Bucket="bench", Key=key)
        print(f"after: {machine()}")
        print("best of runs (MiB/s; other work on the machine skews single runs):")
        for label, rates in results.items():
            print(f"  {label:<34} {max(rates):6.1f}")
    finally:
        server.terminate()
        server.wait(10)
        for p in workdir.iterdir():
            p.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()
