#!/bin/sh
# H1: every update applied before sealing, and proof that nothing is pending. One script for every
# distribution family (apt: Debian, Ubuntu; dnf: AlmaLinux and other EL). A bootstrapped Debian base
# was made from the suite, its -updates and its -security suites moments ago, so this is normally a
# no-op that refreshes the index: package work belongs in the chroot, an emulated guest runs it
# 20-50x slower. Idempotent.
set -eu

. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "* | *" ubuntu "*) family=apt ;;
    *" rhel "* | *" fedora "* | *" centos "*) family=dnf ;;
    *) echo "upgrade: unknown distribution family (ID=${ID:-} ID_LIKE=${ID_LIKE:-})" >&2; exit 1 ;;
esac

if [ "$family" = apt ]; then
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
else
    dnf -y -q upgrade --refresh
    dnf -y -q autoremove
    if ! dnf -q check-update >/dev/null; then
        echo "upgrade: updates are still pending" >&2
        dnf -q check-update >&2 || true
        exit 1
    fi
    # the newest kernel boots by default
    grub2-mkconfig -o /boot/grub2/grub.cfg >/dev/null
fi
echo "upgrade: system up to date, boot menu refreshed"
