#!/bin/sh
# H2/H3: cloud-init configured for contextualisation on research clouds: the user's key goes to the
# default user "debian", password login stays off, and only the datasources clouds here use are probed
# (NoCloud, ConfigDrive, OpenStack, OpenNebula; None last so a boot without any still finishes).
# Idempotent: the drop-in is rewritten whole.
set -eu

install -d -m 0755 /etc/cloud/cloud.cfg.d
cat > /etc/cloud/cloud.cfg.d/01_vmi.cfg <<'CFG'
#cloud-config
# written by vmi-pipeline provisioners/cloud-init.sh
ssh_pwauth: false
disable_root: true
ssh_deletekeys: true
ssh_genkeytypes: [rsa, ecdsa, ed25519]
manage_etc_hosts: true
preserve_hostname: false
# no locale is generated in the image; C.UTF-8 is always there
locale: false
datasource_list: [NoCloud, ConfigDrive, OpenStack, OpenNebula, None]
datasource:
  OpenNebula:
    dsmode: net
system_info:
  default_user:
    name: debian
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
CFG
chmod 0644 /etc/cloud/cloud.cfg.d/01_vmi.cfg

# installer leftovers (H4) that would override the settings above
rm -f /etc/cloud/cloud.cfg.d/99-installer.cfg /etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg \
      /etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg

echo 'LANG=C.UTF-8' > /etc/default/locale

# the package enabled them in the chroot; enabling again runs update-rc.d (slow perl in an emulated guest)
for unit in cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service; do
    [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" = enabled ] || systemctl enable "$unit"
done

echo "cloud-init: configured (default user debian, key-only SSH)"
