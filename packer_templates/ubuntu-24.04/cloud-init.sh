#!/bin/sh
# H2/H3 for Ubuntu: as provisioners/cloud-init.sh, with Ubuntu's default user "ubuntu". The cloud
# image ships cloud-init; this keeps only the datasources research clouds use and key-only login.
# Idempotent: the drop-in is rewritten whole.
set -eu

install -d -m 0755 /etc/cloud/cloud.cfg.d
cat > /etc/cloud/cloud.cfg.d/01_vmi.cfg <<'CFG'
# written by vmi-pipeline packer_templates/ubuntu-24.04/cloud-init.sh
ssh_pwauth: false
disable_root: true
ssh_deletekeys: true
ssh_genkeytypes: [rsa, ecdsa, ed25519]
manage_etc_hosts: true
preserve_hostname: false
datasource_list: [NoCloud, ConfigDrive, OpenStack, OpenNebula, None]
datasource:
  OpenNebula:
    dsmode: net
system_info:
  default_user:
    name: ubuntu
    lock_passwd: true
    gecos: Ubuntu
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
CFG
chmod 0644 /etc/cloud/cloud.cfg.d/01_vmi.cfg

# the cloud image's own datasource list would override ours (90_dpkg.cfg sorts after 01_vmi.cfg)
rm -f /etc/cloud/cloud.cfg.d/90_dpkg.cfg /etc/cloud/cloud.cfg.d/99-installer.cfg \
      /etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg \
      /etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg

for unit in cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service; do
    systemctl enable "$unit" >/dev/null 2>&1 || systemctl enable "$unit"
done

cloud-init schema --config-file /etc/cloud/cloud.cfg.d/01_vmi.cfg >/dev/null
echo "cloud-init: configured (default user ubuntu, key-only SSH)"
