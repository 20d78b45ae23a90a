#!/bin/sh
# Seal the image so every instance starts clean and only key-based SSH works (EGI H5-H17; systemd's
# "Safely Building Images"; virt-sysprep's default operations). Runs last, as root, with BUILD_USER set
# to the throwaway account Packer logs in with. What cannot be done while that account is logged in
# (removing it, its sudoers rule, then trimming free space) goes into /run/vmi-finish.sh, which the
# template's shutdown_command runs: /run is tmpfs, so the script itself never reaches the disk.
# One script for every distribution family (apt: Debian, Ubuntu; dnf: AlmaLinux and other EL), from
# /etc/os-release. Idempotent: every step states an end state.
set -eu
: "${BUILD_USER:?BUILD_USER must name the build account}"

. /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "* | *" ubuntu "*) family=apt ;;
    *" rhel "* | *" fedora "* | *" centos "*) family=dnf ;;
    *) echo "seal: unknown distribution family (ID=${ID:-} ID_LIKE=${ID_LIKE:-})" >&2; exit 1 ;;
esac
default_user=${VMI_DEFAULT_USER:-$ID}

say() { echo "seal: $*"; }
fail() { echo "seal: FAILED: $*" >&2; exit 1; }

# --- H6/H7: SSH is key-only and root cannot log in. sshd uses the FIRST value it reads and Debian's
# sshd_config includes sshd_config.d/*.conf at its top, so a 00- drop-in wins over anything later
# (cloud-init's 50-cloud-init.conf included). The effective configuration is checked with sshd -T.
install -d -m 0755 /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/00-vmi-hardening.conf <<'CFG'
# written by vmi-pipeline provisioners/seal.sh
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
HostbasedAuthentication no
PermitUserEnvironment no
CFG
chmod 0644 /etc/ssh/sshd_config.d/00-vmi-hardening.conf
# sshd -T needs host keys to run; they still exist here and are removed just below
for who in "user=$default_user,host=client.example,addr=192.0.2.10" "user=root,host=client.example,addr=192.0.2.10"; do
    effective=$(sshd -T -C "$who")
    for want in "permitrootlogin no" "passwordauthentication no" "kbdinteractiveauthentication no" \
                "permitemptypasswords no" "hostbasedauthentication no" "permituserenvironment no"; do
        echo "$effective" | grep -qx "$want" || fail "sshd -T -C $who does not give '$want'"
    done
done
say "sshd effective settings: no root login, no passwords"

# --- H5: no SSH host keys; cloud-init (ssh_deletekeys) and sshd's keygen make new ones per instance
rm -f /etc/ssh/ssh_host_*
say "SSH host keys removed"

# --- H8: root locked; no account with an empty password
passwd -l root >/dev/null
# Debian's passwd -S says "root L ...", EL's "root LK ... (Password locked.)"
passwd -S root | awk '{ exit ($2 == "L" || $2 == "LK") ? 0 : 1 }' || fail "root is not locked"
if awk -F: '$2 == "" { found = 1 } END { exit found ? 0 : 1 }' /etc/shadow; then
    fail "an account has an empty password field"
fi
say "root locked, no empty passwords"

# --- H10/H11: credentials, caches and histories of root and users (the build user goes at shutdown)
rm -rf /root/.ssh /root/.cache /root/.ansible /root/.bash_history /root/.lesshst /root/.viminfo \
       /root/.python_history /root/.wget-hsts
for home in /home/*; do
    [ -d "$home" ] || continue
    [ "$(basename "$home")" = "$BUILD_USER" ] && continue
    rm -rf "$home/.ssh" "$home/.cache" "$home/.bash_history" "$home/.lesshst" "$home/.viminfo" \
           "$home/.python_history"
done
say "credentials and histories removed"

# --- H4/H2: cloud-init state, seed and logs go: the next boot is a new instance
cloud-init clean --logs --seed
rm -rf /var/lib/cloud/*
rm -f /etc/network/interfaces.d/50-cloud-init /etc/network/interfaces.d/50-cloud-init.cfg
rm -f /etc/sudoers.d/90-cloud-init-users.dpkg-* 2>/dev/null || true
say "cloud-init state cleaned"

# --- H13: machine identity (systemd.io/BUILDING_IMAGES)
: > /etc/machine-id
chmod 0444 /etc/machine-id
[ -L /var/lib/dbus/machine-id ] || rm -f /var/lib/dbus/machine-id
rm -f /var/lib/systemd/random-seed /loader/random-seed /var/lib/systemd/credential.secret /etc/machine-info
echo localhost > /etc/hostname
hostname localhost  # the running name must resolve too, or every later sudo complains
cat > /etc/hosts <<'HOSTS'
127.0.0.1	localhost
::1		localhost ip6-localhost ip6-loopback
ff02::1		ip6-allnodes
ff02::2		ip6-allrouters
HOSTS
# a resolver file written by the build's DHCP client goes; systemd-resolved's stub link stays
[ -L /etc/resolv.conf ] || rm -f /etc/resolv.conf
rm -f /etc/mailname
say "machine-id emptied, random-seed and credential.secret removed, hostname generic"

# --- H16: no network identity of the build VM
rm -f /etc/udev/rules.d/70-persistent-net.rules /etc/udev/rules.d/75-persistent-net-generator.rules
rm -f /var/lib/dhcp/*.leases /var/lib/dhcp/dhclient*
rm -f /etc/systemd/network/10-cloud-init-*.network /etc/netplan/50-cloud-init.yaml
rm -f /etc/NetworkManager/system-connections/cloud-init-* /var/lib/NetworkManager/*.lease \
      /var/lib/NetworkManager/secret_key /var/lib/dhclient/*
say "network identity removed"

# --- H12: package caches and lists. Each Debian source names its archive key (signed-by), so a key
# another repository adds to trusted.gpg.d can never vouch for Debian's packages (the audit's
# apt-signed-by check). The bootstrap writes one-line entries without options.
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
if [ "${ID:-}" = debian ] && [ -f /etc/apt/sources.list ] && [ -f "$keyring" ]; then
    sed -i -E "s#^(deb(-src)?)[[:space:]]+((https?|file|cdrom):)#\1 [signed-by=$keyring] \3#" /etc/apt/sources.list
    say "apt sources pinned to $keyring"
fi
if [ "$family" = apt ]; then
    apt-get -q clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old /var/log/installer
    install -d -m 0755 /var/lib/apt/lists/partial
else
    dnf -q clean all
    rm -rf /var/cache/dnf/*
fi
say "package lists and caches cleaned"

# --- H14: temporary folders (this script lives in /tmp: the running shell keeps it open)
find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true  # sockets of running services may vanish under us
say "/tmp and /var/tmp emptied"

# --- H15: logs. The journal is moved back to /run first so nothing more lands in /var/log/journal.
journalctl --relinquish-var 2>/dev/null || true
rm -rf /var/log/journal/*
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*-[0-9]*' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
say "logs emptied"

# --- what needs the build account gone: run by the template's shutdown_command
cat > /run/vmi-finish.sh <<FINISH
#!/bin/sh
# written by seal.sh: the last steps before power-off (H9, H10, H17)
set -u
rm -f /etc/sudoers.d/90-cloud-init-users
userdel --force --remove "$BUILD_USER" 2>/dev/null
getent passwd "$BUILD_USER" >/dev/null && { echo "finish: $BUILD_USER still exists" >&2; exit 1; }
rm -f /etc/passwd- /etc/shadow- /etc/group- /etc/gshadow- /etc/subuid- /etc/subgid-
rm -f /var/mail/"$BUILD_USER" /var/spool/mail/"$BUILD_USER"
# systemd saves a fresh random seed when this unit stops: stop it now, then delete the seed
systemctl stop systemd-random-seed.service 2>/dev/null || true
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -rf /var/log/journal/* /tmp/* /var/tmp/*
# stopping gettys (UtmpIdentifier=) and systemd-update-utmp writes wtmp records: stop them first
systemctl stop 'getty@*.service' 'serial-getty@*.service' systemd-update-utmp.service 2>/dev/null || true
for f in /var/log/wtmp /var/log/btmp /var/log/lastlog; do [ -f "\$f" ] && : > "\$f"; done
sync
# H17: free space reads as zeros (discard=unmap turns trimmed blocks into holes); dd is the fallback
if ! fstrim -v /; then
    dd if=/dev/zero of=/vmi-zero bs=4M 2>/dev/null || true
    rm -f /vmi-zero
fi
sync
systemctl poweroff --no-wall
FINISH
chmod 0700 /run/vmi-finish.sh
say "sealed; /run/vmi-finish.sh removes $BUILD_USER and trims free space at shutdown"
