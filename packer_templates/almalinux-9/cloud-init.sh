#!/bin/sh
# H2/H3 for AlmaLinux: cloud-init (shipped by the GenericCloud image) for research clouds, default
# user "almalinux", key-only login. Idempotent: the drop-in is rewritten whole.
set -eu

install -d -m 0755 /etc/cloud/cloud.cfg.d
cat > /etc/cloud/cloud.cfg.d/01_vmi.cfg <<'CFG'
# written by vmi-pipeline packer_templates/almalinux-9/cloud-init.sh
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
    name: almalinux
    lock_passwd: true
    gecos: AlmaLinux
    groups: [adm, systemd-journal, wheel]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
CFG
chmod 0644 /etc/cloud/cloud.cfg.d/01_vmi.cfg

for unit in cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service; do
    systemctl enable "$unit"
done
cloud-init schema --config-file /etc/cloud/cloud.cfg.d/01_vmi.cfg >/dev/null
echo "cloud-init: configured (default user almalinux, key-only SSH)"
