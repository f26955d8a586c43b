#!/usr/bin/env bash
# Build the coordinator and CPU agent images of deploy/ and check the container engine runs them.
#
#   deploy/compose-check.sh probe    can this machine run a container at all? (seconds)
#   deploy/compose-check.sh base     + a python:3.11-slim stand-in from Debian (no registry)
#   deploy/compose-check.sh build    + both images from deploy/docker (long: pip installs the
#                                      project and builds llama.cpp inside the image)
# Running the Compose file's coordinator and 3 sites is not automated yet (deploy/GUIDE.md).
#
# Each stage fails with exit status 3 and one line `compose-check: STAGE: REASON` naming the
# engine's own error when the sandbox forbids it (CI reads that line); 0 when it passed.
# Findings on the development VM (Firecracker, root without CAP_SYS_RESOURCE, cgroup v1+v2
# hybrid): crun refuses both the default rlimits and hybrid cgroups, runc with lowered rlimits
# runs containers; see deploy/GUIDE.md "Containers on the development machines".
set -uo pipefail

STAGE=${1:-probe}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${COMPOSE_CHECK_DIR:-/tmp/pandalm-compose-check}
ENGINE=${ENGINE:-$(command -v podman || command -v docker || true)}
BASE=docker.io/library/python:3.11-slim
mkdir -p "$WORK"

fail() { echo "compose-check: $1: $2" >&2; exit 3; }
last_error() { grep -v '^\s*$' "$1" | tail -n 1; }

# What makes the engine's OCI runtime work here, in a containers.conf of its own (podman and
# podman-compose read CONTAINERS_CONF; the machine's files stay as they are): rlimits no higher
# than this process's own (raising them needs CAP_SYS_RESOURCE; the engine's defaults, nofile
# 1048576 and a large nproc, are refused, and so was nproc 48184 while 20000 passed), and runc
# where cgroups are mounted in hybrid mode (crun 1.8 refuses "cgroups in hybrid mode").
export CONTAINERS_CONF="$WORK/containers.conf"
{
  echo '[containers]'
  echo "default_ulimits = [\"nofile=$(ulimit -Sn):$(ulimit -Hn)\", \"nproc=4096:4096\"]"
  if [ -d /sys/fs/cgroup/unified ] && command -v runc >/dev/null; then
    printf '[engine]\nruntime = "runc"\n'
  fi
} >"$CONTAINERS_CONF"
engine() { "$ENGINE" "$@"; }

probe() {
  [ -n "$ENGINE" ] && command -v "$ENGINE" >/dev/null \
    || fail probe "no container engine (podman or docker) on PATH${ENGINE:+: $ENGINE}"
  if ! engine image exists "$BASE" 2>/dev/null; then
    make_base || return
  fi
  engine run --rm --network none "$BASE" python3 -c 'print("ok")' \
    >"$WORK/probe.log" 2>&1 || fail probe "$(last_error "$WORK/probe.log")"
  echo "compose-check: probe: $ENGINE runs containers ($(tr '\n' ' ' <"$CONTAINERS_CONF"))"
}

make_base() {
  # No registry is reachable: Debian bookworm's own python3 (3.11) from its archive stands in
  # for the official python:3.11-slim; /usr/local/bin/python3 as the Dockerfiles expect.
  command -v debootstrap >/dev/null || fail base "debootstrap is not installed"
  local rootfs="$WORK/rootfs"
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates,make \
      bookworm "$rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
      || fail base "debootstrap: $(last_error "$WORK/debootstrap.log")"
  fi
  # A build machine behind a TLS-inspecting proxy trusts extra CAs; the image's apt and pip
  # (pip reads /etc/pip.conf, not the system store) must trust them too.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1 \
      || fail base "update-ca-certificates in the base image failed"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
  fi
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  tar -C "$rootfs" -c . | engine import --change 'CMD ["python3"]' - "$BASE" >"$WORK/import.log" 2>&1 \
    || fail base "import: $(last_error "$WORK/import.log")"
}

build() {
  for image in coordinator agent-cpu; do
    engine build --network host -t "localhost/pandalm-$image" \
      -f "$ROOT/deploy/docker/Dockerfile.$image" "$ROOT" >"$WORK/build-$image.log" 2>&1 \
      || fail build "$image: $(last_error "$WORK/build-$image.log") (log: $WORK/build-$image.log)"
    echo "compose-check: build: localhost/pandalm-$image built"
  done
}

case "$STAGE" in
  probe) probe ;;
  base) make_base && probe ;;
  build) probe && build ;;
  *) echo "usage: $0 probe|base|build" >&2; exit 2 ;;
esac
