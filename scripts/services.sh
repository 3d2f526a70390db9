#!/usr/bin/env bash
# Brings up every service the test suite needs on this machine, installing what is
# missing, and waits until each answers. Fails naming any service it cannot have.
#
#   PostgreSQL 15 on 127.0.0.1:5432   (accounts on PostgreSQL)
#   PostgreSQL 15 streaming replica on 127.0.0.1:5433 (reads from replicas)
#   MariaDB        127.0.0.1:3307 primary (binary log, GTID) and 127.0.0.1:3308 its
#                  replica, user bakery/bakery (the domain on MariaDB, Path 2)
#   Redis          127.0.0.1:6379     (sessions and cache on Redis)
#   Memcached      127.0.0.1:11211 and 127.0.0.1:11212 (the cache on two nodes)
#   RabbitMQ       127.0.0.1:5672, guest/guest (the broker on RabbitMQ)
#   aiosmtpd       the Python SMTP server each mail test starts on a port of its own
#   schemathesis   the OpenAPI fuzzer the API test runs against a live system
#   celery         the peer of `bakery bench jobs --peer celery`
#   nginx, haproxy the load balancers the bench compares with; a font for its plots
#   chromium       headless, with chromedriver and axe-core, for the browser test
#   ip, nft        the hosts of deploy/ as network namespaces (scripts/hosts.sh)
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
    while read -r db; do timeout 30 psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done
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

# A second cluster on 5433 that streams from 5432: made once with pg_basebackup -R,
# started if stopped, and waited for until pg_stat_replication says "streaming".
replica() {
  local version primary_conf data
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  primary_conf=/etc/postgresql/$version/main
  if ! grep -Eq '^host[[:space:]]+replication[[:space:]]+all[[:space:]]+127\.0\.0\.1/32' "$primary_conf/pg_hba.conf"; then
    log "allowing local replication connections on the primary"
    echo "host replication all 127.0.0.1/32 trust" >> "$primary_conf/pg_hba.conf"
    psql -h 127.0.0.1 -U postgres -qAtc 'SELECT pg_reload_conf()' >/dev/null
  fi
  data=/var/lib/postgresql/$version/replica
  if ! pg_lsclusters -h | awk '{print $2}' | grep -qx replica; then
    log "creating the replica cluster (port 5433)"
    pg_createcluster "$version" replica -p 5433 >/dev/null || die "pg_createcluster failed"
  fi
  if [ ! -f "$data/standby.signal" ]; then
    log "cloning the primary into the replica (pg_basebackup)"
    pg_ctlcluster --skip-systemctl-redirect "$version" replica stop >/dev/null 2>&1 || true
    rm -rf "${data:?}"/*
    psql -h 127.0.0.1 -U postgres -qAtc "SELECT pg_drop_replication_slot('bakery_replica1') FROM pg_replication_slots WHERE slot_name = 'bakery_replica1'" >/dev/null
    su postgres -c "pg_basebackup -h 127.0.0.1 -p 5432 -U postgres -D $data -R -X stream -c fast -C -S bakery_replica1" >/dev/null ||
      die "pg_basebackup failed"
  fi
  # The replica authenticates like the primary (trust on loopback).
  if ! cmp -s "$primary_conf/pg_hba.conf" "/etc/postgresql/$version/replica/pg_hba.conf"; then
    cp "$primary_conf/pg_hba.conf" "/etc/postgresql/$version/replica/pg_hba.conf"
    pg_ctlcluster --skip-systemctl-redirect "$version" replica reload >/dev/null 2>&1 || true
  fi
  if ! pg_isready -h 127.0.0.1 -p 5433 -q 2>/dev/null; then
    log "starting the replica"
    pg_ctlcluster --skip-systemctl-redirect "$version" replica start >/dev/null 2>&1 ||
      pg_ctlcluster "$version" replica start >/dev/null 2>&1 || die "the PostgreSQL replica would not start"
  fi
  # A test may have paused replay; a fresh run starts with it running.
  psql -h 127.0.0.1 -p 5433 -U postgres -qAtc 'SELECT pg_wal_replay_resume()' >/dev/null 2>&1 || true
  wait_for "PostgreSQL replica (127.0.0.1:5433) streaming" 150 sh -c \
    "psql -h 127.0.0.1 -p 5432 -U postgres -Atc \"SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'\" | grep -q 1"
}

# Room for the tests: they run many `bakery up`s at once, each process with a pool
# of its own, and PostgreSQL's default of 100 connections runs out. A standby needs at
# least its primary's max_connections, so the replica is raised (and restarted) first.
CONNECTIONS=400
room_for_tests() {
  local version cluster port
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  for pair in replica:5433 main:5432; do
    cluster=${pair%%:*} port=${pair##*:}
    if [ "$(psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'SHOW max_connections')" -lt "$CONNECTIONS" ]; then
      log "raising max_connections to $CONNECTIONS on $cluster"
      mkdir -p "/etc/postgresql/$version/$cluster/conf.d"
      echo "max_connections = $CONNECTIONS" > "/etc/postgresql/$version/$cluster/conf.d/bakery-tests.conf"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" restart >/dev/null 2>&1 ||
        pg_ctlcluster "$version" "$cluster" restart >/dev/null 2>&1 || die "PostgreSQL ($cluster) would not restart"
      wait_for "PostgreSQL $cluster (127.0.0.1:$port)" 150 psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc 'SELECT 1'
    fi
  done
  wait_for "PostgreSQL replica (127.0.0.1:5433) streaming" 150 sh -c \
    "psql -h 127.0.0.1 -p 5432 -U postgres -Atc \"SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'\" | grep -q 1"
}

# MariaDB for the tests: a primary and a replica of their own (the machine's server on
# 3306 logs no binary log, and a replica needs one), each a mariadbd daemon with its
# data under /var/lib/bakery-mariadb/. The replica follows the primary by GTID.
MARIADB_ROOT=/var/lib/bakery-mariadb
mariadb_node() { # name, port, server id, extra options...
  local name=$1 port=$2 id=$3; shift 3
  local dir=$MARIADB_ROOT/$name
  if [ ! -d "$dir/data/mysql" ]; then
    log "creating MariaDB $name ($port)"
    mkdir -p "$dir"
    chown mysql:mysql "$dir"
    mariadb-install-db --user=mysql --datadir="$dir/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$dir/install.log" 2>&1 || die "mariadb-install-db ($name) failed: see $dir/install.log"
  fi
  if ! mariadb-admin --socket="$dir/mysqld.sock" ping >/dev/null 2>&1; then
    log "starting MariaDB $name"
    # Detached, its output to its own log: nothing here holds the caller's output.
    setsid mariadbd --user=mysql --datadir="$dir/data" --socket="$dir/mysqld.sock" \
      --pid-file="$dir/mysqld.pid" --port="$port" --bind-address=127.0.0.1 \
      --server-id="$id" --log-bin="$dir/data/binlog" --gtid-strict-mode=1 \
      --max-connections=2000 --innodb-buffer-pool-size=256M --innodb-flush-log-at-trx-commit=2 \
      --skip-name-resolve --log-error="$dir/error.log" "$@" </dev/null >/dev/null 2>&1 &
  fi
  wait_for "MariaDB $name (127.0.0.1:$port)" 150 mariadb-admin --socket="$dir/mysqld.sock" ping
}

mariadb_pair() {
  command -v mariadbd >/dev/null || apt_install mariadb-server
  mariadb_node primary 3307 1
  mariadb_node replica 3308 2 --read-only=1
  local primary="mariadb --socket=$MARIADB_ROOT/primary/mysqld.sock -N -B"
  local replica="mariadb --socket=$MARIADB_ROOT/replica/mysqld.sock -N -B"
  $primary -e "CREATE USER IF NOT EXISTS 'bakery'@'127.0.0.1' IDENTIFIED BY 'bakery';
               GRANT ALL PRIVILEGES ON *.* TO 'bakery'@'127.0.0.1' WITH GRANT OPTION;" ||
    die "could not make the MariaDB user"
  local status="mariadb --socket=$MARIADB_ROOT/replica/mysqld.sock -e 'SHOW SLAVE STATUS\\G'"
  if [ -z "$(sh -c "$status" 2>/dev/null)" ]; then
    log "making the MariaDB replica follow the primary (GTID)"
    # The replica starts from the primary's position now: the user made above comes
    # along through the binary log only from here on, so it is made there too.
    $replica -e "SET GLOBAL read_only = 0;
                 CREATE USER IF NOT EXISTS 'bakery'@'127.0.0.1' IDENTIFIED BY 'bakery';
                 GRANT ALL PRIVILEGES ON *.* TO 'bakery'@'127.0.0.1' WITH GRANT OPTION;
                 SET GLOBAL read_only = 1;
                 SET GLOBAL gtid_slave_pos = '$($primary -e 'SELECT @@gtid_binlog_pos')';
                 CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=3307, MASTER_USER='bakery',
                   MASTER_PASSWORD='bakery', MASTER_USE_GTID=slave_pos;
                 START SLAVE;" || die "could not start MariaDB replication"
  fi
  $replica -e "START SLAVE" >/dev/null 2>&1 || true
  wait_for "MariaDB replica (127.0.0.1:3308) replicating" 150 sh -c \
    "$status | grep -q 'Slave_SQL_Running: Yes'"
  # Each test makes its own database; clear those of earlier runs.
  $primary -e "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'bakery\\_test\\_%'" |
    while read -r db; do timeout 30 $primary -e "DROP DATABASE IF EXISTS \`$db\`" >/dev/null 2>&1 || true; done
}

# Two Memcached nodes, each a daemon with its own pid file.
memcached_nodes() {
  command -v memcached >/dev/null || apt_install memcached
  id memcache >/dev/null 2>&1 || useradd --system --no-create-home memcache
  local port
  for port in 11211 11212; do
    if ! (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
      log "starting Memcached on $port"
      memcached -d -u memcache -l 127.0.0.1 -p "$port" -m 64 -P "/tmp/bakery-memcached-$port.pid" ||
        die "Memcached would not start on $port"
    fi
    wait_for "Memcached (127.0.0.1:$port)" 50 sh -c "printf 'version\r\nquit\r\n' | timeout 1 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$port; cat >&3; head -c 7 <&3' | grep -q VERSION"
  done
}

# RabbitMQ on loopback. Tests make a vhost each (rabbitmqctl), so they never share
# the contract's queues.
rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  if ! rabbitmq-diagnostics -q check_running >/dev/null 2>&1; then
    log "starting RabbitMQ"
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 ERL_EPMD_ADDRESS=127.0.0.1 rabbitmq-server -detached >/dev/null 2>&1 ||
      die "RabbitMQ would not start"
  fi
  wait_for "RabbitMQ (127.0.0.1:5672)" 300 rabbitmq-diagnostics -q check_running
  # A test that restarts the broker's app may have been interrupted half-way.
  timeout 60 rabbitmqctl -q start_app >/dev/null 2>&1 || true
  # Vhosts of earlier runs. Bounded: deleting a vhost can wait forever on a queue
  # whose replicas are on nodes that are gone; tests make vhosts of their own, so a
  # leftover one costs nothing but room.
  local vhosts; vhosts=$(timeout 30 rabbitmqctl -q list_vhosts 2>/dev/null | grep '^bakery-test-' || true)
  if [ -n "$vhosts" ]; then
    log "removing $(wc -l <<< "$vhosts") vhosts of earlier runs (for at most 60 s)"
    local until=$((SECONDS + 60))
    while read -r vhost && [ "$SECONDS" -lt "$until" ]; do
      timeout 10 rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 ||
        log "left vhost $vhost (its deletion did not end within 10 s)"
    done <<< "$vhosts"
  fi
  log "RabbitMQ is clean"
}

smtp_server() {
  if ! python3 -c 'import aiosmtpd' >/dev/null 2>&1; then
    log "installing aiosmtpd"
    python3 -m pip install --quiet aiosmtpd >/dev/null 2>&1 || apt_install python3-aiosmtpd
  fi
  python3 -c 'import aiosmtpd' >/dev/null 2>&1 || die "aiosmtpd (the test SMTP server) could not be installed"
  log "aiosmtpd is ready"
}

# The peer `bakery bench jobs --peer celery` measures against (Celery 5 on the same
# RabbitMQ).
celery_peer() {
  if ! python3 -c 'import celery' >/dev/null 2>&1; then
    log "installing celery"
    python3 -m pip install --quiet 'celery>=5,<6' >/dev/null 2>&1 ||
      python3 -m pip install --quiet --break-system-packages 'celery>=5,<6' >/dev/null 2>&1 || true
  fi
  python3 -c 'import celery' >/dev/null 2>&1 || die "celery (the jobs bench's peer) could not be installed"
  log "celery is ready"
}

# Not named after the command: `command -v` would find this function and call the
# tool installed when it is not.
api_fuzzer() {
  if ! command -v schemathesis >/dev/null 2>&1; then
    log "installing schemathesis"
    python3 -m pip install --quiet 'schemathesis>=4,<5' >/dev/null 2>&1 ||
      python3 -m pip install --quiet --break-system-packages 'schemathesis>=4,<5' >/dev/null 2>&1 || true
  fi
  command -v schemathesis >/dev/null 2>&1 || die "schemathesis (the API fuzzer) could not be installed"
  log "schemathesis is ready"
}

bench_tools() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx-light
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || apt_install haproxy
  command -v varnishd >/dev/null 2>&1 || [ -x /usr/sbin/varnishd ] || apt_install varnish
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core
  log "nginx, haproxy, varnish and fonts are ready"
}

# The browser tests: headless Chromium driven through chromedriver, and axe-core
# (from npm, into the workspace's target directory) for the accessibility check.
browser() {
  { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || apt_install chromium chromium-driver
  local here; here="$(cd "$(dirname "$0")/.." && pwd)"
  local axe="$here/target/browser/node_modules/axe-core/axe.min.js"
  if [ ! -f "$axe" ]; then
    command -v npm >/dev/null || apt_install npm
    mkdir -p "$here/target/browser"
    npm install --silent --no-audit --no-fund --prefix "$here/target/browser" axe-core@4 >/dev/null 2>&1 \
      || die "could not install axe-core from npm"
  fi
  [ -f "$axe" ] || die "axe-core is not at $axe"
  log "chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), chromedriver and axe-core are ready"
}

# The hosts of deploy/ as network namespaces (scripts/hosts.sh): iproute2 for the
# namespaces and links, nftables for packet loss on a link, util-linux's unshare
# for each host's own hostname.
hosts_tools() {
  command -v ip >/dev/null || apt_install iproute2
  command -v nft >/dev/null || apt_install nftables
  command -v unshare >/dev/null || apt_install util-linux
  log "ip, nft and unshare are ready"
}

postgres
replica
room_for_tests
mariadb_pair
redis
memcached_nodes
rabbitmq
smtp_server
celery_peer
api_fuzzer
bench_tools
browser
hosts_tools
