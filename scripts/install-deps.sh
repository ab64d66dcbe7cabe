#!/usr/bin/env bash
# Installs what localds' tests and demo need on a fresh Debian machine, as root.
# Debian packages come with service start-up disabled: no responder may ever
# run in the root network namespace (DESIGN.md, network rules); tests start
# daemons themselves, inside namespaces they create.
set -euo pipefail

packages=(avahi-daemon avahi-utils docker-registry runc iproute2 curl ca-certificates openssl procps psmisc)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: need root to install: ${missing[*]}" >&2
	exit 1
fi

policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ $had_policy -eq 0 ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Some packages start their service through systemd units even with
# policy-rc.d in place on machines without systemd; make sure nothing that
# answers on the network is left running in the root namespace.
for svc in avahi-daemon docker-registry; do
	pkill -x "$svc" 2>/dev/null || true
done
