"""The build VM's NoCloud user-data: one key-only sudo account, and no more first-boot work than the
build needs (its host keys are removed when the image is sealed)."""

from __future__ import annotations

import yaml

from pipeline.builder.seed import build_user_data


def test_build_user_data_is_a_key_only_account_with_one_quick_host_key() -> None:
    text = build_user_data("vmi-build", "ssh-ed25519 AAAAC3Nza build")
    assert text.startswith("#cloud-config\n")
    config = yaml.safe_load(text)
    (user,) = config["users"]
    assert user["name"] == "vmi-build" and user["lock_passwd"] is True
    assert user["ssh_authorized_keys"] == ["ssh-ed25519 AAAAC3Nza build"]
    assert config["ssh_pwauth"] is False and config["disable_root"] is True
    # no RSA key generation on the way to the build's SSH: seconds of emulated CPU under TCG
    assert config["ssh_genkeytypes"] == ["ed25519"]
