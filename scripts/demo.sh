#!/usr/bin/env bash
# The localds demo, on one machine, as root. It builds a small "edge node":
# a node network namespace with an internal bridge br0 (no default route,
# no link to the host's network) and a datastore namespace behind it, where
# the real avahi-daemon announces ubuntu-4321-http-server.local exactly as
# EVE-OS documents. The datastore gets a new address on every "reboot";
# localds finds it each time with mDNS, asking only on br0.
# Everything is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
HOST=ubuntu-4321-http-server
tag="ldsdemo$$"
node="$tag-node"
ds="$tag-ds"
work=$(mktemp -d /tmp/localds-demo.XXXXXX)
avahi_pid=""

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

cleanup() {
	set +e
	[ -n "$avahi_pid" ] && kill "$avahi_pid" 2>/dev/null && wait "$avahi_pid" 2>/dev/null
	ip netns del "$ds" 2>/dev/null
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
[ -x "$BIN/localds" ] || { echo "demo: $BIN/localds missing; run 'make demo'" >&2; exit 1; }

say "node namespace $node with internal bridge br0 10.88.0.1/24, datastore namespace $ds"
ip netns add "$node"
ip netns add "$ds"
ip -n "$node" link set lo up
ip -n "$ds" link set lo up
ip -n "$node" link add br0 type bridge
ip -n "$node" addr add 10.88.0.1/24 dev br0
ip -n "$node" link set br0 up
ip -n "$node" link add "v$$" type veth peer name eth0 netns "$ds"
ip -n "$node" link set "v$$" master br0 up
ip -n "$ds" link set eth0 up
ip -n "$node" route | sed 's/^/    route: /'

mkdir -p "$work/services"
cp contrib/avahi/services/http.service "$work/services/"

start_datastore() { # $1: the datastore's address this "boot"
	ip -n "$ds" addr flush dev eth0
	ip -n "$ds" addr add "$1/24" dev eth0
	# A private /run (ip netns exec gives a private mount namespace) so the
	# daemon's pid file and socket never touch the host's /run.
	ip netns exec "$ds" sh -c "mount -t tmpfs localds-demo /run && mkdir -p /run/avahi-daemon
		mount --bind '$work/services' /etc/avahi/services
		exec avahi-daemon -f '$PWD/contrib/avahi/avahi-daemon.conf' --no-drop-root --no-chroot --no-rlimits" \
		>"$work/avahi.log" 2>&1 &
	avahi_pid=$!
	for _ in $(seq 1 100); do
		grep -q "Server startup complete" "$work/avahi.log" && return 0
		sleep 0.1
	done
	cat "$work/avahi.log" >&2
	echo "demo: avahi-daemon did not start" >&2
	return 1
}
stop_datastore() {
	kill "$avahi_pid"
	wait "$avahi_pid" 2>/dev/null || true
	avahi_pid=""
}

for boot in 1 2; do
	addr="10.88.0.$((RANDOM % 200 + 20))"
	say "boot $boot: datastore container comes up at $addr (avahi-daemon, host-name=$HOST, publish-workstation, _http._tcp)"
	start_datastore "$addr"
	say "localds resolve $HOST.local (in the node namespace, asking on br0 only)"
	ip netns exec "$node" "$BIN/localds" resolve "$HOST.local" | sed 's/^/    /'
	stop_datastore
done

say "nobody answers for a name that no datastore has: a clear error"
ip netns exec "$node" "$BIN/localds" resolve --timeout 500ms "no-such-datastore.local" 2>&1 | sed 's/^/    /' || true
say "demo done; namespaces are removed"
