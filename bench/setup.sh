#!/usr/bin/env bash
# Installs what the benchmark harness needs, idempotently:
#   - Debian packages: nginx, haproxy (peers + upstream), wrk (load generator),
#     gcc (builds lib/wrk-tls-shim.c for the TLS handshake scenarios)
#   - bench/node_modules from bench/package-lock.json (npm ci), only when the
#     lockfile changed since the last install.
# Never starts, stops or enables a system service: the harness runs its own
# foreground nginx/haproxy with private configs (see run.mjs).
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '[setup] %s\n' "$*"; }

need=()
for pkg in nginx haproxy wrk gcc; do
  if command -v "$pkg" >/dev/null 2>&1 || [ -x "/usr/sbin/$pkg" ] || { [ "$pkg" = gcc ] && command -v cc >/dev/null 2>&1; }; then
    say "$pkg: present ($(command -v "$pkg" || echo /usr/sbin/$pkg))"
  else
    need+=("$pkg")
  fi
done

if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    say "missing ${need[*]} and not root: install them with apt-get (the harness skips targets it cannot run)"
  else
    say "installing ${need[*]} (apt-get update once, then install)"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101 keeps the Debian postinst from starting nginx/haproxy as
    # system services on ports 80/443; removed again right after.
    prc=/usr/sbin/policy-rc.d; made_prc=0
    if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' > "$prc"; chmod +x "$prc"; made_prc=1; fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ "$made_prc" = 1 ]; then rm -f "$prc"; fi
    for pkg in "${need[@]}"; do say "$pkg: installed"; done
  fi
fi

stamp=node_modules/.turnpike-bench-lock
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp"; then
  say "node_modules: up to date with package-lock.json"
else
  say "npm ci (bench/package-lock.json)"
  npm ci --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'Unknown user config' || true
  [ -d node_modules ] || { say "npm ci failed"; exit 1; }
  cp package-lock.json "$stamp"
  say "node_modules: installed"
fi

say "versions: node $(node -v), nginx $( (nginx -v 2>&1 || true) | sed 's/.*\///'), haproxy $( (haproxy -v 2>/dev/null || true) | head -1 | awk '{print $3}'), wrk $( (wrk -v 2>&1 || true) | head -1 | awk '{print $2}')"
say "done"
