#!/usr/bin/env bash
# Start a real one-node SLURM cluster on localhost for CI: munged, MariaDB, slurmdbd,
# slurmctld and slurmd, each a plain daemon with a pid file in $QS_RUN (no systemd, no
# cgroups). Partitions "cpu" (default) and "gpu" share the node, which has the machine's real
# CPUs and memory plus 4 fake GPUs (links to /dev/null as devices). Accounting (sacct) works, which the
# Snakemake SLURM plugin needs to see jobs finish.
#
#   sudo .ci/slurm/up.sh      # idempotent: installs what is missing, starts what is not running
#   sudo .ci/slurm/down.sh    # stops the daemons by their pid files
#
# Must run as root on Debian/Ubuntu (apt-get). Prints the seconds each step took.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

[[ $(id -u) == 0 ]] || die "run as root (it installs packages and starts daemons)"

PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged mariadbd mariadb)

install_packages() {
    local missing=0 b
    for b in "${BINARIES[@]}"; do command -v "$b" >/dev/null || missing=1; done
    if ((missing == 0)); then
        log "packages already installed ($(slurmctld -V))"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} by hand"
    log "apt-get install ${PACKAGES[*]}"
    (
        # Keep the packages' init scripts from starting services: this script starts them.
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            trap 'rm -f /usr/sbin/policy-rc.d' EXIT
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod 755 /usr/sbin/policy-rc.d
        fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q && apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
    ) >"$QS_LOGS/apt-get.log" 2>&1 || {
        tail -30 "$QS_LOGS/apt-get.log" >&2
        die "apt-get failed (log: $QS_LOGS/apt-get.log)"
    }
    log "installed $(slurmctld -V)"
}

# Refuse to overwrite a file this script did not write (a real cluster's config).
check_ours() {
    [[ ! -e $1 ]] || grep -qF "$QS_MARKER" "$1" ||
        die "$1 exists and was not written by this script; not touching it"
}

# "NodeName=localhost CPUs=.. Boards=.. ... RealMemory=.. Gres=gpu:N" from slurmd -C.
node_line() {
    local hw
    hw=$(slurmd -C | head -1) || die "slurmd -C failed"
    [[ $hw == NodeName=* ]] || die "unexpected slurmd -C output: $hw"
    echo "NodeName=localhost ${hw#NodeName=* } Gres=gpu:$QS_NGPU State=UNKNOWN"
}

render() { # template output mode
    local tpl=$1 out=$2 mode=$3 node cpus mem
    check_ours "$out"
    node=$(node_line)
    cpus=$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$node")
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")
    sed -e "s|@MARKER@|$QS_MARKER|" -e "s|@CLUSTER@|$QS_CLUSTER|" -e "s|@STATE@|$QS_STATE|" \
        -e "s|@RUN@|$QS_RUN|" -e "s|@LOGS@|$QS_LOGS|" -e "s|@NODE_LINE@|$node|" \
        -e "s|@CTLD_PORT@|$QS_CTLD_PORT|" -e "s|@SLURMD_PORT@|$QS_SLURMD_PORT|" \
        -e "s|@DBD_PORT@|$QS_DBD_PORT|" -e "s|@DEF_MEM_PER_CPU@|$((mem / cpus / 2))|" \
        -e "s|@GPU_DIR@|$QS_STATE/fake-gpu|" -e "s|@LAST_GPU@|$((QS_NGPU - 1))|" \
        -e "s|@DB_USER@|$QS_DB_USER|" -e "s|@DB_PASS@|$(db_pass)|" -e "s|@DB_NAME@|$QS_DB_NAME|" \
        "$HERE/$tpl" >"$out.tmp"
    chmod "$mode" "$out.tmp"
    if [[ -e $out ]] && ! cmp -s "$out.tmp" "$out" && alive_pid slurmctld >/dev/null; then
        log "WARNING: $out changed while the cluster runs: run down.sh, then up.sh, to apply it"
    fi
    mv "$out.tmp" "$out"
}

# A random database password, made once and kept (root-only) beside the state.
db_pass() {
    local f="$QS_STATE/db-pass"
    [[ -s $f ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$f")
    cat "$f"
}

write_configs() {
    mkdir -p "$QS_ETC" "$QS_RUN" "$QS_STATE/ctld" "$QS_STATE/slurmd" "$QS_STATE/fake-gpu" "$QS_LOGS"
    local i
    # slurmd only exports CUDA_VISIBLE_DEVICES for gres files that stat() as character
    # devices, and a plain file is rejected: link each fake GPU to /dev/null (task/none puts no
    # device cgroup around jobs, so nothing ever opens them).
    for ((i = 0; i < QS_NGPU; i++)); do ln -sfn /dev/null "$QS_STATE/fake-gpu/nvidia$i"; done
    render slurm.conf.in "$QS_ETC/slurm.conf" 644
    render gres.conf.in "$QS_ETC/gres.conf" 644
    render slurmdbd.conf.in "$QS_ETC/slurmdbd.conf" 600 # slurmdbd insists on 600
    log "configs in $QS_ETC: $(grep ^NodeName "$QS_ETC/slurm.conf")"
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.5 s.
wait_for() {
    local limit=$1 what=$2 i
    shift 2
    for ((i = 0; i < limit * 2; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "$what not ready after ${limit}s (logs in $QS_LOGS)"
}

start_munge() {
    if alive_pid munged >/dev/null; then log "munged already running"; return; fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/log/munge /var/lib/munge
    [[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create
    # munged runs as user munge, so its pid file and log stay in munge-owned folders.
    runuser -u munge -- munged --pid-file=/run/munge/qaclims-munged.pid
    ln -sf /run/munge/qaclims-munged.pid "$QS_RUN/munged.pid"
    wait_for 10 munged bash -c 'munge -n | unmunge'
    log "munged up (pid $(alive_pid munged))"
}

start_mariadb() {
    if alive_pid mariadb >/dev/null; then log "mariadb already running"; return; fi
    install -d -o mysql -g mysql -m 755 /run/mysqld
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$QS_LOGS/mariadb-install.log" 2>&1
    fi
    # Unix socket only (no TCP port to clash with); settings slurmdbd recommends.
    setsid mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking \
        --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/qaclims-mariadb.pid \
        --log-error="$QS_LOGS/mariadb.log" --innodb-lock-wait-timeout=900 \
        </dev/null >/dev/null 2>&1 &
    ln -sf /run/mysqld/qaclims-mariadb.pid "$QS_RUN/mariadb.pid"
    wait_for 60 mariadb mariadb-admin --socket=/run/mysqld/mysqld.sock ping
    mariadb --socket=/run/mysqld/mysqld.sock <<SQL
CREATE USER IF NOT EXISTS '$QS_DB_USER'@'localhost' IDENTIFIED BY '$(db_pass)';
ALTER USER '$QS_DB_USER'@'localhost' IDENTIFIED BY '$(db_pass)';
GRANT ALL ON $QS_DB_NAME.* TO '$QS_DB_USER'@'localhost';
SQL
    log "mariadb up (pid $(alive_pid mariadb))"
}

start_slurmdbd() {
    if alive_pid slurmdbd >/dev/null; then log "slurmdbd already running"; return; fi
    slurmdbd # daemonises; PidFile from slurmdbd.conf
    wait_for 60 slurmdbd sacctmgr -n list cluster
    log "slurmdbd up (pid $(alive_pid slurmdbd))"
}

# Cluster, account and users in the accounting database (sacctmgr -i: no prompts).
add_associations() {
    local users=(root) u
    [[ -z ${SUDO_USER:-} || ${SUDO_USER} == root ]] || users+=("$SUDO_USER")
    if [[ -z $(sacctmgr -n -P list cluster "$QS_CLUSTER" format=cluster) ]]; then
        sacctmgr -i add cluster "$QS_CLUSTER" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list account "$QS_ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$QS_ACCOUNT" cluster="$QS_CLUSTER" \
            description="QA-CLIMS CI" organization=qaclims >/dev/null
    fi
    for u in "${users[@]}"; do
        if [[ -z $(sacctmgr -n -P list assoc cluster="$QS_CLUSTER" account="$QS_ACCOUNT" \
            user="$u" format=user) ]]; then
            sacctmgr -i add user "$u" account="$QS_ACCOUNT" defaultaccount="$QS_ACCOUNT" \
                cluster="$QS_CLUSTER" >/dev/null
        fi
    done
    log "accounting: cluster $QS_CLUSTER, account $QS_ACCOUNT, users ${users[*]}"
}

start_slurmctld() {
    if alive_pid slurmctld >/dev/null; then log "slurmctld already running"; return; fi
    slurmctld
    wait_for 30 slurmctld scontrol ping
    log "slurmctld up (pid $(alive_pid slurmctld))"
}

start_slurmd() {
    if alive_pid slurmd >/dev/null; then log "slurmd already running"; return; fi
    slurmd -N localhost
    wait_for 10 slurmd alive_pid slurmd
    log "slurmd up (pid $(alive_pid slurmd))"
}

# End-to-end check: a GPU job step must run and see the GPU SLURM gave it.
smoke_test() {
    local cvd
    cvd=$(timeout 60 srun -A "$QS_ACCOUNT" -p gpu --gpus=1 -n1 -t 1 --mem 100 \
        printenv CUDA_VISIBLE_DEVICES) || die "srun --gpus=1 failed (logs in $QS_LOGS)"
    [[ $cvd =~ ^[0-9]+$ ]] || die "srun --gpus=1 ran without CUDA_VISIBLE_DEVICES (got '$cvd')"
    log "srun -p gpu --gpus=1 ran with CUDA_VISIBLE_DEVICES=$cvd"
}

node_idle() {
    local state
    state=$(sinfo -h -n localhost -o %T | sort -u | tr '\n' ' ')
    case $state in
    "idle "* | "mixed "* | "allocated "*) return 0 ;;
    *drain* | *down*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 ;;
    esac
    return 1
}

main() {
    mkdir -p "$QS_LOGS" "$QS_STATE" "$QS_RUN"
    log "up: cluster $QS_CLUSTER, logs in $QS_LOGS, pid files in $QS_RUN"
    install_packages
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    add_associations
    start_slurmctld
    start_slurmd
    wait_for 60 "node localhost idle" node_idle
    sinfo -o '%P %a %D %T %C %G %m'
    smoke_test
    log "cluster ready"
}

main "$@"
