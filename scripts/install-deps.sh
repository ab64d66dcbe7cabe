#!/usr/bin/env bash
# Installs what localds' tests and demo need on a fresh Debian machine, as root.
# Debian packages come with service start-up disabled: no responder may ever
# run in the root network namespace (docs/design.md, tests and the network); tests start
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

# Daemons that already run (the host's own avahi-daemon, say) are none of
# this script's business: note them, so that only what the install itself
# started is stopped below.
responders=(avahi-daemon docker-registry)
before=" $(pgrep -d ' ' -x "$(IFS='|'; echo "${responders[*]}")" 2>/dev/null || true) "

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"

# Some packages start their service through systemd units even with
# policy-rc.d in place; a responder the install started must not be left
# running in the root namespace. Processes that ran before are kept.
for pid in $(pgrep -x "$(IFS='|'; echo "${responders[*]}")" 2>/dev/null || true); do
	case "$before" in
	*" $pid "*) ;;
	*) echo "install-deps: stopping $(cat /proc/"$pid"/comm 2>/dev/null) (pid $pid), started by the install" >&2
	   kill "$pid" 2>/dev/null || true ;;
	esac
done
