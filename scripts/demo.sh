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
pids=()

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

cleanup() {
	set +e
	[ -n "$avahi_pid" ] && kill "$avahi_pid" 2>/dev/null && wait "$avahi_pid" 2>/dev/null
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
	for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
	grep -q "$work" /proc/mounts && awk -v w="$work" '$2 ~ "^"w {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
	ip netns del "$ds" 2>/dev/null
	ip netns del "$node" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
for b in localds containerd-localds-grpc containerd ctr demo-image; do
	[ -x "$BIN/$b" ] || { echo "demo: $BIN/$b missing; run 'make demo'" >&2; exit 1; }
done

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
pids=()
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
wait_for() { # $1: what, $2: test command; bounded: 10 s
	for _ in $(seq 1 100); do
		eval "$2" && return 0
		sleep 0.1
	done
	echo "demo: $1 did not come up" >&2
	return 1
}

addr="10.88.0.$((RANDOM % 200 + 20))"
say "boot 3: the datastore container runs 'localds serve' at $addr (mDNS responder + OCI registry + files)"
ip -n "$ds" addr flush dev eth0
ip -n "$ds" addr add "$addr/24" dev eth0
mkdir -p "$work/datastore"
# Pushes need the datastore's token; without --push-token-file it takes none.
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/push-token"
chmod 600 "$work/push-token"
ip netns exec "$ds" "$BIN/localds" serve --hostname "$HOST" --interface eth0 --listen :80 --dir "$work/datastore" \
	--push-token-file "$work/push-token" >"$work/serve.log" 2>&1 &
pids+=($!)
wait_for "localds serve" "ip netns exec $node $BIN/localds resolve --timeout 200ms $HOST.local >/dev/null 2>&1"
ip netns exec "$node" "$BIN/localds" resolve "$HOST.local" | sed 's/^/    /'

say "a small 3-layer image, built in Go, pushed to $HOST.local/app:1 by its .local name"
ip netns exec "$node" "$BIN/demo-image" --push "$HOST.local/app:1" --push-token-file "$work/push-token" | sed 's/^/    /'

root="$work/persist"
sock="$work/localds.sock"
csock="$work/containerd/containerd.sock"
say "containerd-localds-grpc: CAS at $root/vault/cas, socket $sock, mirror on 127.0.0.1:5151 (node namespace)"
ip netns exec "$node" "$BIN/containerd-localds-grpc" --root "$root" --address "$sock" \
	--mirror-listen 127.0.0.1:5151 --interface br0 >"$work/daemon.log" 2>&1 &
pids+=($!)
wait_for "containerd-localds-grpc" "[ -S $sock ]"

say "containerd $("$BIN/containerd" --version | awk '{print $3}') with contrib/containerd/config.toml's plugins, pointed at that socket"
mkdir -p "$work/containerd"
cat >"$work/containerd/config.toml" <<TOML
version = 3
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.content.v1.content", "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "$csock"
[ttrpc]
  address = "$csock.ttrpc"
[proxy_plugins.localds-cas]
  type = "content"
  address = "$sock"
[proxy_plugins.localds]
  type = "snapshot"
  address = "$sock"
[proxy_plugins.localds-diff]
  type = "diff"
  address = "$sock"
[plugins."io.containerd.service.v1.diff-service"]
  default = ["localds-diff", "walking"]
[plugins."io.containerd.transfer.v1.local"]
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux/$(go env GOARCH)"
    snapshotter = "localds"
    differ = "localds-diff"
TOML
ip netns exec "$node" "$BIN/containerd" --config "$work/containerd/config.toml" >"$work/containerd.log" 2>&1 &
pids+=($!)
wait_for "containerd" "[ -S $csock ]"

say "localds hosts: hosts.toml sending $HOST.local pulls to the mirror, with its key ($root/vault/mirror.key)"
"$BIN/localds" --root "$root" hosts --dir "$work/certs.d" "$HOST.local" | sed 's/^/    /'
sed 's/^/    /' "$work/certs.d/$HOST.local/hosts.toml"

say "ctr image pull --hosts-dir $work/certs.d --snapshotter localds $HOST.local/app:1"
ip netns exec "$node" "$BIN/ctr" -a "$csock" image pull --hosts-dir "$work/certs.d" --snapshotter localds "$HOST.local/app:1" 2>&1 | tail -8 | sed 's/^/    /'
ip netns exec "$node" "$BIN/ctr" -a "$csock" image ls | sed 's/^/    /'

say "every blob, verified, in the CAS under $root/vault/cas/blobs/sha256"
(cd "$root/vault/cas/blobs/sha256" && ls -l | tail -n +2 | awk '{printf "    %10s  %s\n", $5, $9}')
"$BIN/localds" fsck --root "$root" | sed 's/^/    /'

vol="6f1c8a2e-3b7d-4c1e-9a55-0d2f4b8e9c10#1"
say "localds volume create --image $HOST.local/app:1 $vol"
ip netns exec "$node" "$BIN/localds" volume --root "$root" --address "$csock" create --image "$HOST.local/app:1" "$vol" 2>&1 | sed 's/^/    /'
ip netns exec "$node" "$BIN/localds" volume --root "$root" --address "$csock" ls | sed 's/^/    /'
ls -d "$root"/vault/volumes/* | sed 's/^/    /'

say "demo done; daemons stopped, namespaces removed"
