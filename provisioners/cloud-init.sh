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

# sshd starts once cloud-init's network stage is done (the stage writes the user's key and the host
# keys): growing the root partition and file system moves from that stage to the front of the config
# stage, so the first login does not wait for it (seconds in an emulated guest). The lists are this
# cloud-init's own (from its cloud.cfg), with only those two modules moved.
python3 - <<'PY'
import yaml

MOVED = ("growpart", "resizefs")


def name(module):
    return module[0] if isinstance(module, list) else module


with open("/etc/cloud/cloud.cfg") as f:
    cfg = yaml.safe_load(f)
init = [m for m in cfg["cloud_init_modules"] if name(m) not in MOVED]
moved = [m for m in cfg["cloud_init_modules"] if name(m) in MOVED]
config = moved + [m for m in cfg["cloud_config_modules"] if name(m) not in MOVED]
with open("/etc/cloud/cloud.cfg.d/02_vmi_boot.cfg", "w") as f:
    f.write("# written by vmi-pipeline provisioners/cloud-init.sh: the root grows after sshd's start\n")
    yaml.safe_dump({"cloud_init_modules": init, "cloud_config_modules": config}, f, default_flow_style=False)
PY
chmod 0644 /etc/cloud/cloud.cfg.d/02_vmi_boot.cfg

# The config stage (growpart and resizefs first) starts once sshd listens: beside sshd's start it took
# the emulated CPU that start needs. Ordering only: a system without sshd runs the stage as before.
install -d -m 0755 /etc/systemd/system/cloud-config.service.d
cat > /etc/systemd/system/cloud-config.service.d/10-vmi-after-sshd.conf <<'UNIT'
# written by vmi-pipeline provisioners/cloud-init.sh: cloud-init's config stage starts after sshd
[Unit]
After=ssh.service sshd.service
UNIT
chmod 0644 /etc/systemd/system/cloud-config.service.d/10-vmi-after-sshd.conf

# sshd starts without a test run first: Debian's ssh.service runs `sshd -t` and then sshd, two starts of
# sshd (each loading its libraries, configuration and host keys) on the way to the first login. sshd
# checks the same configuration at its start and fails the same way; the reload keeps its test, so a
# broken file still never replaces a running configuration. Only where the unit has that test.
if grep -qx 'ExecStartPre=/usr/sbin/sshd -t' /lib/systemd/system/ssh.service 2>/dev/null; then
    install -d -m 0755 /etc/systemd/system/ssh.service.d
    cat > /etc/systemd/system/ssh.service.d/10-vmi-no-pretest.conf <<'UNIT'
# written by vmi-pipeline provisioners/cloud-init.sh: sshd checks its configuration when it starts
[Service]
ExecStartPre=
UNIT
    chmod 0644 /etc/systemd/system/ssh.service.d/10-vmi-no-pretest.conf
fi

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
