#!/bin/sh
# H1: every update applied before sealing. The base was bootstrapped from bookworm, bookworm-updates
# and bookworm-security moments ago, so this is normally a no-op; it still refreshes the index and
# proves nothing is pending. Package work is done in the chroot: inside the emulated guest it is
# 20-50x slower. Idempotent.
set -eu
export DEBIAN_FRONTEND=noninteractive
apt_opts="-q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"

# translations are not needed to upgrade, and parsing them is slow in an emulated guest
apt-get -q -o Acquire::Languages=none update
# shellcheck disable=SC2086
apt-get $apt_opts full-upgrade
# shellcheck disable=SC2086
apt-get $apt_opts autoremove --purge

pending=$(apt-get -s full-upgrade | grep -c '^Inst ' || true)
if [ "$pending" -ne 0 ]; then
    echo "upgrade: $pending package(s) still not upgraded" >&2
    exit 1
fi

# The chroot cannot write a boot menu for a loop-mounted root (Debian's 10_linux refuses it):
# write the real one now that the system runs from its disk.
update-grub
echo "upgrade: system up to date, boot menu refreshed"
