#!/usr/bin/env bash
# End-to-end relay throughput, mailgate against Postfix in the same run:
#
#   smtp-source --(SESSIONS parallel sessions)--> relay --> smtp-sink
#
# For each relay a fresh smtp-sink is started with -M MESSAGES (it exits when
# the last message has arrived downstream); the figure is MESSAGES divided by
# the time from the start of smtp-source to the exit of smtp-sink, so it
# counts only mail that crossed the relay, durably spooled on the way
# (mailgate fsyncs before its 250; Postfix does the same by default).
#
# Relays: `mailgate` (no plugins), `mailgate-plugins` (three example plugins,
# smarthost-router, header-rewrite and spam-score, each at all five stages)
# and `postfix`; RELAYS picks which, in order.
#
# Usage: bench/relay.sh            (MESSAGES=10000 SESSIONS=20 SIZE=1024 RCPTS=1)
# Needs: root (a private Postfix instance), Debian's postfix package for
# smtp-source, smtp-sink and postfix itself; installed if missing.
set -euo pipefail

MESSAGES=${MESSAGES:-10000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
RCPTS=${RCPTS:-1}
RELAYS=${RELAYS:-"mailgate mailgate-noreuse mailgate-plugins postfix"}

cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release --locked -p mailgate --quiet
mailgate=$root/target/release/mailgate
rustup target add wasm32-wasip2 >/dev/null 2>&1
cargo build --release --locked --quiet --target wasm32-wasip2 --target-dir target/wasm-plugins \
    --manifest-path plugins/Cargo.toml -p spam-score -p header-rewrite -p smarthost-router
plugin_dir=$root/target/wasm-plugins/wasm32-wasip2/release

work=$(mktemp -d /tmp/mailgate-bench.XXXXXX)
chmod 755 "$work" # Postfix's daemons run as the postfix user
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -d "$work/postfix/conf" ] && postfix -c "$work/postfix/conf" stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sink_port=$(free_port)
mailgate_port=$(free_port)
plugins_port=$(free_port)
noreuse_port=$(free_port)
postfix_port=$(free_port)

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on port $1" >&2
    return 1
}

# Starts a mailgate on port $1 with its files in $work/$2; $3 is extra
# configuration (the plugins).
start_mailgate() {
    local port=$1 dir=$work/$2 extra=${3:-}
    mkdir -p "$dir"
    cat >"$dir/mailgate.toml" <<EOF
[server]
hostname = "bench.mailgate.test"
spool_dir = "$dir/spool"
max_connections = 1000

[[listener]]
name = "bench"
address = "127.0.0.1:$port"

[relay]
trusted_networks = ["127.0.0.0/8"]

[[route]]
name = "sink"
domains = ["*"]
smarthost = "127.0.0.1:$sink_port"
$extra
EOF
    "$mailgate" run --config "$dir/mailgate.toml" 2>"$dir/log" &
    mailgate_pid=$!
    pids+=("$mailgate_pid")
    wait_port "$port"
}

# The three example plugins, each at every stage.
plugin_chain() {
    local all='["connect", "helo", "mail", "rcpt", "data"]'
    cat <<EOF
[plugins]
cache_dir = "$work/plugin-cache"

[[plugin]]
name = "smarthost-router"
path = "$plugin_dir/smarthost_router.wasm"
stages = $all
[[plugin.settings.rules]]
domains = ["*"]
route = "sink"

[[plugin]]
name = "header-rewrite"
path = "$plugin_dir/header_rewrite.wasm"
stages = $all
[[plugin.settings.rules]]
set = "X-Relayed-By"
value = "mailgate"
[[plugin.settings.rules]]
remove = "X-Internal"

[[plugin]]
name = "spam-score"
path = "$plugin_dir/spam_score.wasm"
stages = $all
[plugin.settings]
quarantine_at = 100.0
reject_at = 200.0
EOF
}

start_postfix() {
    local pf=$work/postfix
    mkdir -p "$pf/conf"
    cp /etc/postfix/master.cf "$pf/conf/master.cf"
    cat >"$pf/conf/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
relayhost = [127.0.0.1]:$sink_port
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
maillog_file = $pf/maillog
maillog_file_prefixes = $pf
default_process_limit = 200
EOF
    mkdir -p "$pf/queue" "$pf/data"
    # Listen on our port instead of 25; no chroot (the queue is not in /var/spool).
    postconf -c "$pf/conf" -M# smtp/inet >/dev/null
    postconf -c "$pf/conf" -M "127.0.0.1:$postfix_port/inet=127.0.0.1:$postfix_port inet n - n - - smtpd"
    postconf -c "$pf/conf" -F '*/*/chroot = n'
    postfix -c "$pf/conf" set-permissions >/dev/null 2>&1 || true
    if ! postfix -c "$pf/conf" start >/dev/null 2>&1; then
        echo "postfix did not start:" >&2
        tail -5 "$pf/maillog" >&2
        return 1
    fi
    wait_port "$postfix_port"
}

# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
    python3 -c "import os; f=open('/proc/$1/stat').read().rsplit(')',1)[1].split(); print((int(f[11])+int(f[12]))/os.sysconf('SC_CLK_TCK'))"
}

# Runs one measurement against the relay on $1; prints "msgs/s injection_s arrival_s".
measure() {
    local port=$1
    smtp-sink -u postfix -M "$MESSAGES" -4 "127.0.0.1:$sink_port" 1024 &
    local sink=$!
    wait_port "$sink_port"
    local recipients=()
    if [ "$RCPTS" -gt 1 ]; then recipients=(-r "$RCPTS"); fi
    local start end_inject end_arrive
    start=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" "${recipients[@]}" \
        -f sender@bench.test -t rcpt@dest.test "127.0.0.1:$port"
    end_inject=$(date +%s.%N)
    wait "$sink"
    end_arrive=$(date +%s.%N)
    python3 -c "
s, i, a = $start, $end_inject, $end_arrive
print(f'{$MESSAGES / (a - s):.0f} {i - s:.2f} {a - s:.2f}')"
}

echo "workload: $MESSAGES messages x $SIZE bytes, $RCPTS recipient(s), $SESSIONS sessions"
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
declare -A rate
for relay in $RELAYS; do
    case $relay in
        mailgate) start_mailgate "$mailgate_port" mailgate; port=$mailgate_port ;;
        mailgate-noreuse) start_mailgate "$noreuse_port" mailgate-noreuse "$(printf '[delivery]\nidle_timeout = "0s"')"; port=$noreuse_port ;;
        mailgate-plugins) start_mailgate "$plugins_port" mailgate-plugins "$(plugin_chain)"; port=$plugins_port ;;
        postfix) start_postfix; port=$postfix_port ;;
        *) echo "unknown relay $relay" >&2; exit 2 ;;
    esac
    cpu_before=0
    case $relay in mailgate*) cpu_before=$(cpu_seconds "$mailgate_pid") ;; esac
    read -r msgs inject arrive < <(measure "$port")
    rate[$relay]=$msgs
    printf '%-16s %6s msg/s end to end  (all injected after %ss, all arrived after %ss)\n' "$relay" "$msgs" "$inject" "$arrive"
    case $relay in mailgate*)
        python3 -c "print(f'          {\"$relay\"} used {($(cpu_seconds "$mailgate_pid") - $cpu_before) * 1000 / $MESSAGES:.2f} ms of CPU per message')"
    esac
done
ratio() { python3 -c "print(f'ratio $1/$2: {${rate[$1]} / ${rate[$2]}:.2f}')"; }
if [ -n "${rate[mailgate]:-}" ] && [ -n "${rate[postfix]:-}" ]; then ratio mailgate postfix; fi
if [ -n "${rate[mailgate]:-}" ] && [ -n "${rate[mailgate-noreuse]:-}" ]; then ratio mailgate mailgate-noreuse; fi
if [ -n "${rate[mailgate-noreuse]:-}" ] && [ -n "${rate[postfix]:-}" ]; then ratio mailgate-noreuse postfix; fi
if [ -n "${rate[mailgate-plugins]:-}" ] && [ -n "${rate[mailgate]:-}" ]; then ratio mailgate-plugins mailgate; fi
if [ -n "${rate[mailgate-plugins]:-}" ] && [ -n "${rate[postfix]:-}" ]; then ratio mailgate-plugins postfix; fi
