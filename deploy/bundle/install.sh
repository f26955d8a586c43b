#!/bin/sh
# Install a pandalm-fed site from this bundle alone (`pandalm-agent bundle`); no network is used.
#
#   ./install.sh [--prefix /opt/pandalm] [--home /var/lib/pandalm/cache]
#                [--config /etc/pandalm/site.toml] [--data-dir /var/lib/pandalm/data]
#                [--site-name NAME] [--python python3.11]
#
# PREFIX/.venv: the agent's virtual environment, installed with pip --no-index from wheelhouse/.
# HOME/models: the bundled models (HOME is PANDALM_HOME, written to PREFIX/pandalm.env).
# CONFIG: the site config, from site.toml.template; an existing CONFIG is kept.
# Paths match deploy/systemd/pandalm-agent.service. Run it again to repair an install.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
prefix=/opt/pandalm
home=/var/lib/pandalm/cache
config=/etc/pandalm/site.toml
data_dir=/var/lib/pandalm/data
site_name=$(hostname -s 2>/dev/null || echo site)
python=""

die() {
    echo "install.sh: $*" >&2
    exit 1
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            sed -n '2,11p' "$0"
            exit 0
            ;;
        --prefix | --home | --config | --data-dir | --site-name | --python)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --prefix) prefix=$2 ;;
                --home) home=$2 ;;
                --config) config=$2 ;;
                --data-dir) data_dir=$2 ;;
                --site-name) site_name=$2 ;;
                --python) python=$2 ;;
            esac
            shift 2
            ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

for file in bundle.env requirements.txt SHA256SUMS site.toml.template; do
    [ -f "$here/$file" ] || die "$here/$file is missing: not a complete pandalm-fed bundle"
done
PANDALM_VERSION="" PYTHON_VERSION="" MACHINE="" LLAMA_CPU_BASELINE="" LLAMA_CPU_FLAGS=""
. "$here/bundle.env"

[ "$(uname -m)" = "$MACHINE" ] ||
    die "bundle.env: built for $MACHINE, this machine is $(uname -m)"
# The bundled llama.cpp kernels use these extensions; a CPU without one dies with SIGILL at the
# first judgment, so refuse now. PANDALM_CPUINFO: another cpuinfo file (tests).
cpuinfo=${PANDALM_CPUINFO:-/proc/cpuinfo}
if [ -n "$LLAMA_CPU_FLAGS" ]; then
    host_flags=$(sed -n 's/^flags[[:space:]]*:\(.*\)$/\1/p' "$cpuinfo" 2>/dev/null | head -n 1)
    [ -n "$host_flags" ] || die "$cpuinfo: no CPU flags to check against the bundle's $LLAMA_CPU_BASELINE llama.cpp build"
    missing=""
    for flag in $LLAMA_CPU_FLAGS; do
        case " $host_flags " in
            *" $flag "*) ;;
            *) missing="$missing $flag" ;;
        esac
    done
    [ -z "$missing" ] || die "this CPU lacks${missing} ($cpuinfo), which the bundle's llama.cpp build ($LLAMA_CPU_BASELINE) needs; use a bundle built with the portable default (make setup LLAMA_CPU=x86-64-v3) or on a machine like this one"
fi
if [ -z "$python" ]; then
    python=$(command -v "python$PYTHON_VERSION" || command -v python3 || true)
    [ -n "$python" ] || die "no python$PYTHON_VERSION on PATH: pass --python"
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "--python $python does not run"
[ "$version" = "$PYTHON_VERSION" ] ||
    die "bundle.env: the wheels are for Python $PYTHON_VERSION, $python is $version"

# pip as the bundle wants it: no config files, no inherited PIP_* settings, no index at all.
for var in $(env | sed -n 's/^\(PIP_[A-Za-z0-9_]*\)=.*/\1/p'); do
    unset "$var"
done
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

echo "checking the bundle's files (SHA256SUMS)"
"$python" - "$here" <<'EOF' || die "SHA256SUMS: the bundle is damaged; copy it again"
import hashlib, sys
from pathlib import Path

root = Path(sys.argv[1])
bad = []
for line in (root / "SHA256SUMS").read_text().splitlines():
    digest, name = line.split("  ", 1)
    path = root / name
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        bad.append(f"{name}: missing")
        continue
    if h.hexdigest() != digest:
        bad.append(f"{name}: checksum mismatch")
for entry in bad:
    print(f"  {entry}", file=sys.stderr)
sys.exit(1 if bad else 0)
EOF

venv=$prefix/.venv
echo "installing pandalm-fed $PANDALM_VERSION into $venv (offline)"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" ||
        die "$python cannot create a venv (Debian/Ubuntu: install python$PYTHON_VERSION-venv)"
fi
"$venv/bin/python" -m pip install --no-index --find-links "$here/wheelhouse" \
    --only-binary=:all: --quiet --requirement "$here/requirements.txt"
"$venv/bin/python" -m pip check

echo "copying the models into $home/models"
mkdir -p "$home/models"
cp -R "$here/models/." "$home/models/"

if [ -e "$config" ]; then
    echo "kept the existing $config"
else
    mkdir -p "$(dirname "$config")"
    "$venv/bin/python" - "$here/site.toml.template" "$config" "$home/models" "$site_name" \
        "$data_dir" <<'EOF'
import sys
from pathlib import Path

template, config, models, name, data_dir = sys.argv[1:]
text = Path(template).read_text()
for key, value in (("@MODELS@", models), ("@SITE_NAME@", name), ("@DATA_DIR@", data_dir)):
    text = text.replace(key, value.replace("\\", "\\\\").replace('"', '\\"'))
Path(config).write_text(text)
EOF
    echo "wrote $config (edit [data], [flower] superlink and root_certificates)"
fi

printf 'PANDALM_HOME=%s\nHF_HUB_OFFLINE=1\nTRANSFORMERS_OFFLINE=1\n' "$home" >"$prefix/pandalm.env"
cat <<EOF
done. Next:
  export PANDALM_HOME=$home      # also in $prefix/pandalm.env
  $venv/bin/pandalm-agent enroll --config $config    # send the printed key to the operator
  $venv/bin/pandalm-agent start --config $config
EOF
