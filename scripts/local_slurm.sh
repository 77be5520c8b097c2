#!/usr/bin/env bash
# A single-host SLURM cluster for the tests marked `slurm` (docs/launching.md, "Testing the
# launchers"): munged, slurmctld and two slurmd (node names n1 and n2 on this host).
#
#   scripts/local_slurm.sh up       # install slurm-wlm + munge when missing (root), start, wait until idle
#   scripts/local_slurm.sh down     # stop the daemons (by their pid files)
#   scripts/local_slurm.sh env      # the line to eval in a shell: export SLURM_CONF=…
#
# State, logs and the generated slurm.conf live in $AVSSL_SLURM_DIR (default /tmp/avssl-slurm);
# every client command needs SLURM_CONF pointing at that slurm.conf. Each node advertises this
# machine's CPUs and half its memory.
set -euo pipefail

STATE=${AVSSL_SLURM_DIR:-/tmp/avssl-slurm}
CONF=$STATE/slurm.conf
TEMPLATE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/slurm/slurm.conf.in
export SLURM_CONF=$CONF

die() { echo "local_slurm.sh: $*" >&2; exit 1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    [[ $(id -u) -eq 0 ]] || die "slurm-wlm and munge are missing and installing them needs root"
    echo "local_slurm.sh: installing slurm-wlm and munge" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
    [[ -f /etc/munge/munge.key ]] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none;
                                        chown munge: /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge: /run/munge
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    die "munged did not start"
}

write_config() {
    local host cpus memory
    host=$(hostname -s)
    cpus=$(nproc)
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
    mkdir -p "$STATE/ctld"
    sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEMORY@|$memory|g" \
        -e "s|@CTLD_PORT@|${AVSSL_SLURM_PORT:-6817}|g" -e "s|@PORT1@|$(( ${AVSSL_SLURM_PORT:-6817} + 10 ))|g" \
        -e "s|@PORT2@|$(( ${AVSSL_SLURM_PORT:-6817} + 11 ))|g" "$TEMPLATE" > "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
    install_packages
    start_munge
    write_config
    running "$STATE/slurmctld.pid" || slurmctld
    for node in n1 n2; do running "$STATE/slurmd-$node.pid" || slurmd -N "$node"; done
    for _ in $(seq 100); do
        if [[ $(sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l) -ge 2 ]]; then
            echo "local_slurm.sh: up (nodes n1, n2 idle); export SLURM_CONF=$CONF" >&2
            return
        fi
        sleep 0.2
    done
    sinfo -N >&2 || true
    die "the nodes did not become idle; logs in $STATE"
}

down() {
    local pids=()
    for file in "$STATE"/slurmd-*.pid "$STATE/slurmctld.pid"; do
        running "$file" && pids+=("$(cat "$file")")
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && return 0
        sleep 0.1
    done
    die "daemons still running after 10 s: ${pids[*]}"
}

case ${1:-} in
    up) up ;;
    down) down ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
