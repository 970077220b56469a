#!/bin/sh
# Sets which units of the KubeDNA layer start at boot. Run after the layer's files are in
# place: by kubedna-image (from the build host, with the image's root as $1), by the packer
# templates and by Ubuntu autoinstall (inside the target, without argument).
#   - etcd: installed disabled; kubedna-agent starts kubedna-etcd.service when it forms the
#     control plane. The distribution's own etcd.service never runs.
#   - apt timers: disabled; the agent runs apt-daily(-upgrade).service itself, one node at a
#     time under the cluster's maintenance lease.
#   - containerd: enabled. kubelet: enabled only where the kubelet binary is present.
#   - kubedna-agent: left to cloud-init, which enables it once agent.yaml is written.
#   - kubedna-install: enabled; it runs only when the kernel command line has kubedna.install=.
set -eu
root="${1:-/}"
sc() { systemctl --root="$root" "$@"; }
sc disable etcd.service kubedna-etcd.service apt-daily.timer apt-daily-upgrade.timer 2>/dev/null || true
sc enable containerd.service
if [ -f "$root/usr/lib/systemd/system/kubedna-install.service" ]; then
    sc enable kubedna-install.service
fi
if [ -x "$root/usr/bin/kubelet" ]; then
    sc enable kubelet.service
else
    sc disable kubelet.service
fi
