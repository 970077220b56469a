#!/bin/sh
# Applies the KubeDNA layer to a running Ubuntu 24.04 (packer provisioner): the same packages
# kubedna-image installs with mmdebstrap, the same files (layer.tar), the same unit states
# (usr/lib/kubedna/apply-layer-finish.sh from the layer) and the same scrubbing of
# machine identity, so that every server made from the snapshot boots as new.
set -eu
: "${KUBEDNA_LAYER_TAR:?path of layer.tar}"
export DEBIAN_FRONTEND=noninteractive

apt-get update
apt-get install -y --no-install-recommends \
    systemd systemd-sysv dbus udev cloud-init cloud-guest-utils containerd runc etcd-server \
    iptables conntrack socat ethtool ebtables iproute2 apt unattended-upgrades openssh-server \
    e2fsprogs fdisk ca-certificates kmod procps util-linux mount netbase sudo zstd

tar --extract --no-same-owner --file "$KUBEDNA_LAYER_TAR" --directory /
sh /usr/lib/kubedna/apply-layer-finish.sh /

# Nothing of this build may identify the nodes made from it.
if id packer >/dev/null 2>&1; then userdel --force --remove packer || true; fi
rm -f /etc/ssh/ssh_host_* /var/lib/dbus/machine-id "$KUBEDNA_LAYER_TAR"
truncate -s 0 /etc/machine-id
apt-get clean
rm -rf /var/lib/apt/lists/*
cloud-init clean --logs --seed
sync
