#!/bin/sh
# Seal for AlmaLinux: the same end states as provisioners/seal.sh (EGI H4-H17), with dnf and the
# RHEL file layout. Runs last, as root, with BUILD_USER set to the throwaway build account; what needs
# that account gone goes into /run/vmi-finish.sh, run by the template's shutdown_command.
set -eu
: "${BUILD_USER:?BUILD_USER must name the build account}"

say() { echo "seal: $*"; }
fail() { echo "seal: FAILED: $*" >&2; exit 1; }

# H6/H7: key-only SSH, no root login; sshd reads sshd_config.d/*.conf first and the first value wins
install -d -m 0755 /etc/ssh/sshd_config.d
cat > /etc/ssh/sshd_config.d/00-vmi-hardening.conf <<'CFG'
# written by vmi-pipeline packer_templates/almalinux-9/seal.sh
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitEmptyPasswords no
HostbasedAuthentication no
PermitUserEnvironment no
CFG
chmod 0600 /etc/ssh/sshd_config.d/00-vmi-hardening.conf
for who in "user=almalinux,host=client.example,addr=192.0.2.10" "user=root,host=client.example,addr=192.0.2.10"; do
    effective=$(sshd -T -C "$who")
    for want in "permitrootlogin no" "passwordauthentication no" "kbdinteractiveauthentication no" \
                "permitemptypasswords no" "hostbasedauthentication no" "permituserenvironment no"; do
        echo "$effective" | grep -qx "$want" || fail "sshd -T -C $who does not give '$want'"
    done
done
say "sshd effective settings: no root login, no passwords"

# H5: no SSH host keys (sshd-keygen makes new ones at first boot)
rm -f /etc/ssh/ssh_host_*
# H8: root locked, no empty passwords
passwd -l root >/dev/null
passwd -S root | grep -q "Password locked" || fail "root is not locked"
if awk -F: '$2 == "" { found = 1 } END { exit found ? 0 : 1 }' /etc/shadow; then
    fail "an account has an empty password field"
fi
# H10/H11: credentials and histories
rm -rf /root/.ssh /root/.cache /root/.bash_history /root/.lesshst /root/.viminfo /root/.python_history
# H4/H2: cloud-init state
cloud-init clean --logs --seed
rm -rf /var/lib/cloud/*
# H13: machine identity
: > /etc/machine-id
chmod 0444 /etc/machine-id
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret /etc/machine-info
echo localhost > /etc/hostname
# H16: network identity of the build VM
rm -f /etc/NetworkManager/system-connections/cloud-init-* /var/lib/NetworkManager/*.lease \
      /var/lib/NetworkManager/secret_key /var/lib/dhclient/*
# H12: package caches
dnf -q clean all
rm -rf /var/cache/dnf/*
# H14/H15: temporary folders and logs
find /tmp /var/tmp -mindepth 1 -delete 2>/dev/null || true
journalctl --relinquish-var 2>/dev/null || true
rm -rf /var/log/journal/*
find /var/log -type f \( -name '*.gz' -o -name '*-[0-9]*' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
say "host keys, credentials, cloud-init state, identity, caches, temp files and logs removed"

cat > /run/vmi-finish.sh <<FINISH
#!/bin/sh
# written by seal.sh: the last steps before power-off (H9, H10, H17)
set -u
rm -f /etc/sudoers.d/90-cloud-init-users
userdel --force --remove "$BUILD_USER" 2>/dev/null
getent passwd "$BUILD_USER" >/dev/null && { echo "finish: $BUILD_USER still exists" >&2; exit 1; }
rm -f /etc/passwd- /etc/shadow- /etc/group- /etc/gshadow- /var/spool/mail/"$BUILD_USER"
systemctl stop systemd-random-seed.service 2>/dev/null || true
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
rm -rf /var/log/journal/* /tmp/* /var/tmp/*
for f in /var/log/wtmp /var/log/btmp /var/log/lastlog; do [ -f "\$f" ] && : > "\$f"; done
sync
if ! fstrim -v /; then
    dd if=/dev/zero of=/vmi-zero bs=4M 2>/dev/null || true
    rm -f /vmi-zero
fi
sync
systemctl poweroff --no-wall
FINISH
chmod 0700 /run/vmi-finish.sh
say "sealed; /run/vmi-finish.sh removes $BUILD_USER and trims free space at shutdown"
