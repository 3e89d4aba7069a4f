#!/bin/sh
# Build the serving image from the repo (what `make image` runs).
#
#   container/build.sh [IMAGE]       env: BASE, ARCHIVE, VERSION, TORCH_INDEX
#
# BASE: the public base (the Containerfile's default) when this machine has it or can
# pull it; otherwise a stand-in built from Debian packages (container/build-base.sh).
# The machine's own pip settings that a build needs (a local wheel directory, a CA
# bundle) are mounted for the pip step only, never copied into the image.
set -eu
cd "$(dirname "$0")/.."
IMAGE=${1:-${IMAGE:-localhost/sentiment-serve:dev}}
PUBLIC_BASE=docker.io/library/debian:bookworm-slim
# tagged by the script that builds it, so that a change to the script builds a new one
LOCAL_BASE=localhost/sentiment-base:bookworm-$(sha256sum container/build-base.sh | cut -c1-12)
ARCHIVE=${ARCHIVE:-model_store/sentiment.mar}
VERSION=${VERSION:-$(git describe --always --dirty 2>/dev/null || echo dev)}
SOURCE=${SOURCE:-$(git remote get-url origin 2>/dev/null || echo unknown)}
TORCH_INDEX=${TORCH_INDEX-https://download.pytorch.org/whl/cpu}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/container/containers.conf}

[ -f "$ARCHIVE" ] || { echo "build.sh: $ARCHIVE is missing (make archive builds it)" >&2; exit 1; }
if [ -z "${BASE:-}" ]; then
    if podman image exists "$PUBLIC_BASE" || timeout 60 podman pull -q "$PUBLIC_BASE" >/dev/null 2>&1; then
        BASE=$PUBLIC_BASE
    else
        echo "build.sh: no registry answers; using a stand-in for $PUBLIC_BASE built from Debian packages"
        container/build-base.sh "$LOCAL_BASE"
        BASE=$LOCAL_BASE
    fi
fi

set -- --build-arg "BASE=$BASE" --build-arg "ARCHIVE=$ARCHIVE" --build-arg "VERSION=$VERSION" \
       --build-arg "SOURCE=$SOURCE"
python3 -c "import urllib.request as u; u.urlopen('$TORCH_INDEX/torch/', timeout=5)" 2>/dev/null \
    || TORCH_INDEX=""  # the machine's pip offers the CPU wheel itself (find-links below)
set -- "$@" --build-arg "TORCH_INDEX=$TORCH_INDEX"
# pip's settings from every file it reads (site, user, PIP_CONFIG_FILE), through the venv's
# pip: the system python3 may have none, and `pip config get` reads the user's file only.
# A PIP_* variable wins, as for pip itself.
pip_setting() {
    { .venv/bin/python -m pip config list 2>/dev/null || python3 -m pip config list 2>/dev/null || true; } \
        | sed -n "s/^[a-z:]*[.]$1='\(.*\)'\$/\1/p" | tail -n 1
}
links=${PIP_FIND_LINKS:-$(pip_setting find-links)}
if [ -n "$links" ] && [ -d "$links" ]; then
    set -- "$@" --build-context "wheels=$links" --build-arg PIP_FIND_LINKS=/opt/wheels
fi
cert=${PIP_CERT:-$(pip_setting cert)}
if [ -n "$cert" ] && [ -f "$cert" ]; then
    set -- "$@" --secret "id=ca,src=$cert" --build-arg PIP_CERT=/run/secrets/ca.crt
fi

started=$(date +%s)
podman build --pull=never -f container/Containerfile -t "$IMAGE" "$@" .
echo "build.sh: $IMAGE built on $BASE in $(( $(date +%s) - started ))s"
podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "build.sh: image size %.0f MB\n", $1 / 1e6}'
