#!/usr/bin/env bash
# Several hosts on one machine: the deployment of deploy/ as Linux network namespaces
# joined by one bridge, each host with its own address, name and hostname. As root.
#
#   scripts/hosts.sh create              the hosts of deploy/hosts, their link, /etc/hosts
#   scripts/hosts.sh stores DIR          PostgreSQL on db-1 and its streaming replica on
#                                        db-2, Redis on cache, RabbitMQ on mq (data in DIR)
#   scripts/hosts.sh run HOST UNIT [KEY=VALUE...]
#                                        runs deploy/systemd/UNIT.service's ExecStart on
#                                        HOST with its EnvironmentFiles (deploy/env), then
#                                        the KEY=VALUEs; execs, so its pid is the role's
#   scripts/hosts.sh cut HOST | restore HOST
#                                        takes HOST's link down (it answers nothing) / up
#   scripts/hosts.sh destroy             stops every process in the hosts (by pid) and
#                                        removes the hosts, the bridge and their files
#
# The machine itself is on the bridge too, as `mail` (10.77.0.1): the test's client
# and mail relay. Nothing leaves the namespaces made here: the bridge has no uplink.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
deploy="$here/deploy"
prefix=bakery-         # namespace names: bakery-edge, bakery-web-a, ...
bridge=bakery0
outside=10.77.0.1      # the machine's own address on the bridge

die() { printf 'hosts: %s\n' "$*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
command -v ip >/dev/null || die "iproute2 (ip) is needed"

# name address, for each host of deploy/hosts
hosts() { grep -Ev '^\s*(#|$)' "$deploy/hosts" | awk '{print $2, $1}'; }
address_of() { hosts | awk -v h="$1" '$1 == h {print $2}'; }
link_of() { printf 'bk-%s' "$1"; }  # the host's cable, seen from the bridge (<= 15 chars)

create() {
  destroy quiet
  ip link add "$bridge" type bridge
  ip addr add "$outside/24" dev "$bridge"
  ip link set "$bridge" up
  while read -r name addr; do
    local ns="$prefix$name" link; link=$(link_of "$name")
    ip netns add "$ns"
    ip link add "$link" type veth peer name eth0 netns "$ns"
    ip link set "$link" master "$bridge" up
    ip -n "$ns" addr add "$addr/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    # `ip netns exec` mounts /etc/netns/NS/hosts over /etc/hosts: every host knows
    # every other by name, as DNS would tell it.
    mkdir -p "/etc/netns/$ns"
    { printf '127.0.0.1 localhost\n%s mail\n' "$outside"; grep -Ev '^\s*(#|$)' "$deploy/hosts"; } \
      > "/etc/netns/$ns/hosts"
  done < <(hosts)
}

destroy() {
  local name
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$prefix" || true); do
    # Every process in the host, daemons included (epmd), by pid.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "/etc/netns/$ns"
  done
  while read -r name _; do ip link del "$(link_of "$name")" 2>/dev/null || true; done < <(hosts)
  ip link del "$bridge" 2>/dev/null || true
  [ "${1:-}" = quiet ] || printf 'hosts: removed\n'
}

# Runs a command on HOST with HOST as its hostname (its own UTS namespace), as exec.
on() {
  local host=$1; shift
  exec ip netns exec "$prefix$host" unshare --uts -- sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
}

pg_bin() { echo "/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -V | tail -n 1)/bin"; }

wait_tcp() { # name addr port seconds
  for _ in $(seq $(($4 * 5))); do
    if (exec 3<>"/dev/tcp/$2/$3") 2>/dev/null; then printf 'hosts: %s is ready\n' "$1"; return 0; fi
    sleep 0.2
  done
  die "$1 ($2:$3) did not answer within $4 s"
}

# Starts a store in the background on a host; its output goes to DIR/logs/NAME.log.
background() { # dir host name command...
  local dir=$1 host=$2 name=$3; shift 3
  ( on "$host" "$@" ) > "$dir/logs/$name.log" 2>&1 < /dev/null &
}

stores() {
  local dir=${1:?stores DIR}
  mkdir -p "$dir/logs"
  chmod 755 "$dir"
  local pg; pg=$(pg_bin)
  local db1 db2; db1=$(address_of db-1); db2=$(address_of db-2)

  # PostgreSQL primary on db-1: a cluster of its own (the machine's stays untouched).
  install -d -o postgres -g postgres -m 700 "$dir/db-1" "$dir/db-1-run"
  runuser -u postgres -- "$pg/initdb" -D "$dir/db-1" -U postgres --auth=trust -E UTF8 \
    > "$dir/logs/initdb.log" 2>&1 || die "initdb failed (see $dir/logs/initdb.log)"
  cat >> "$dir/db-1/postgresql.conf" <<EOF
listen_addresses = '*'
port = 5432
unix_socket_directories = '$dir/db-1-run'
wal_level = replica
max_wal_senders = 5
hot_standby = on
max_connections = 200
EOF
  printf 'host all all 10.77.0.0/24 trust\nhost replication all 10.77.0.0/24 trust\n' \
    >> "$dir/db-1/pg_hba.conf"
  background "$dir" db-1 postgresql runuser -u postgres -- "$pg/postgres" -D "$dir/db-1"
  wait_tcp "PostgreSQL on db-1" "$db1" 5432 30
  for _ in $(seq 50); do
    psql -h "$db1" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  psql -h "$db1" -U postgres -d postgres -qc "CREATE ROLE bakery LOGIN PASSWORD 'bakery' CREATEROLE" >/dev/null
  psql -h "$db1" -U postgres -d postgres -qc "CREATE DATABASE bakery OWNER bakery" >/dev/null

  # Its streaming replica on db-2, copied over the network as an operator would.
  install -d -o postgres -g postgres -m 700 "$dir/db-2" "$dir/db-2-run"
  ( on db-2 runuser -u postgres -- "$pg/pg_basebackup" -h db-1 -U postgres -D "$dir/db-2" -R -X stream --checkpoint=fast ) \
    > "$dir/logs/basebackup.log" 2>&1 || die "pg_basebackup failed (see $dir/logs/basebackup.log)"
  sed -i "s|^unix_socket_directories = .*|unix_socket_directories = '$dir/db-2-run'|" "$dir/db-2/postgresql.conf"
  background "$dir" db-2 postgresql-replica runuser -u postgres -- "$pg/postgres" -D "$dir/db-2"
  wait_tcp "PostgreSQL replica on db-2" "$db2" 5432 30

  # Redis on cache: sessions and the cache.
  install -d -m 755 "$dir/redis"
  background "$dir" cache redis redis-server --bind 0.0.0.0 --port 6379 --protected-mode no \
    --save "" --appendonly no --dir "$dir/redis"
  wait_tcp "Redis on cache" "$(address_of cache)" 6379 20

  # RabbitMQ on mq: a node of its own (with its own epmd inside the host).
  install -d -o rabbitmq -g rabbitmq -m 755 "$dir/rabbitmq" "$dir/rabbitmq/mnesia" "$dir/rabbitmq/log"
  cat > "$dir/rabbitmq/rabbitmq.conf" <<'EOF'
listeners.tcp.default = 5672
default_user = bakery
default_pass = bakery
loopback_users = none
EOF
  chmod 644 "$dir/rabbitmq/rabbitmq.conf"
  background "$dir" mq rabbitmq runuser -u rabbitmq -- env HOME=/var/lib/rabbitmq \
    RABBITMQ_NODENAME=rabbit@localhost RABBITMQ_MNESIA_BASE="$dir/rabbitmq/mnesia" \
    RABBITMQ_LOG_BASE="$dir/rabbitmq/log" RABBITMQ_CONFIG_FILE="$dir/rabbitmq/rabbitmq.conf" \
    RABBITMQ_PID_FILE="$dir/rabbitmq/pid" /usr/lib/rabbitmq/bin/rabbitmq-server
  wait_tcp "RabbitMQ on mq" "$(address_of mq)" 5672 60
}

# KEY=VALUE lines of an environment file, without comments and blank lines.
env_lines() { grep -Ev '^\s*(#|$)' "$1"; }

run() {
  local host=${1:?run HOST UNIT} unit=${2:?run HOST UNIT}; shift 2
  local file="$deploy/systemd/$unit.service"
  [ -f "$file" ] || die "no unit $file"
  [ -n "$(address_of "$host")" ] || die "no host $host in deploy/hosts"
  local bin=${BAKERY_BIN:-$here/target/debug/bakery}
  local -a env=(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root)
  local line path
  while IFS= read -r line; do
    path=${line#EnvironmentFile=}
    local optional=; [ "${path#-}" != "$path" ] && optional=1 && path=${path#-}
    path="$deploy/env/${path#/etc/bakery/}"
    if [ -f "$path" ]; then
      mapfile -t -O "${#env[@]}" env < <(env_lines "$path")
    elif [ -z "$optional" ]; then
      die "$unit needs $path"
    fi
  done < <(grep '^EnvironmentFile=' "$file")
  env+=("$@")
  local exec_start
  exec_start=$(grep '^ExecStart=' "$file" | head -n 1)
  exec_start=${exec_start#ExecStart=}
  exec_start=${exec_start//%H/$host}
  exec_start=${exec_start//\/usr\/local\/bin\/bakery/$bin}
  # shellcheck disable=SC2086 # the unit's command line splits on spaces, as systemd's does
  on "$host" env -i "${env[@]}" $exec_start
}

link() { # down|up HOST
  local host=${2:?HOST}
  [ -n "$(address_of "$host")" ] || die "no host $host in deploy/hosts"
  ip link set "$(link_of "$host")" "$1"
}

case "${1:-}" in
  create) create; printf 'hosts: %s\n' "$(hosts | awk '{print $1}' | tr '\n' ' ')" ;;
  stores) stores "${2:-}" ;;
  run) shift; run "$@" ;;
  cut) link down "${2:-}" ;;
  restore) link up "${2:-}" ;;
  destroy) destroy ;;
  *) die "usage: scripts/hosts.sh create | stores DIR | run HOST UNIT [KEY=VALUE...] | cut HOST | restore HOST | destroy" ;;
esac
