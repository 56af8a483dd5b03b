# shellcheck shell=bash disable=SC2034  # sourced; the variables are used by up.sh/down.sh
# Shared settings of up.sh and down.sh (sourced, not run). Every value can be overridden
# from the environment; tests/test_slurm.py assumes the defaults for cluster, account and
# partitions (cpu, gpu).
QS_CLUSTER=${QACLIMS_SLURM_CLUSTER:-qaclims}
QS_ACCOUNT=${QACLIMS_SLURM_ACCOUNT:-qaclims}
QS_RUN=${QACLIMS_SLURM_RUN_DIR:-/run/qaclims-slurm}       # pid files (links for munged, mariadb)
QS_STATE=${QACLIMS_SLURM_STATE_DIR:-/var/spool/qaclims-slurm}
QS_LOGS=${QACLIMS_SLURM_LOG_DIR:-/var/log/qaclims-slurm}
QS_NGPU=${QACLIMS_SLURM_GPUS:-4}
QS_CTLD_PORT=${QACLIMS_SLURM_CTLD_PORT:-6817}
QS_SLURMD_PORT=${QACLIMS_SLURM_SLURMD_PORT:-6818}
QS_DBD_PORT=${QACLIMS_SLURM_DBD_PORT:-6819}
QS_DB_NAME=slurm_acct_db
QS_DB_USER=slurm
QS_ETC=/etc/slurm                  # srun inside jobs only finds the default path
QS_MARKER="written by qaclims .ci/slurm/up.sh"
# Stop order: dependants first.
QS_DAEMONS=(slurmd slurmctld slurmdbd mariadb munged)

qs_t0=${qs_t0:-$(date +%s%N)}
log() {
    local ms=$((($(date +%s%N) - qs_t0) / 1000000))
    printf '[slurm-ci %4d.%01ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
die() { printf '[slurm-ci] ERROR: %s\n' "$*" >&2; exit 1; }

# pid of a daemon from its pid file in $QS_RUN, printed only if that process is alive.
alive_pid() {
    local f="$QS_RUN/$1.pid" pid
    [[ -e $f ]] || return 1
    pid=$(tr -dc 0-9 <"$f")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}
