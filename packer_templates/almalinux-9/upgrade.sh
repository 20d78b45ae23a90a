#!/bin/sh
# H1 for AlmaLinux: every update applied before sealing, and proof that nothing is pending.
# Idempotent.
set -eu
dnf -y -q upgrade --refresh
dnf -y -q autoremove
if ! dnf -q check-update >/dev/null; then
    echo "upgrade: updates are still pending" >&2
    dnf -q check-update >&2 || true
    exit 1
fi
# the newest kernel boots by default
grub2-mkconfig -o /boot/grub2/grub.cfg >/dev/null
echo "upgrade: system up to date"
