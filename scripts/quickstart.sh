#!/usr/bin/env bash
# Installs ldoms into .venv, starts one host on loopback, and walks through the classic LDoms 1.2 set-up:
# services on the control domain, shrinking primary (a delayed reconfiguration), then a guest that is bound
# and started (a real guest process with its own memory file).  Leaves the host running; prints how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export LDM_HOME="$PWD/demo-hosts/host1"
if [ -S "$LDM_HOME/ldmd.sock" ] && ldm list >/dev/null 2>&1; then
    echo "A demo host is already running in $LDM_HOME; stopping it first."
    kill "$(cat "$LDM_HOME/ldmd.lock")" 2>/dev/null || true
    for _ in $(seq 50); do [ -S "$LDM_HOME/ldmd.sock" ] || break; sleep 0.1; done
fi
rm -rf "$LDM_HOME"; mkdir -p "$LDM_HOME"
ldmd --home "$LDM_HOME" --platform t5240 --name host1 --listen 127.0.0.1:16482 >/dev/null 2>&1 &
for _ in $(seq 100); do ldm list >/dev/null 2>&1 && break; sleep 0.1; done
run() { echo "# ldm $*"; ldm "$@"; }
run list
run add-vds primary-vds0 primary
run add-vcc port-range=5000-5100 primary-vcc0 primary
run add-vsw net-dev=eth0 primary-vsw0 primary
run add-vdsdev "$LDM_HOME/disk0.img" vol0@primary-vds0
run set-mau 1 primary
run set-vcpu 8 primary
run set-memory 4G primary
run stop-domain primary
run add-domain ldg1
run add-vcpu 8 ldg1
run add-memory 2G ldg1
run add-vnet vnet0 primary-vsw0 ldg1
run add-vdisk vdisk0 vol0@primary-vds0 ldg1
run bind-domain ldg1
run start-domain ldg1
run list
run list-bindings ldg1
echo
echo "The host keeps running (pid $(cat "$LDM_HOME/ldmd.lock")). Try: LDM_HOME=$LDM_HOME .venv/bin/ldm list -l"
echo "Stop it with: kill $(cat "$LDM_HOME/ldmd.lock")   (guests keep running; 'ldm stop -a' stops them first)"
