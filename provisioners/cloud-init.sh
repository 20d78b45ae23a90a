#!/bin/sh
# H2/H3: cloud-init configured for contextualisation on research clouds: the user's key goes to the
# distribution's default user (debian, ubuntu, almalinux: the ID in /etc/os-release), password login
# stays off, and only the datasources clouds here use are probed (NoCloud, ConfigDrive, OpenStack,
# OpenNebula; None last so a boot without any still finishes). One script for every distribution:
# the family (apt: Debian, Ubuntu; dnf: AlmaLinux and other EL) decides the admin group and what the
# image ships. Idempotent: the drop-in is rewritten whole.
set -eu

. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "* | *" ubuntu "*) family=apt admin_groups="adm, sudo" ;;
    *" rhel "* | *" fedora "* | *" centos "*) family=dnf admin_groups="adm, systemd-journal, wheel" ;;
    *) echo "cloud-init: unknown distribution family (ID=${ID:-} ID_LIKE=${ID_LIKE:-})" >&2; exit 1 ;;
esac
default_user=${VMI_DEFAULT_USER:-$ID}
gecos=${NAME%% *}

install -d -m 0755 /etc/cloud/cloud.cfg.d
cat > /etc/cloud/cloud.cfg.d/01_vmi.cfg <<CFG
#cloud-config
# written by vmi-pipeline provisioners/cloud-init.sh
ssh_pwauth: false
disable_root: true
ssh_deletekeys: true
# no RSA host key: making one takes seconds in an emulated guest, on the way to sshd starting
ssh_genkeytypes: [ecdsa, ed25519]
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
    name: $default_user
    lock_passwd: true
    gecos: $gecos
    groups: [$admin_groups]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
CFG
chmod 0644 /etc/cloud/cloud.cfg.d/01_vmi.cfg

# installer and image leftovers (H4) that would override the settings above (Ubuntu's 90_dpkg.cfg
# carries its own datasource list and sorts after 01_vmi.cfg)
rm -f /etc/cloud/cloud.cfg.d/90_dpkg.cfg /etc/cloud/cloud.cfg.d/99-installer.cfg \
      /etc/cloud/cloud.cfg.d/curtin-preserve-sources.cfg \
      /etc/cloud/cloud.cfg.d/subiquity-disable-cloudinit-networking.cfg

[ "$family" = apt ] && echo 'LANG=C.UTF-8' > /etc/default/locale

# the package enabled them already; enabling again runs update-rc.d (slow perl in an emulated guest).
# cloud-init 24.3+ (trixie) renamed cloud-init.service to cloud-init-network.service and added
# cloud-init-main.service: enable the units this version ships.
for unit in cloud-init-local.service cloud-init.service cloud-init-network.service cloud-init-main.service \
            cloud-config.service cloud-final.service; do
    [ -e "/lib/systemd/system/$unit" ] || [ -e "/usr/lib/systemd/system/$unit" ] || continue
    [ "$(systemctl is-enabled "$unit" 2>/dev/null || true)" = enabled ] || systemctl enable "$unit"
done

echo "cloud-init: configured for $ID ($family; default user $default_user, key-only SSH)"
