#!/usr/bin/env bash
# Stop the CI SLURM cluster that up.sh started: cancel its jobs, then end slurmd, slurmctld,
# slurmdbd, MariaDB and munged by the pids in their pid files (SIGTERM, SIGKILL after 30 s).
# Packages, configs, the accounting database and logs stay, so up.sh starts again in seconds.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

[[ $(id -u) == 0 ]] || die "run as root"

stop() {
    local name=$1 pid i
    if ! pid=$(alive_pid "$name"); then
        log "$name not running"
        rm -f "$QS_RUN/$name.pid"
        return
    fi
    kill -TERM "$pid"
    for ((i = 0; i < 60; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
        kill -KILL "$pid"
    fi
    rm -f "$QS_RUN/$name.pid"
    log "$name (pid $pid) stopped"
}

# Jobs still queued or running on this cluster (ours alone) would outlive slurmd otherwise.
if alive_pid slurmctld >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $jobs ]]; then
        log "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $jobs || true
        sleep 2
    fi
fi
for d in "${QS_DAEMONS[@]}"; do stop "$d"; done
log "down"
