#!/usr/bin/env bash
# Brings up every service the test suite needs on this machine, installing what is
# missing, and waits until each answers. Fails naming any service it cannot have.
#
#   PostgreSQL 15 on 127.0.0.1:5432   (accounts on PostgreSQL)
#   Redis          127.0.0.1:6379     (sessions on Redis)
#
# Services are started as the machine's own daemons (detached, logging to files),
# so nothing started here holds the caller's output open.
set -euo pipefail

log() { printf 'services: %s\n' "$*"; }
die() { printf 'services: FAILED: %s\n' "$*" >&2; exit 1; }

apt_install() {
  command -v apt-get >/dev/null || die "apt-get is needed to install $*"
  if [ -z "${BAKERY_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    export BAKERY_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || die "could not install $*"
}

wait_for() { # name, tries (0.2 s each), command...
  local name=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do
    if "$@" >/dev/null 2>&1; then log "$name is ready"; return 0; fi
    sleep 0.2
  done
  die "$name did not become ready"
}

postgres() {
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$version" ] || die "PostgreSQL is installed but has no cluster"
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 ||
      pg_ctlcluster "$version" main start >/dev/null 2>&1 || die "PostgreSQL would not start"
  fi
  wait_for "PostgreSQL (127.0.0.1:5432)" 150 psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc 'SELECT 1'
  # Each test makes its own database; clear those of earlier runs.
  psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'bakery_test_%'" |
    while read -r db; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
}

redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/bakery-tests.log >/dev/null || die "Redis would not start"
  fi
  wait_for "Redis (127.0.0.1:6379)" 100 sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
}

postgres
redis
