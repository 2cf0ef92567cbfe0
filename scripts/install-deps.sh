#!/usr/bin/env bash
# Install the Debian packages nodelet needs.
#   install-deps.sh build   what building needs (protoc for the CRI bindings,
#                           libseccomp for libcontainer)
#   install-deps.sh test    that, plus what the tests and benchmarks run:
#                           busybox (test images), docker-registry + skopeo
#                           (local registry), containerd + runc (the
#                           benchmarks' reference), iproute2, systemd
#                           (`systemd-analyze verify` checks the unit files;
#                           systemd need not be PID 1)
set -euo pipefail

build_pkgs=(protobuf-compiler pkg-config libseccomp-dev gcc libc6-dev)
test_pkgs=(busybox-static docker-registry skopeo containerd runc iproute2 procps etcd-server etcd-client systemd nftables containernetworking-plugins)

want=("${build_pkgs[@]}")
if [[ "${1:-build}" == "test" ]]; then
  want+=("${test_pkgs[@]}")
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
