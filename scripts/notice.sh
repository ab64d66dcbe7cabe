#!/usr/bin/env bash
# Prints NOTICE: the third-party modules linked into localds' binaries,
# with the licence each declares (read from its LICENSE file).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "localds"
echo "Copyright 2026 the localds authors. Licensed under the Apache License, Version 2.0."
echo
echo "This product links the following third-party Go modules; their licence texts"
echo "are in each module's source (go mod download -json MODULE shows where)."
echo
go list -deps -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' ./cmd/... ./resolver/... |
	sort -u | while read -r path version dir; do
		lic=unknown
		f=$(ls "$dir"/LICEN[CS]E* "$dir"/COPYING* 2>/dev/null | head -1 || true)
		if [ -n "$f" ]; then
			if grep -q "Apache License" "$f"; then lic="Apache-2.0"
			elif grep -q "Mozilla Public License" "$f"; then lic="MPL-2.0"
			elif grep -q "Permission is hereby granted, free of charge" "$f"; then lic="MIT"
			elif grep -q "Redistribution and use in source and binary forms" "$f"; then
				if grep -q "Neither the name" "$f"; then lic="BSD-3-Clause"; else lic="BSD-2-Clause"; fi
			elif grep -q "ISC" "$f"; then lic="ISC"
			fi
		fi
		printf '%s %s  %s\n' "$path" "$version" "$lic"
	done
