#!/usr/bin/env bash
# Installs the system packages tabby's build, tests and demo need, and only
# those that are missing. The one place that knows them: the Makefile and
# .ci/run call it; tests never install anything themselves.
set -euo pipefail

# package  -> why
packages=(
  iproute2         # ip netns, ip link: the netns harness and tests
  iptables         # felix and service NAT (nft and legacy backends)
  ipset            # natOutgoing and host sets
  conntrack        # inspecting and flushing conntrack in tests
  iputils-ping     # ping between test namespaces
  tcpdump          # captures when a test fails
  kmod             # modprobe inside the test VM
  qemu-system-x86  # the VM tier (IPIP, which this kernel lacks)
  busybox-static   # the VM's initramfs
  cpio             # packs the initramfs
  containernetworking-plugins # portmap, host-local, ptp: chained and compared with tabby
  ca-certificates  # apt-get download over https mirrors
  containerd       # the real-cluster tier (test/clustertest): container runtime
  runc             # ... and its OCI runtime
)

if ! command -v go >/dev/null 2>&1; then
  echo "deps: Go is not on PATH (tabby needs Go >= $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod"))" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "deps: missing packages ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
