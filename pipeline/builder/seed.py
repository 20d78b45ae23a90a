"""NoCloud seeds and throwaway SSH keys: how a build (or a test) gets into a freshly booted image.

The build seed creates a build account that only the per-build ed25519 key can log in to; seal.sh
and its finish step remove that account, its sudoers rule and the key before power-off.
"""

from __future__ import annotations

import email.mime.multipart
import email.mime.text
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline import run


@dataclass(frozen=True)
class SshKey:
    private: Path
    public_text: str


def generate_ssh_key(directory: Path, comment: str = "vmi-build") -> SshKey:
    """A new passphrase-less ed25519 key pair in ``directory`` (mode 0700)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    private = directory / "id_ed25519"
    private.unlink(missing_ok=True)
    run.run([run.find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)])
    return SshKey(private, (directory / "id_ed25519.pub").read_text().strip())


def meta_data(instance_id: str, hostname: str, public_keys: tuple[str, ...] = ()) -> str:
    """NoCloud meta-data (JSON is valid YAML). ``public_keys`` go to the default user, as a cloud
    passes the user's key outside user-data."""
    doc: dict[str, object] = {"instance-id": instance_id, "local-hostname": hostname}
    if public_keys:
        doc["public-keys"] = list(public_keys)
    return json.dumps(doc) + "\n"


def build_user_data(user: str, public_key: str) -> str:
    """#cloud-config for a build: one key-only sudo account, nothing else changed."""
    config = {
        "users": [
            {
                "name": user,
                "gecos": "vmi-pipeline build (removed before power-off)",
                "shell": "/bin/sh",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": [public_key],
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
        "locale": False,
        "manage_etc_hosts": True,
        # the build VM's host keys are removed when it is sealed: one quick key type is enough for
        # Packer, and an RSA key costs seconds of emulated CPU before sshd starts
        "ssh_genkeytypes": ["ed25519"],
    }
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"


def multipart_user_data(parts: list[tuple[str, str]]) -> str:
    """Several user-data parts (``(mime subtype, text)``, e.g. ``("x-shellscript", "#!/bin/sh ...")``)
    as one MIME multipart document, which cloud-init splits again (bookworm's cloud-localds takes one file)."""
    message = email.mime.multipart.MIMEMultipart()
    for index, (subtype, text) in enumerate(parts):
        part = email.mime.text.MIMEText(text, subtype, "utf-8")
        part.add_header("Content-Disposition", "attachment", filename=f"part-{index}")
        message.attach(part)
    return message.as_string()


def write_seed_dir(directory: Path, meta: str, user_data: str) -> Path:
    """``meta-data`` and ``user-data`` files in ``directory`` (Packer's cd_files turns them into the CD)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta-data").write_text(meta)
    (directory / "user-data").write_text(user_data)
    return directory


def write_seed_iso(iso: Path, meta: str, user_data: str, network_config: str | None = None) -> Path:
    """A NoCloud seed ISO (volume label ``cidata``) for booting an image outside Packer."""
    staging = iso.parent / (iso.name + ".d")
    write_seed_dir(staging, meta, user_data)
    files = [str(staging / "meta-data"), str(staging / "user-data")]
    if network_config is not None:
        (staging / "network-config").write_text(network_config)
        files.append(str(staging / "network-config"))
    run.run([run.find_tool("genisoimage"), "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock",
             *files])  # fmt: skip
    return iso
