#!/usr/bin/env bash
# One-node SLURM cluster on this machine (no systemd, no cgroups) for tests and smoke runs.
#
#   scripts/slurm-local.sh start    install if needed, start (or check) every daemon, wait for the node
#   scripts/slurm-local.sh stop     cancel remaining jobs and stop every daemon by its pid file
#   scripts/slurm-local.sh status   print what is up; exit 0 only if slurmctld answers
#
# Settings (environment):
#   SLURM_LOCAL_DIR      state, spool, logs, pid files, private MariaDB   (/var/lib/slurm-local)
#   SLURM_PARTITION      partition name                                   (debug)
#   SLURM_NODE_CPUS      CPUs the node advertises; may exceed nproc       (nproc)
#   SLURM_NODE_MEM_MB    RealMemory of the node                           (90% of MemTotal)
#   SLURM_ACCOUNTING     1: MariaDB + slurmdbd so sacct works; 0: none    (1)
#   SLURM_CRED_EXPIRE    credential lifetime = delay before a requeued job may restart (30)
#   SLURM_START_TIMEOUT  seconds to wait for the daemons and the node    (60)
#   SLURM_DB_PORT        TCP port of the private MariaDB (127.0.0.1)     (16033)
#   SLURM_PURGE=1        (stop) also delete SLURM_LOCAL_DIR
#   KEEP_MUNGE=1         (stop) leave munged running
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

DIR=${SLURM_LOCAL_DIR:-/var/lib/slurm-local}
PARTITION=${SLURM_PARTITION:-debug}
ACCOUNTING=${SLURM_ACCOUNTING:-1}
START_TIMEOUT=${SLURM_START_TIMEOUT:-60}
CRED_EXPIRE=${SLURM_CRED_EXPIRE:-30}
DB_PORT=${SLURM_DB_PORT:-16033}
NODE=$(hostname -s)

CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
RUN=$DIR/run
LOGS=$DIR/log
DB=$DIR/mariadb                      # owned by mysql: datadir, socket, pid file, error log
DB_DATA=$DB/data
DB_SOCK=$DB/mariadbd.sock
DB_PID=$DB/mariadbd.pid
DB_LOG=$DB/mariadbd.log
MUNGE_PID=/run/munge/munged.pid
MUNGE_SOCK=/run/munge/munge.socket.2

log() { printf 'slurm-local: %s\n' "$*" >&2; }

# fail MESSAGE [LOGFILE...]: report, show the tail of each log that exists, exit 1.
fail() {
    local msg=$1 f
    shift
    log "ERROR: $msg"
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 25 "$f" >&2 || true
    done
    exit 1
}

# Decimal only: bash arithmetic would read a leading 0 as octal.
is_uint() { [[ $1 =~ ^(0|[1-9][0-9]*)$ ]]; }
is_posint() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

check_settings() {
    [[ $ACCOUNTING == 0 || $ACCOUNTING == 1 ]] || fail "SLURM_ACCOUNTING must be 0 or 1, got '$ACCOUNTING'"
    is_uint "$START_TIMEOUT" || fail "SLURM_START_TIMEOUT must be whole seconds, got '$START_TIMEOUT'"
    is_uint "$CRED_EXPIRE" || fail "SLURM_CRED_EXPIRE must be whole seconds, got '$CRED_EXPIRE'"
    is_uint "$DB_PORT" || fail "SLURM_DB_PORT must be a port number, got '$DB_PORT'"
    [[ $PARTITION =~ ^[A-Za-z0-9_.-]+$ ]] || fail "SLURM_PARTITION '$PARTITION' is not a valid partition name"
    [[ $DIR == /* && $DIR != / ]] || fail "SLURM_LOCAL_DIR must be an absolute path other than /, got '$DIR'"
}

node_settings() {
    CPUS=${SLURM_NODE_CPUS:-$(nproc)}
    MEM_MB=${SLURM_NODE_MEM_MB:-$(awk '/^MemTotal:/ { printf "%d", $2 * 0.9 / 1024 }' /proc/meminfo)}
    is_posint "$CPUS" || fail "SLURM_NODE_CPUS must be a positive integer, got '$CPUS'"
    is_posint "$MEM_MB" || fail "SLURM_NODE_MEM_MB must be a positive integer, got '$MEM_MB'"
}

# ---------------------------------------------------------------- processes

# pid_of COMM PIDFILE: print the pid if the file names a live process whose comm is COMM.
pid_of() {
    local comm=$1 pidfile=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile" 2>/dev/null) || return 1
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    printf '%s\n' "$pid"
}

# alive PID: the process exists and is not a zombie.
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# stop_daemons COMM:PIDFILE...: SIGTERM to each (together: each takes 1-4 s to exit), wait up to
# 15 s, then SIGKILL; a pid file naming no such live process is only removed.
stop_daemons() {
    local item comm pidfile pid i n any
    local -a pids=() names=() files=()
    for item in "$@"; do
        comm=${item%%:*}
        pidfile=${item#*:}
        if pid=$(pid_of "$comm" "$pidfile"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            names+=("$comm")
            files+=("$pidfile")
        elif [[ -e $pidfile ]]; then
            rm -f "$pidfile"
            log "$comm: removed stale pid file $pidfile"
        fi
    done
    for ((i = 0; i < 150; i++)); do
        any=0
        for pid in "${pids[@]}"; do
            if alive "$pid"; then any=1; fi
        done
        ((any)) || break
        sleep 0.1
    done
    for i in "${!pids[@]}"; do
        if alive "${pids[i]}"; then
            log "${names[i]} (pid ${pids[i]}) ignored SIGTERM for 15 s; sending SIGKILL"
            kill -KILL "${pids[i]}" 2>/dev/null || true
        fi
    done
    for i in "${!pids[@]}"; do
        for ((n = 0; n < 50; n++)); do
            alive "${pids[i]}" || break
            sleep 0.1
        done
        alive "${pids[i]}" && fail "${names[i]} (pid ${pids[i]}) survived SIGKILL"
        rm -f "${files[i]}"
        log "${names[i]} stopped"
    done
}

# Deadline shared by every wait of one `start`.
DEADLINE=0

# wait_until DESCRIPTION WATCH COMMAND...: poll COMMAND until it succeeds; non-zero once the
# deadline passed. WATCH is COMM:PIDFILE of the daemon expected to answer ("-" for none): when no
# such process has lived for 5 s, the wait gives up early instead of running into the deadline.
wait_until() {
    local what=$1 watch=$2 seen=$SECONDS
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        if [[ $watch != - ]] && pid_of "${watch%%:*}" "${watch#*:}" >/dev/null; then
            seen=$SECONDS
        elif [[ $watch != - ]] && ((SECONDS - seen >= 5)); then
            log "${watch%%:*} is not running (no live process in ${watch#*:}) while waiting for $what"
            return 1
        fi
        if ((SECONDS >= DEADLINE)); then
            log "timed out after ${START_TIMEOUT}s waiting for $what"
            return 1
        fi
        sleep 0.2
    done
}

# spawn LOGFILE COMMAND...: start a daemon fully detached from the caller: stdin from /dev/null,
# stdout/stderr to LOGFILE, every other inherited descriptor closed (the caller's pipes, our lock),
# new session. Then e.g. subprocess.run(..., capture_output=True) returns while the daemons run on.
# The daemon's own exit status is returned (the slurm daemons and munged fork by themselves).
spawn() {
    local out=$1
    shift
    (
        exec </dev/null >>"$out" 2>&1
        local fd n
        for fd in /proc/"$BASHPID"/fd/*; do
            n=${fd##*/}
            if ((n > 2)) && [[ -e $fd ]]; then exec {n}>&-; fi
        done
        exec setsid "$@"
    )
}

# spawn_bg LOGFILE COMMAND...: like spawn, for a program that does not daemonize itself.
spawn_bg() {
    local out=$1
    shift
    spawn "$out" setsid --fork "$@"
}

# write_if_changed PATH MODE CONTENT: replace PATH atomically when CONTENT differs; status 0 if written.
write_if_changed() {
    local path=$1 mode=$2 content=$3 tmp
    if [[ -f $path ]] && [[ $(cat "$path") == "$content" ]]; then
        chmod "$mode" "$path"
        return 1
    fi
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
    log "wrote $path"
    return 0
}

# ---------------------------------------------------------------- install

install_packages() {
    local -a bins=(slurmctld slurmd sbatch sacct munged munge unmunge)
    local -a pkgs=(slurmctld slurmd slurm-client munge)
    local b missing=()
    if [[ $ACCOUNTING == 1 ]]; then
        bins+=(slurmdbd sacctmgr mariadbd mariadb-install-db mariadb)
        pkgs+=(slurmdbd mariadb-server)
    fi
    for b in "${bins[@]}"; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get to install ${pkgs[*]}"
    log "missing ${missing[*]}; installing ${pkgs[*]}"
    # Keep package scripts from starting system-wide services (a system mariadb on :3306, ...).
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
    fi
    local rc=0
    apt-get update -qq || rc=$?
    if ((rc == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=300 "${pkgs[@]}" || rc=$?
    fi
    ((added_policy)) && rm -f "$policy"
    ((rc == 0)) || fail "apt-get failed (exit $rc) installing ${pkgs[*]}"
}

# ---------------------------------------------------------------- munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mungekey --create --keyfile=/etc/munge/munge.key
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    munge_ok && return 0
    if ! pid_of munged "$MUNGE_PID" >/dev/null; then
        rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$MUNGE_PID"
        spawn "$LOGS/munged.out" runuser -u munge -- /usr/sbin/munged ||
            fail "munged did not start" "$LOGS/munged.out" /var/log/munge/munged.log
    fi
    wait_until "munge to answer" "munged:$MUNGE_PID" munge_ok ||
        fail "munge -n | unmunge does not work" "$LOGS/munged.out" /var/log/munge/munged.log
}

# ---------------------------------------------------------------- accounting

db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -u root --batch --skip-column-names "$@"; }
db_answers() { db_sql -e 'SELECT 1'; }

db_password() {
    local f=$DIR/db-password
    if [[ ! -s $f ]]; then
        (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$f")
    fi
    cat "$f"
}

start_mariadb() {
    install -d -o mysql -g mysql -m 0750 "$DB"
    if [[ ! -d $DB_DATA/mysql ]]; then
        log "initialising private MariaDB in $DB_DATA"
        rm -rf "$DB_DATA.tmp"
        install -d -o mysql -g mysql -m 0750 "$DB_DATA.tmp"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DATA.tmp" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOGS/mariadb-install.log" 2>&1 ||
            fail "mariadb-install-db failed" "$LOGS/mariadb-install.log"
        rm -rf "$DB_DATA"
        mv "$DB_DATA.tmp" "$DB_DATA"
    fi
    if ! pid_of mariadbd "$DB_PID" >/dev/null; then
        rm -f "$DB_SOCK" "$DB_PID"
        # mariadbd does not daemonize: background it in its own session.
        spawn_bg "$LOGS/mariadbd.out" mariadbd --no-defaults --user=mysql --datadir="$DB_DATA" \
            --socket="$DB_SOCK" --pid-file="$DB_PID" --log-error="$DB_LOG" \
            --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
            --innodb-buffer-pool-size=64M --innodb-log-file-size=64M \
            --innodb-lock-wait-timeout=900 ||
            fail "could not launch mariadbd" "$LOGS/mariadbd.out"
    fi
    wait_until "MariaDB on $DB_SOCK" "mariadbd:$DB_PID" db_answers ||
        fail "MariaDB did not come up" "$DB_LOG" "$LOGS/mariadbd.out"
    local pw
    pw=$(db_password)
    db_sql <<SQL || fail "could not create the slurm database user" "$DB_LOG"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

dbd_answers() { sacctmgr -n -P show cluster format=cluster; }

start_slurmdbd() {
    local content changed=0
    content="# Written by scripts/slurm-local.sh; edits are overwritten on the next start.
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=localhost
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db"
    write_if_changed "$DBD_CONF" 0600 "$content" && changed=1
    chown root:root "$DBD_CONF"
    if ((changed)); then
        stop_daemons "slurmdbd:$RUN/slurmdbd.pid"
    fi
    if ! pid_of slurmdbd "$RUN/slurmdbd.pid" >/dev/null; then
        spawn "$LOGS/slurmdbd.out" slurmdbd ||
            fail "slurmdbd did not start" "$LOGS/slurmdbd.log" "$LOGS/slurmdbd.out"
    fi
    wait_until "slurmdbd to answer sacctmgr" "slurmdbd:$RUN/slurmdbd.pid" dbd_answers ||
        fail "slurmdbd does not answer" "$LOGS/slurmdbd.log" "$LOGS/slurmdbd.out" "$DB_LOG"
    if ! dbd_answers 2>/dev/null | grep -qx local; then
        sacctmgr -i add cluster local >/dev/null ||
            fail "sacctmgr add cluster local failed" "$LOGS/slurmdbd.log"
        log "registered cluster 'local' in slurmdbd"
    fi
}

# ---------------------------------------------------------------- slurm

slurm_conf() {
    local acct_storage acct_gather acct_host=""
    if [[ $ACCOUNTING == 1 ]]; then
        acct_storage=accounting_storage/slurmdbd
        acct_gather=jobacct_gather/linux
        acct_host="AccountingStorageHost=127.0.0.1"
    else
        acct_storage=accounting_storage/none
        acct_gather=jobacct_gather/none
    fi
    cat <<EOF
# Written by scripts/slurm-local.sh; edits are overwritten on the next start.
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Credential lifetime; it is also the delay before a requeued job may start again (default 120 s).
AuthInfo=cred_expire=$CRED_EXPIRE
MpiDefault=none
MailProg=/bin/true
# No usable cgroups here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=$acct_storage
$acct_host
JobAcctGatherType=$acct_gather
SchedulerType=sched/backfill
# Start jobs as soon as they are eligible (defaults: batch jobs may wait 3 s, a job whose begin
# time passed waits for the next 30 s backfill or 60 s main pass).
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# Lets CPUs= exceed the hardware (oversubscription for many small test jobs).
SlurmdParameters=config_overrides
JobRequeue=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# Short timers for tests.
MinJobAge=120
KillWait=5
MessageTimeout=10
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

ctld_up() {
    local out
    out=$(scontrol ping 2>/dev/null) || true
    [[ $out == *" is UP"* ]]
}

node_state() {
    local out
    out=$(sinfo -h -n "$NODE" -o %T 2>/dev/null) || return 1
    printf '%s\n' "${out%%$'\n'*}"
}

wait_node_ready() {
    local state last_resume=-100 seen=$SECONDS
    local -a logs=("$LOGS/slurmd.log" "$LOGS/slurmd.out" "$LOGS/slurmctld.log")
    while :; do
        state=$(node_state) || state=""
        case $state in
            idle | mixed | allocated | completing) return 0 ;;
        esac
        # Resume a node left down or drained (e.g. by an unclean stop); '*' means slurmd has not
        # registered yet, which a resume cannot fix, so keep waiting then.
        if [[ $state =~ down|drain|fail && $state != *'*' ]] && ((SECONDS - last_resume >= 3)); then
            log "node $NODE is '$state'; resuming it"
            scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
            last_resume=$SECONDS
        fi
        if pid_of slurmd "$RUN/slurmd.pid" >/dev/null; then
            seen=$SECONDS
        elif ((SECONDS - seen >= 5)); then
            fail "slurmd is not running (node $NODE state '${state:-unknown}')" "${logs[@]}"
        fi
        if ((SECONDS >= DEADLINE)); then
            fail "node $NODE not ready after ${START_TIMEOUT}s (state '${state:-unknown}'); reason: $(
                sinfo -h -n "$NODE" -o %E 2>/dev/null || true)" "${logs[@]}"
        fi
        sleep 0.2
    done
}

# Written before slurmdbd starts: sacctmgr finds slurmdbd through slurm.conf.
write_slurm_conf() {
    install -d -m 0755 /etc/slurm "$DIR/state" "$DIR/spool"
    if write_if_changed "$CONF" 0644 "$(slurm_conf)"; then
        # A reconfigure cannot switch plugins (e.g. the accounting type): restart both daemons.
        stop_daemons "slurmd:$RUN/slurmd.pid" "slurmctld:$RUN/slurmctld.pid"
    fi
}

start_slurm() {
    if ! pid_of slurmctld "$RUN/slurmctld.pid" >/dev/null; then
        spawn "$LOGS/slurmctld.out" slurmctld -i ||
            fail "slurmctld did not start" "$LOGS/slurmctld.log" "$LOGS/slurmctld.out"
    fi
    wait_until "slurmctld to answer scontrol ping" "slurmctld:$RUN/slurmctld.pid" ctld_up ||
        fail "slurmctld does not answer" "$LOGS/slurmctld.log" "$LOGS/slurmctld.out"
    if ! pid_of slurmd "$RUN/slurmd.pid" >/dev/null; then
        spawn "$LOGS/slurmd.out" slurmd -N "$NODE" ||
            fail "slurmd did not start" "$LOGS/slurmd.log" "$LOGS/slurmd.out"
    fi
    wait_node_ready
}

# ---------------------------------------------------------------- commands

take_lock() {
    install -d -m 0755 "$DIR"
    exec 9>"$DIR/.lock"
    flock -w 300 9 || fail "another slurm-local.sh holds $DIR/.lock"
}

cmd_start() {
    check_settings
    node_settings
    take_lock
    install_packages
    DEADLINE=$((SECONDS + START_TIMEOUT))
    install -d -m 0755 "$RUN" "$LOGS"
    write_slurm_conf
    start_munge
    if [[ $ACCOUNTING == 1 ]]; then
        start_mariadb
        start_slurmdbd
    else
        stop_daemons "slurmdbd:$RUN/slurmdbd.pid" "mariadbd:$DB_PID"
    fi
    start_slurm
    log "up in ${SECONDS}s: node $NODE ($CPUS CPUs, ${MEM_MB} MB), partition $PARTITION," \
        "accounting $([[ $ACCOUNTING == 1 ]] && echo slurmdbd || echo none); logs in $LOGS"
}

cmd_stop() {
    check_settings
    take_lock
    local jobs i
    if command -v squeue >/dev/null 2>&1 && ctld_up; then
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ') || jobs=""
        if [[ -n ${jobs// /} ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086 # one word per job id
            scancel $jobs 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    # slurmdbd still has MariaDB while it shuts down; slurmctld queues what slurmdbd misses in
    # its state directory and sends it on the next start.
    stop_daemons "slurmd:$RUN/slurmd.pid" "slurmctld:$RUN/slurmctld.pid" "slurmdbd:$RUN/slurmdbd.pid"
    if [[ ${KEEP_MUNGE:-0} == 1 ]]; then
        stop_daemons "mariadbd:$DB_PID"
    else
        stop_daemons "mariadbd:$DB_PID" "munged:$MUNGE_PID"
    fi
    if [[ ${SLURM_PURGE:-0} == 1 ]]; then
        rm -rf -- "$DIR"
        log "purged $DIR"
    fi
    log "stopped in ${SECONDS}s"
}

cmd_status() {
    local name comm pidfile pid rc=0
    for name in munged:munged:$MUNGE_PID mariadbd:mariadbd:$DB_PID slurmdbd:slurmdbd:$RUN/slurmdbd.pid \
        slurmctld:slurmctld:$RUN/slurmctld.pid slurmd:slurmd:$RUN/slurmd.pid; do
        IFS=: read -r name comm pidfile <<<"$name"
        if pid=$(pid_of "$comm" "$pidfile"); then
            printf '%-10s up (pid %s)\n' "$name" "$pid"
        else
            printf '%-10s down\n' "$name"
        fi
    done
    if command -v scontrol >/dev/null 2>&1 && ctld_up; then
        printf 'controller answers: %s\n' "$(scontrol ping 2>/dev/null | head -n 1)"
        sinfo 2>/dev/null || true
        printf 'jobs in queue: %s\n' "$(squeue -h -o %A 2>/dev/null | wc -l)"
    else
        printf 'controller: not answering\n'
        rc=1
    fi
    return "$rc"
}

main() {
    local cmd=${1:-}
    case $cmd in
        start | stop | status) ;;
        *)
            echo "usage: $0 start|stop|status" >&2
            exit 2
            ;;
    esac
    ((EUID == 0)) || fail "must run as root (it installs packages and starts system daemons)"
    "cmd_$cmd"
}

main "$@"
