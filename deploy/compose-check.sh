#!/usr/bin/env bash
# Build the coordinator and CPU agent images of deploy/ and check the container engine runs them.
#
#   deploy/compose-check.sh probe    can this machine run a container at all? (seconds)
#   deploy/compose-check.sh base     + a python:3.11-slim stand-in from Debian (no registry)
#   deploy/compose-check.sh build    + both images from deploy/docker (long: pip installs the
#                                      project and builds llama.cpp inside the image)
#   deploy/compose-check.sh up       + the Compose file's coordinator and 3 sites on this host
#                                      (podman-compose; small settings, a 4-config space): the
#                                      sites enrolled and registered, a run to its end
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

images_built() {
  engine image exists localhost/pandalm-coordinator && engine image exists localhost/pandalm-agent-cpu
}

build() {
  for image in coordinator agent-cpu; do
    engine build --network host -t "localhost/pandalm-$image" \
      -f "$ROOT/deploy/docker/Dockerfile.$image" "$ROOT" >"$WORK/build-$image.log" 2>&1 \
      || fail build "$image: $(last_error "$WORK/build-$image.log") (log: $WORK/build-$image.log)"
    echo "compose-check: build: localhost/pandalm-$image built"
  done
}

# The trial's files: deploy/compose.yaml as shipped, its config made by the images' own CLIs.
write_config() {
  local dir=$1 n
  mkdir -p "$dir/config"
  cp "$ROOT/deploy/compose.yaml" "$dir/compose.yaml"
  printf 'services:\n  coordinator: {image: localhost/pandalm-coordinator}\n' >"$dir/images.yaml"
  for n in 1 2 3; do
    printf '  site-%s: {image: localhost/pandalm-agent-cpu}\n' "$n" >>"$dir/images.yaml"
  done
  engine run --rm -v "$dir/config:/out" localhost/pandalm-coordinator certs init --out /out/certs \
    --san coordinator --san 127.0.0.1 >"$WORK/certs.log" 2>&1 || fail up "certs: $(last_error "$WORK/certs.log")"
  printf '[[grid]]\noptimizer = "adamw"\nlearning_rate = [2e-4, 1e-4]\nscheduler = "linear"\nepochs = [1, 2]\n' \
    >"$dir/config/space.toml"
  cat >"$dir/config/federation.toml" <<'TOML'
[run]
name = "compose-check"
space = "/etc/pandalm/space.toml"
state_dir = "/var/lib/pandalm"
[selection]
min_sites = 3
validation_items = 4
blocks = 2
secure_aggregation = "when-possible"
[superlink]
address = "coordinator:9092"
certificates = "/etc/pandalm/certs"
TOML
  for n in 1 2 3; do
    cat >"$dir/config/site-$n.toml" <<TOML
[site]
name = "site-$n"
data_dir = "/var/lib/pandalm"
[data]
builtin_seed = $n
train_examples = 8
validation_items = 4
[model]
max_length = 128
batch_size = 4
max_steps_per_epoch = 1
max_new_tokens = 8
[flower]
superlink = "coordinator:9092"
root_certificates = "/etc/pandalm/certs/ca.crt"
TOML
  done
}

up() {
  command -v podman-compose >/dev/null || fail up "podman-compose is not installed"
  local dir="$WORK/trial" project=pandalm-compose-check n
  local compose=(podman-compose -p "$project" -f "$dir/compose.yaml" -f "$dir/images.yaml")
  "${compose[@]}" down >/dev/null 2>&1
  for n in coordinator-state site-1 site-2 site-3; do  # a trial starts from empty volumes
    engine volume rm -f "${project}_$n" >/dev/null 2>&1
  done
  rm -rf "$dir"
  write_config "$dir"
  for n in 1 2 3; do  # each site's key pair in its own volume; the public key to the coordinator
    engine volume create "${project}_site-$n" >/dev/null
    engine run --rm -v "$dir/config:/etc/pandalm:ro" -v "${project}_site-$n:/var/lib/pandalm" \
      localhost/pandalm-agent-cpu enroll --config "/etc/pandalm/site-$n.toml" >"$WORK/enroll-$n.log" 2>&1 \
      || fail up "enroll site-$n: $(last_error "$WORK/enroll-$n.log")"
    tail -n 1 "$WORK/enroll-$n.log" >"$dir/config/site-$n.pub"
  done
  # podman-compose 1.0 ignores profiles: name the default services
  "${compose[@]}" up -d --no-build coordinator site-1 site-2 site-3 >"$WORK/up.log" 2>&1 \
    || fail up "$(last_error "$WORK/up.log")"
  local coordinator="${project}_coordinator_1"
  # The coordinator may exit before its SuperLink listens (podman's DNS answering late for its
  # own name: "gaierror: [Errno -3] Temporary failure in name resolution"): start it again.
  for n in 1 2 3; do
    timeout 300 bash -c "until $ENGINE exec $coordinator pandalm-coordinator sites add site-$n \
      /etc/pandalm/site-$n.pub --config /etc/pandalm/federation.toml; do
      $ENGINE start $coordinator >/dev/null; sleep 10; done" \
      >"$WORK/sites-add.log" 2>&1 || fail up "sites add site-$n: $(last_error "$WORK/sites-add.log")"
  done
  timeout "${COMPOSE_CHECK_RUN_SECONDS:-1800}" "$ENGINE" wait "$coordinator" >"$WORK/wait.log" 2>&1 \
    || fail up "the run did not end in ${COMPOSE_CHECK_RUN_SECONDS:-1800} s"
  engine logs "$coordinator" >"$WORK/coordinator.log" 2>&1
  [ "$(engine inspect -f '{{.State.ExitCode}}' "$coordinator")" = 0 ] \
    || fail up "the coordinator exited with an error: $(last_error "$WORK/coordinator.log")"
  grep -q "best config" "$WORK/coordinator.log" || fail up "no best config in the coordinator's log"
  echo "compose-check: up: a coordinator and 3 sites ran a federation in containers"
  "${compose[@]}" down -v >/dev/null 2>&1
}

case "$STAGE" in
  probe) probe ;;
  base) make_base && probe ;;
  build) probe && build ;;
  up) probe && { images_built || build; } && up ;;
  *) echo "usage: $0 probe|base|build|up" >&2; exit 2 ;;
esac
