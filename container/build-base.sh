#!/bin/sh
# Build, from Debian packages, a local image that stands in for the public base the
# Containerfile names (debian:bookworm-slim plus the packages it would install), for
# machines that reach no image registry: mmdebstrap with this machine's own apt
# sources, then `podman import`. Skips when the tag exists; FORCE=1 rebuilds.
#
#   container/build-base.sh [TAG]        (make image runs it)
set -eu

TAG=${1:-localhost/sentiment-base:bookworm}
PACKAGES=python3,python3-venv,openjdk-17-jre-headless,nginx-light,libnginx-mod-http-js,libnginx-mod-stream,libnginx-mod-http-headers-more-filter,ca-certificates,procps

if [ "${FORCE:-0}" != 1 ] && podman image exists "$TAG"; then
    echo "build-base: $TAG exists (FORCE=1 rebuilds it)"
    exit 0
fi
command -v mmdebstrap >/dev/null || { echo "build-base: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }

work=$(mktemp -d /tmp/sentiment-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
# minbase as in debian:*-slim; no docs, man pages or locales (the slim images drop them
# too); the merged-usr hook avoids usrmerge and the perl it pulls in. openjdk's postinst
# needs /usr/share/man/man1 even when man pages are left out.
mmdebstrap \
    --mode=root --variant=minbase --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --include="$PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --essential-hook='mkdir -p "$1"/usr/share/man/man1' \
    --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log "$1"/usr/lib/python3*/test' \
    bookworm "$work/rootfs.tar"
podman import \
    --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV=LANG=C.UTF-8' \
    --change 'CMD=["/bin/bash"]' \
    --message "mmdebstrap bookworm minbase + $PACKAGES" \
    "$work/rootfs.tar" "$TAG" >/dev/null
echo "build-base: $TAG built in $(( $(date +%s) - started ))s"
