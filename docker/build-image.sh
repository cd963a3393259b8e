#!/usr/bin/env bash
# Build the ServiceMaker image as $IMAGE:<version> and $IMAGE:latest (default IMAGE=localhost/servicemaker) with
# podman, doing its own set-up:
#   - CONTAINERS_CONF: docker/containers.conf unless already set (root podman without systemd: runc, cgroupfs,
#     host network, file events, raised ulimits);
#   - BASE: the base image; when none is given, localhost/debian-local:bookworm, made here with debootstrap
#     (root) if it does not exist yet;
#   - the CA bundle this machine trusts (PIP_CERT, SSL_CERT_FILE, pip's global.cert, Python's default) goes to the
#     build as a secret, so that pip works behind an intercepting proxy; no layer keeps it;
#   - the find-links folder of this machine's pip configuration, if any, is mounted read-only into the build.
# Environment: IMAGE, BASE, CONTAINER_ENGINE (podman), DEBIAN_MIRROR, DEBIAN_SUITE (bookworm), BASE_PACKAGES,
# PYTHON (python3); RUNTIME_APT_PACKAGES, BUILD_APT_PACKAGES, EXTRA_PIP_PACKAGES (passed on as build args);
# EXTRA_BUILD_ARGS (words appended to the engine's build command).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-localhost/servicemaker}
ENGINE=${CONTAINER_ENGINE:-podman}
PYTHON=${PYTHON:-python3}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_BASE=localhost/debian-local:${SUITE}
# What the local base holds: Python with venv, the shared libpython the Triton Python-backend stub links (its name
# follows the suite's Python: 3.11 on bookworm), CA certificates, useradd.
BASE_PACKAGES=${BASE_PACKAGES:-python3,python3-venv,libpython3.11,ca-certificates,passwd}

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { say "error: $1"; [ -n "${2:-}" ] && say "hint: $2"; exit 2; }

command -v "$ENGINE" >/dev/null || die "$ENGINE is not installed" \
    "install podman (Debian: apt-get install podman buildah runc), or set CONTAINER_ENGINE"
if [ -z "${CONTAINERS_CONF:-}" ] && [ "$(id -u)" = 0 ]; then
    export CONTAINERS_CONF="$ROOT/docker/containers.conf"
fi

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/servicemaker/__init__.py")
[ -n "$VERSION" ] || die "no __version__ in servicemaker/__init__.py"

# The base image.
if [ -z "${BASE:-}" ]; then
    BASE=$LOCAL_BASE
    if ! "$ENGINE" image exists "$BASE" 2>/dev/null; then
        [ "$(id -u)" = 0 ] || die "$BASE does not exist and making it needs root (debootstrap)" \
            "run as root, or give an existing image: BASE=... make image"
        command -v debootstrap >/dev/null || die "$BASE does not exist and debootstrap is not installed" \
            "apt-get install debootstrap, or give an existing image: BASE=... make image"
        rootfs=$(mktemp -d)
        trap 'rm -rf "$rootfs"' EXIT
        say "making $BASE with debootstrap ($SUITE from $MIRROR, about a minute)"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
            || { tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
        rm -f "$rootfs.log"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | "$ENGINE" import - "$BASE" >/dev/null 2>&1 || die "$ENGINE import of $BASE failed"
        rm -rf "$rootfs"
        trap - EXIT
        say "made $BASE"
    fi
fi

# The CA bundle: the one this machine's pip or Python trusts.
ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
if [ -z "$ca" ]; then
    ca=$("$PYTHON" -m pip config get global.cert 2>/dev/null || true)
fi
if [ -z "$ca" ] || [ ! -s "$ca" ]; then
    ca=$("$PYTHON" -c 'import ssl; p = ssl.get_default_verify_paths(); print(p.cafile or "")' 2>/dev/null || true)
fi
if [ -z "$ca" ] || [ ! -s "$ca" ]; then
    for candidate in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        [ -s "$candidate" ] && { ca=$candidate; break; }
    done
fi
args=(--format docker --network host --layers
      --build-arg "BASE=$BASE" --build-arg "VERSION=$VERSION"
      -t "$IMAGE:$VERSION" -t "$IMAGE:latest" -f "$ROOT/Dockerfile")
if [ -n "$ca" ] && [ -s "$ca" ]; then
    args+=(--secret "id=ca,src=$ca")
else
    # the secret mount needs a source: an empty file means "no extra CA"
    empty=$(mktemp)
    trap 'rm -f "$empty"' EXIT
    args+=(--secret "id=ca,src=$empty")
fi

# pip's find-links folder, mounted read-only.
links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
for folder in $links; do
    folder=${folder#file://}
    if [ -d "$folder" ]; then
        args+=(--volume "$folder:/mnt/find-links:ro" --build-arg "PIP_FIND_LINKS=/mnt/find-links")
        break
    fi
done

# Build args given as environment variables (values may hold spaces).
for var in RUNTIME_APT_PACKAGES BUILD_APT_PACKAGES EXTRA_PIP_PACKAGES; do
    if [ -n "${!var:-}" ]; then args+=(--build-arg "$var=${!var}"); fi
done

if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    args+=(--build-arg "REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)")
    # the remote's URL without any user or token in it
    source_url=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null | sed -E 's#//[^/@]*@#//#' || true)
    if [ -n "$source_url" ]; then args+=(--build-arg "SOURCE=$source_url"); fi
fi

say "building $IMAGE:$VERSION and $IMAGE:latest on $BASE"
start=$(date +%s)
# shellcheck disable=SC2086
"$ENGINE" build "${args[@]}" ${EXTRA_BUILD_ARGS:-} "$ROOT"
say "built $IMAGE:$VERSION and $IMAGE:latest in $(( $(date +%s) - start )) s"
