#!/usr/bin/env bash
# Idempotent machine set-up for edgetrust: Debian packages, npm packages, a project dockerd and a local registry.
# Safe to run any number of times; each step only acts when its thing is missing or down.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

RUN_DIR="${EDGETRUST_RUN_DIR:-/run/edgetrust}"
DOCKER_SOCK="${EDGETRUST_DOCKER_SOCKET:-$RUN_DIR/docker.sock}"
DOCKER_DATA="${EDGETRUST_DOCKER_DATA:-/var/lib/edgetrust/docker}"
REGISTRY_ADDR="${EDGETRUST_REGISTRY:-127.0.0.1:5000}"
REGISTRY_DATA="${EDGETRUST_REGISTRY_DATA:-/var/lib/edgetrust/registry}"
LOG_DIR="${EDGETRUST_LOG_DIR:-/var/log/edgetrust}"

say() { printf 'setup: %s\n' "$*"; }

DEB_PACKAGES=(softhsm2 opensc libengine-pkcs11-openssl swtpm swtpm-tools libtpm2-pkcs11-1 tpm2-tools
  docker.io containerd docker-registry busybox-static mosquitto mosquitto-clients curl openssl p11-kit
  ca-certificates iproute2 procps gnutls-bin chromium haproxy)

install_debs() {
  local missing=()
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then say "Debian packages present"; return; fi
  say "installing Debian packages: ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_npm() {
  if [ -f node_modules/.package-lock.json ] && [ node_modules/.package-lock.json -nt package-lock.json ] \
     && [ -f node_modules/pkcs11js/build/Release/pkcs11.node ] \
     && [ -f node_modules/better-sqlite3/build/Release/better_sqlite3.node ]; then
    say "npm packages present"; return
  fi
  say "installing npm packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.package-lock.json
}

docker_up() { DOCKER_HOST="unix://$DOCKER_SOCK" timeout 5 docker version >/dev/null 2>&1; }

start_dockerd() {
  if docker_up; then say "dockerd up on $DOCKER_SOCK"; return; fi
  say "starting dockerd on $DOCKER_SOCK (no bridge, no iptables: containers use the host's loopback)"
  $SUDO mkdir -p "$RUN_DIR" "$DOCKER_DATA" "$LOG_DIR"
  # containerd is started by dockerd itself when it is not already running.
  $SUDO sh -c "nohup dockerd --host 'unix://$DOCKER_SOCK' --bridge=none --iptables=false --ip6tables=false \
    --ip-masq=false --data-root '$DOCKER_DATA' --exec-root '$RUN_DIR/docker-exec' \
    --pidfile '$RUN_DIR/docker.pid' >>'$LOG_DIR/dockerd.log' 2>&1 &"
  for _ in $(seq 1 60); do docker_up && { say "dockerd up"; return; }; sleep 0.5; done
  say "dockerd did not come up; last log lines:"; tail -n 20 "$LOG_DIR/dockerd.log" >&2; exit 1
}

registry_up() { curl -fsS -m 3 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; }

start_registry() {
  if registry_up; then say "registry up on $REGISTRY_ADDR"; return; fi
  say "starting registry on $REGISTRY_ADDR"
  $SUDO mkdir -p "$REGISTRY_DATA" "$RUN_DIR" "$LOG_DIR"
  $SUDO sh -c "cat > '$RUN_DIR/registry.yml'" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
YML
  $SUDO sh -c "nohup docker-registry serve '$RUN_DIR/registry.yml' >>'$LOG_DIR/registry.log' 2>&1 &"
  for _ in $(seq 1 40); do registry_up && { say "registry up"; return; }; sleep 0.25; done
  say "registry did not come up; last log lines:"; tail -n 20 "$LOG_DIR/registry.log" >&2; exit 1
}

case "${1:-all}" in
  all) install_debs; install_npm; start_dockerd; start_registry ;;
  packages) install_debs; install_npm ;;
  services) start_dockerd; start_registry ;;
  *) echo "usage: setup.sh [all|packages|services]" >&2; exit 2 ;;
esac
