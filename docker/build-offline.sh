#!/usr/bin/env bash
# Build docker/Dockerfile.cpu where public image registries are out of reach but a Debian
# mirror and a PyPI index are not (the development machines): podman/buildah from apt, a
# Debian bookworm base made with debootstrap and imported, then the ordinary Dockerfile on
# that base. Then a smoke test: `tokalign demo --quick` inside the image, network off.
#
#   bash docker/build-offline.sh            # all steps; each is skipped when already done
#   STEPS="smoke" bash docker/build-offline.sh
#
# Run as root (rootful podman). Work files (the root filesystem, logs) go to $WORK, never
# into the repository. Timings are appended to $WORK/timings.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-/var/tmp/tokalign-image}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=${SUITE:-bookworm}  # python3 is 3.11, as in python:3.11-slim
BASE=${BASE:-localhost/tokalign-base:$SUITE}
IMAGE=${IMAGE:-localhost/tokalign:cpu}
STEPS=${STEPS:-"tools rootfs base image smoke"}
NICE=${NICE:-nice -n 10}
# This machine's pip sources, passed to the build as build arguments (not kept in the image):
# the CA bundle the HTTPS egress needs, and a folder of local wheels (the CPU torch build).
HOST_CERT=${HOST_CERT:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
WHEELS=${WHEELS:-${PIP_FIND_LINKS:-}}
INDEX=${INDEX:-https://pypi.org/simple}
# runc, not Debian's default crun: crun refuses hybrid cgroup v1/v2 hosts ("cgroups in hybrid
# mode not supported"). Explicit limits: podman's defaults (nofile 1048576, nproc = host max)
# exceed what a process without CAP_SYS_RESOURCE may set ("error setting rlimit ... not
# permitted"), which is the case inside a sandboxed VM.
PODMAN=(podman --runtime "${RUNTIME:-runc}")
LIMITS=(--ulimit nofile=16384:16384 --ulimit nproc=8192:8192)
mkdir -p "$WORK"

timed() {  # timed NAME CMD...: run, log to $WORK/NAME.log, record wall seconds
  local name=$1 t0=$SECONDS
  shift
  echo "== $name: $* (log: $WORK/$name.log)"
  if "$@" >"$WORK/$name.log" 2>&1; then
    echo "$name $((SECONDS - t0)) s ok" | tee -a "$WORK/timings.txt"
  else
    echo "$name $((SECONDS - t0)) s FAILED" | tee -a "$WORK/timings.txt"
    tail -30 "$WORK/$name.log"
    return 1
  fi
}

want() { [[ " $STEPS " == *" $1 "* ]]; }

if want tools; then
  missing=()
  for exe in podman buildah debootstrap runc; do command -v "$exe" >/dev/null || missing+=("$exe"); done
  if ((${#missing[@]})); then
    timed tools env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      podman buildah debootstrap runc fuse-overlayfs uidmap slirp4netns
  fi
fi

if want rootfs && ! podman image exists "$BASE"; then
  # minbase + Python: the Dockerfile installs build-essential, curl and git itself (apt).
  rm -rf "$WORK/rootfs"
  timed debootstrap $NICE debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates "$SUITE" "$WORK/rootfs" "$MIRROR"
fi

if want base && ! podman image exists "$BASE"; then
  # python:3.11-slim has `python` and `pip` first on PATH and installs into them; Debian's
  # own python3 refuses pip installs (PEP 668), so the base carries a venv on PATH instead.
  timed venv chroot "$WORK/rootfs" python3 -m venv /opt/python
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"* "$WORK/rootfs/var/cache/apt/"*.bin
  timed import sh -c "tar -C '$WORK/rootfs' --numeric-owner -cf - . | podman import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD [\"python\"]' - '$BASE'"
fi

if want image; then
  args=(--network host --build-arg "BASE_IMAGE=$BASE" --build-arg "TORCH_INDEX_URL=$INDEX"
        --build-arg "PIP_INDEX_URL=$INDEX")
  if [ -f "$HOST_CERT" ]; then
    args+=(-v "$(dirname "$HOST_CERT"):/mnt/host-certs:ro"
           --build-arg "PIP_CERT=/mnt/host-certs/$(basename "$HOST_CERT")")
  fi
  if [ -n "$WHEELS" ] && [ -d "$WHEELS" ]; then
    args+=(-v "$WHEELS:/mnt/wheels:ro" --build-arg PIP_FIND_LINKS=/mnt/wheels)
  fi
  timed build $NICE "${PODMAN[@]}" build "${LIMITS[@]}" "${args[@]}" -f docker/Dockerfile.cpu -t "$IMAGE" .
  podman image ls "$IMAGE"
fi

if want smoke; then
  # As shipped: the image's user, its HOME, no network (the quick demo needs none).
  timed import-check "${PODMAN[@]}" run "${LIMITS[@]}" --rm --network none "$IMAGE" \
    python -c "import tokalign_core, tasks, flows, torch; print(torch.__version__)"
  timed demo $NICE "${PODMAN[@]}" run "${LIMITS[@]}" --rm --network none -e HF_HUB_OFFLINE=1 "$IMAGE" \
    tokalign demo --quick --run-dir /home/tokalign/runs/demo
  tail -40 "$WORK/demo.log"
fi
