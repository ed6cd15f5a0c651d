#!/usr/bin/env bash
# Live-migration quickstart.  Installs ldoms into .venv, starts two hosts on loopback (two homes, two ports),
# sets both up the LDoms way (services on the control domain, primary shrunk by a delayed reconfiguration
# and rebooted, users and peers for authentication), starts a guest running the ledger workload on host1,
# migrates it live to host2 (with a progress bar when run in a terminal), lists both hosts and the migration
# history, and proves with the independent ledger verifier that no page of the guest was lost or torn.
#
#   bash scripts/quickstart.sh          run it (again: it stops and replaces what an earlier run left)
#   bash scripts/quickstart.sh --stop   stop the demo's guests and both ldmds (the files stay for reading)
#
# Environment: LDOMS_DEMO_DIR (default ./demo-hosts), LDOMS_DEMO_PORTS (default "16482 16483").
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=$(realpath -m "${LDOMS_DEMO_DIR:-demo-hosts}")
read -r PORT1 PORT2 <<<"${LDOMS_DEMO_PORTS:-16482 16483}"
H1=$DEMO/host1
H2=$DEMO/host2
PW=$DEMO/password
USER_NAME=admin
GUEST=ldg1
unset LDM_HOME
STOP_ENV=""  # how to name this demo again in the --stop instruction
[ -z "${LDOMS_DEMO_DIR:-}" ] || STOP_ENV="LDOMS_DEMO_DIR=$DEMO "

home_of() { if [ "$1" = host1 ]; then echo "$H1"; else echo "$H2"; fi; }

# A pid is ours when its command line names the demo home: ldmd has `--home HOME`, a guest `--dir HOME/guests`.
is_ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"; }

wait_gone() {  # wait_gone PID: up to 10 s
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    return 1
}

stop_host() {
    local home=$1 pid f
    [ -d "$home" ] || return 0
    if [ -x .venv/bin/ldm ] && .venv/bin/ldm --home "$home" list >/dev/null 2>&1; then
        .venv/bin/ldm --home "$home" stop-domain -a >/dev/null 2>&1 || true  # guests outlive their ldmd
    fi
    pid=$(head -n1 "$home/ldmd.lock" 2>/dev/null || true)
    if [ -n "$pid" ] && is_ours "$pid" "$home"; then
        kill "$pid" 2>/dev/null || true
        wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    for f in "$home"/guests/*.pid; do  # guests an ldmd that was already gone left running
        [ -e "$f" ] || continue
        pid=$(grep -o '"pid": *[0-9]*' "$f" | grep -o '[0-9]*$' || true)
        if [ -n "$pid" ] && is_ours "$pid" "$home"; then
            kill "$pid" 2>/dev/null || true
            wait_gone "$pid" || kill -9 "$pid" 2>/dev/null || true
        fi
    done
}

stop_all() { stop_host "$H1"; stop_host "$H2"; }

if [ "${1:-}" = "--stop" ]; then
    stop_all
    echo "The demo hosts in $DEMO are stopped (remove the directory to delete their files)."
    exit 0
elif [ $# -gt 0 ]; then
    echo "usage: bash scripts/quickstart.sh [--stop]" >&2
    exit 2
fi

bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
stop_all  # what an earlier run left: the quickstart always starts from scratch
rm -rf "$H1" "$H2"
mkdir -p "$DEMO"

step() { printf '\n== %s\n' "$*"; }
# on HOST ldm|ldmd WORDS...: show the command as the administrator of HOST types it, then run it there.
on() {
    local host=$1 cmd=$2
    shift 2
    printf '%s$ %s %s\n' "$host" "$cmd" "$*"
    "$cmd" --home "$(home_of "$host")" "$@"
}
# quietly HOST ldm|ldmd WORDS...: the same, without the transcript (its output only if it fails).
quietly() {
    local host=$1 cmd=$2 out
    shift 2
    if ! out=$("$cmd" --home "$(home_of "$host")" "$@" 2>&1); then
        printf '%s$ %s %s\n%s\n' "$host" "$cmd" "$*" "$out" >&2
        return 1
    fi
}

start_host() {  # start_host NAME HOME PORT
    local name=$1 home=$2 port=$3 pid
    printf '%s$ ldmd --home %s --platform t5240 --name %s --listen 127.0.0.1:%s &\n' "$name" "$home" "$name" "$port"
    # Its own session: closing the terminal that ran the quickstart does not stop the host.
    setsid ldmd --home "$home" --platform t5240 --name "$name" --listen "127.0.0.1:$port" \
        </dev/null >>"$DEMO/$name.out" 2>&1 &
    pid=$!
    for _ in $(seq 200); do
        ldm --home "$home" list >/dev/null 2>&1 && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "ldmd of $name exited; its output ($DEMO/$name.out):" >&2
            tail -n 20 "$DEMO/$name.out" >&2
            echo "(if another program holds port $port: LDOMS_DEMO_PORTS=\"P1 P2\" bash scripts/quickstart.sh)" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "ldmd of $name did not answer within 20 s; see $home/ldmd.log" >&2
    return 1
}

step "1. Two hosts on loopback: a home directory and a port each"
start_host host1 "$H1" "$PORT1"
start_host host2 "$H2" "$PORT2"
on host1 ldm list

step "2. Each host set up the LDoms way: services, then primary shrunk (delayed reconfiguration) and rebooted"
for host in host1 host2; do
    run=on
    if [ $host = host2 ]; then
        echo "(host2: the same commands)"
        run=quietly
    fi
    $run $host ldm add-vds primary-vds0 primary
    $run $host ldm add-vcc port-range=5000-5100 primary-vcc0 primary
    $run $host ldm add-vsw net-dev=eth0 primary-vsw0 primary
    $run $host ldm add-vdsdev "$DEMO/disk0.img" vol0@primary-vds0
    $run $host ldm set-crypto 1 primary  # a crypto unit: the data plane gets a second channel
    $run $host ldm set-vcpu 8 primary
    $run $host ldm set-memory 4G primary
    $run $host ldm stop-domain primary
done

step "3. Authentication: who may migrate into each host, and where (and who) the other host is"
(umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$PW")
fingerprint() { ldmd --home "$(home_of "$1")" tls show | awk '/^fingerprint/ {print $2}'; }
on host2 ldmd user add "$USER_NAME" --password-file "$PW"
on host1 ldmd user add "$USER_NAME" --password-file "$PW"
on host1 ldmd peer add host2 "127.0.0.1:$PORT2" --fingerprint "$(fingerprint host2)"
on host2 ldmd peer add host1 "127.0.0.1:$PORT1" --fingerprint "$(fingerprint host1)"

step "4. A guest on host1 running the ledger workload (every byte a function of a seed and a step count)"
on host1 ldm add-domain $GUEST
on host1 ldm add-vcpu 8 $GUEST
on host1 ldm add-memory 1G $GUEST
on host1 ldm add-vnet vnet0 primary-vsw0 $GUEST
on host1 ldm add-vdisk vdisk0 vol0@primary-vds0 $GUEST
on host1 ldm set-variable ldoms-workload=ledger $GUEST
on host1 ldm bind-domain $GUEST
on host1 ldm start-domain $GUEST
on host1 ldm list

step "5. Live migration host1 -> host2 (the guest keeps running; ldm is silent on success)"
t0=$(date +%s.%N)
on host1 ldm migrate-domain -p "$PW" $GUEST "$USER_NAME@host2"
t1=$(date +%s.%N)
downtime=$(python -c 'import sys; from pathlib import Path; from ldoms.hv.files import GuestFiles
rec = GuestFiles(Path(sys.argv[1]), sys.argv[2]).read_pidfile()
print("?" if rec is None or rec.downtime is None else f"{rec.downtime * 1000:.0f} ms")' "$H2/guests" $GUEST)
awk -v a="$t0" -v b="$t1" -v d="$downtime" \
    'BEGIN { printf "(migrate-domain took %.1f s; the guest itself measured a pause of %s)\n", b - a, d }'

step "6. Afterwards: the guest runs on host2 only, and both hosts keep a record of the migration"
on host1 ldm list
on host2 ldm list
on host1 ldm list-migrations
on host2 ldm list-migrations

step "7. The ledger: the guest is held still, every page is recomputed from the seed, then it runs on"
python - "$H2/guests" $GUEST <<'EOF'
import subprocess
import sys
from pathlib import Path

from ldoms.hv.control import GuestControl
from ldoms.hv.files import GuestFiles

guests, name = Path(sys.argv[1]), sys.argv[2]
guest = GuestControl(GuestFiles(guests, name), timeout=10)
steps = guest.suspend(timeout=10)["state"]["steps"]
try:
    argv = ["-m", "ldoms.hv.verify", "--dir", str(guests), "--domain", name, "--steps", str(steps)]
    print("host2$ python " + " ".join(argv), flush=True)
    rc = subprocess.run([sys.executable, *argv]).returncode
finally:
    guest.resume()
sys.exit(rc)
EOF

cat <<EOF

Both hosts keep running.  Talk to them with:
    export PATH=$PWD/.venv/bin:\$PATH
    ldm --home $H2 list -l $GUEST                 # or: export LDM_HOME=$H2
    ldm --home $H2 migrate-domain -p $PW $GUEST $USER_NAME@host1  # and back again
Stop everything with:
    ${STOP_ENV}bash scripts/quickstart.sh --stop
EOF
