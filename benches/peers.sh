#!/usr/bin/env bash
# Switchyard against third parties, side by side on this machine, in one run:
#
#   upstream   llmsim (crates.io), an OpenAI-compatible simulator nobody here wrote
#   peer       onwards (crates.io), a Rust gateway that forwards with a key check
#   load       oha (crates.io) for plain requests; `switchyard bench --stream` for
#              streams, whose time to first token oha does not measure
#   reference  nginx, when installed (Debian: nginx-light), in the plain rows only:
#              forwarding and nothing else, what two more hops cost on this machine
#
# Every row is the median of interleaved rounds (direct, onwards, switchyard; then
# onwards, switchyard, direct; and so on round them all), so a noisy machine hurts all
# alike and no one always runs in the same place. Switchyard runs the example config
# with us-east pointed at llmsim, acme's limits raised out of the way and every feature
# on (auth, admission with reservation, scheduling, routing, audit, cache, metrics).
#
#   benches/peers.sh                 # the whole table (about 17 minutes after the release build, 12 without nginx)
#   ROUNDS=6 SECONDS_PER_RUN=20 benches/peers.sh
#   STREAM_ROUNDS=10 benches/peers.sh   # more rounds of streams (default 6)
#   SWITCHYARD_BIN=/path/to/old/switchyard benches/peers.sh   # another build, as is
#   PGO=1 benches/peers.sh           # the deployable build: scripts/pgo-build.sh (about
#                                    # 15 minutes more)
#   MEASURE=instructions benches/peers.sh   # counted, not timed (about 10 minutes)
#   THREADS=1 benches/peers.sh       # both gateways serve connections on one thread
#   REFERENCE=0 benches/peers.sh     # without nginx, even when it is installed
#   HALT_POLL_NS=200000 benches/peers.sh   # a VM guest's idle CPUs poll 200 µs before
#                                    # halting for the run (root, haltpoll; put back after)
#   LLMSIM_LOGS=requests benches/peers.sh  # llmsim logs every request, as it ships
#                                    # (and as runs of this script did before it was quiet)
#
# Timings on two shared cores move by a third between runs. MEASURE=instructions runs
# each gateway alone under valgrind's callgrind instead (REQUESTS whole chat answers,
# then STREAMED streamed ones, at c=8 after a warm-up, the whole process counted: every
# thread, the audit writer's too) and prints instructions and allocations per answer,
# the same on a quiet machine and a busy one; nginx's instructions too, when it is
# installed, run as one process. Needs valgrind (Debian: valgrind).
#
# For the plain rows each process runs in a session of its own (setsid), so with the
# kernel's autogroups (on by default) the CPU is shared fairly between processes, as
# between services in cgroups of their own under systemd or in containers, not
# between every thread of the four; SESSIONS=0 starts them all in this script's
# session instead. The stream rows pin the processes to cores instead (below).
#
# THREADS=N gives both gateways N threads serving connections: Switchyard's
# `server.workers`, onwards' TOKIO_WORKER_THREADS. Unset, each runs as it ships, one a
# core. On two cores shared with the upstream and the load generator a gateway gets
# about one core's worth, and fewer threads than cores there wake less often (the
# README's "Configuration" says how much).
#
# Tools are installed once with `cargo install --locked` into $SWITCHYARD_BENCH_TOOLS
# (default ~/.cache/switchyard-bench). Not part of CI: it measures, it asserts nothing.
set -euo pipefail

# Rounds: by default one for each target of the plain rows (three, or four with nginx).
ROUNDS=${ROUNDS:-}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
STREAMS=${STREAMS:-2000}
# The first token's p99 in one round of 2,000 streams moves by 5 to 20 ms from the next
# round on this machine, the baseline's as much as a gateway's (most rounds within a
# few ms, one in four or five far off): more rounds than the plain rows, so that one
# round far off moves the median less. Each round is also compared with its own
# baseline (`switchyard bench` prints that line under the medians).
STREAM_ROUNDS=${STREAM_ROUNDS:-6}
STREAM_RATE=${STREAM_RATE:-300}
TOOLS=${SWITCHYARD_BENCH_TOOLS:-$HOME/.cache/switchyard-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
KEY=sy-demo-acme
PIDS=()

HALT_POLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_WAS=
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$HALT_POLL_WAS" ]; then echo "$HALT_POLL_WAS" >"$HALT_POLL"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# The machine's idle policy for this run only (see "How this machine's idle CPUs wait"
# below): what the c=1 rows measure on a VM booted with polling off, against one that
# polls as KVM guests' haltpoll does by default.
if [ -n "${HALT_POLL_NS:-}" ]; then
    if [ ! -w "$HALT_POLL" ]; then
        printf 'HALT_POLL_NS needs %s writable (a KVM guest with the haltpoll idle driver, as root)\n' "$HALT_POLL" >&2
        exit 1
    fi
    HALT_POLL_WAS=$(cat "$HALT_POLL")
    echo "$HALT_POLL_NS" >"$HALT_POLL"
fi

say() { printf '%s\n' "$*" >&2; }

for tool in llmsim onwards oha; do
    if [ ! -x "$TOOLS/bin/$tool" ]; then
        say "installing $tool into $TOOLS (once)"
        cargo install --locked --quiet --root "$TOOLS" "$tool"
    fi
done
export PATH="$TOOLS/bin:$PATH"
if [ -n "${SWITCHYARD_BIN:-}" ]; then
    SWITCHYARD=$SWITCHYARD_BIN
elif [ "${PGO:-0}" = 1 ]; then
    say "building switchyard (release, profile-guided: scripts/pgo-build.sh)"
    SWITCHYARD=$("$ROOT/scripts/pgo-build.sh")
else
    say "building switchyard (release)"
    (cd "$ROOT" && cargo build --release --quiet)
    SWITCHYARD="$ROOT/target/release/switchyard"
fi
# The stream load always comes from this tree's generator, so builds compare alike.
BENCH="$ROOT/target/release/switchyard"
[ -x "$BENCH" ] || (cd "$ROOT" && cargo build --release --quiet)

# The prefix that runs a command in a session of its own (above). A prefix, not a
# function, so that `$!` of a server started with it is the server's own pid.
OWN=()
if [ "${SESSIONS:-1}" = 1 ] && command -v setsid >/dev/null; then OWN=(setsid); fi
# onwards' thread count, the same kind of prefix (`env` execs, so `$!` stays onwards').
THREADED=()
if [ -n "${THREADS:-}" ]; then THREADED=(env "TOKIO_WORKER_THREADS=$THREADS"); fi

# A free loopback port.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits for a server just started: PID and LOG are its own, so that one that exits is
# seen at once and one that never answers is shown with its log (the work directory
# and its logs go when the script ends). Thirty seconds: on a shared host a start can
# take many times its usual second.
wait_for() { # URL any|all (any: an error status will do too) PID LOG
    local fail=-f tries=${WAIT_TRIES:-300}
    [ "$2" = any ] && fail=
    for _ in $(seq 1 "$tries"); do
        if curl $fail -sS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        if ! kill -0 "$3" 2>/dev/null; then
            say "the server for $1 exited before it answered; the end of its log ($4):"
            tail -n 20 "$4" >&2
            exit 1
        fi
        sleep 0.1
    done
    say "nothing answered at $1 in $((tries / 10)) s; the end of its log ($4):"
    tail -n 20 "$4" >&2
    exit 1
}

# llmsim adds `tower_http=debug` and `llmsim=info` to whatever RUST_LOG says, so it logs
# three coloured lines a request (1.2 KB): at c=50, 20 MB a second, more than half of
# its CPU a request (78 µs of it against 35 without), and the disk's writeback then took
# a core for tens of milliseconds at a time, which a gateway's rounds felt as a p99 of
# 20-50 ms. Directives for narrower targets win over those, and keep its start and its
# warnings.
LLMSIM_RUST_LOG=warn,tower_http::trace=warn,llmsim::cli::handlers=warn
[ "${LLMSIM_LOGS:-}" = requests ] && LLMSIM_RUST_LOG=warn

# The upstream: llmsim with a latency profile, answers of N tokens.
start_llmsim() { # PORT PROFILE TOKENS
    local config="$WORK/llmsim-$1.toml"
    case "$2" in
        instant) latency='profile = "instant"' ;;
        realistic) latency=$'ttft_mean_ms = 200\nttft_stddev_ms = 0\ntbt_mean_ms = 10\ntbt_stddev_ms = 0' ;;
    esac
    cat >"$config" <<EOF
[server]
port = $1
host = "127.0.0.1"
[latency]
$latency
[response]
generator = "lorem"
target_tokens = $3
[errors]
rate_limit_rate = 0.0
server_error_rate = 0.0
timeout_rate = 0.0
EOF
    RUST_LOG=$LLMSIM_RUST_LOG ${OWN[@]+"${OWN[@]}"} llmsim serve --config "$config" >"$WORK/llmsim-$1.log" 2>&1 &
    LLMSIM_PID=$!
    PIDS+=($!)
    wait_for "http://127.0.0.1:$1/health" all "$LLMSIM_PID" "$WORK/llmsim-$1.log"
}

# The peer: onwards in front of the upstream, checking one key.
start_onwards() { # PORT UPSTREAM_PORT
    cat >"$WORK/onwards-$1.json" <<EOF
{
  "auth": { "global_keys": ["$KEY"] },
  "targets": { "gpt-4o-mini": { "url": "http://127.0.0.1:$2/openai", "onwards_model": "gpt-4o-mini" } },
  "http_pool": { "max_idle_per_host": 1000, "idle_timeout_secs": 90 }
}
EOF
    RUST_LOG=warn ${OWN[@]+"${OWN[@]}"} ${THREADED[@]+"${THREADED[@]}"} ${WRAP[@]+"${WRAP[@]}"} \
        "$(command -v onwards)" --port "$1" \
        --metrics-port "$(port)" --targets "$WORK/onwards-$1.json" \
        >"$WORK/onwards-$1.log" 2>&1 &
    ONWARDS_PID=$!
    PIDS+=($!)
    wait_for "http://127.0.0.1:$1/v1/models" any "$ONWARDS_PID" "$WORK/onwards-$1.log"
}

# The reference: nginx in front of the upstream with keep-alive to it, one worker a core
# (as it ships), and nothing else: no key check, no gateway's work. Not a peer; it is
# here for what forwarding itself costs on this machine, so that what a gateway adds
# over it is its own (at c=1 two more hops are chiefly two more wake-ups, which a VM
# makes dear).
NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
[ "${REFERENCE:-1}" = 1 ] || NGINX=
start_nginx() { # PORT UPSTREAM_PORT [single: one process, no master, for callgrind]
    local dir="$WORK/nginx-$1" processes="worker_processes auto;"
    mkdir -p "$dir"
    [ "${3:-}" = single ] && processes="master_process off;"
    cat >"$dir/nginx.conf" <<EOF
$processes
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    upstream llmsim { server 127.0.0.1:$2; keepalive 256; }
    server {
        listen 127.0.0.1:$1;
        location / {
            proxy_pass http://llmsim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    ${OWN[@]+"${OWN[@]}"} ${WRAP[@]+"${WRAP[@]}"} "$NGINX" -p "$dir" -c "$dir/nginx.conf" >"$dir/log" 2>&1 &
    NGINX_PID=$!
    PIDS+=($!)
    wait_for "http://127.0.0.1:$1/openai/v1/models" any "$NGINX_PID" "$dir/log"
    # The master and its workers, whose CPU is the reference's.
    NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr "\n" " " || true)"
}

# Switchyard: the example config, us-east at the upstream, acme unlimited. Keys that
# only say the default are dropped, so SWITCHYARD_BIN may be a build that predates them.
start_switchyard() { # PORT ADMIN_PORT UPSTREAM_PORT
    local dir="$WORK/switchyard-$1"
    mkdir -p "$dir"
    sed -e "s|127.0.0.1:8080|127.0.0.1:$1|" \
        -e "s|127.0.0.1:8081|127.0.0.1:$2|" \
        -e "s|data_dir = \"./data\"|data_dir = \"$dir/data\"|" \
        -e "s|http://127.0.0.1:9101/v1|http://127.0.0.1:$3/openai/v1|" \
        -e "s|max_concurrency = 64 |max_concurrency = 100000 |" \
        -e "s|^monthly_usd = 5000.0|rpm = 100_000_000\ntpm = 100_000_000_000\nmax_concurrency = 100_000|" \
        -e "${THREADS:+s|^workers = 0\$|workers = $THREADS|}" -e '/^workers = 0$/d' \
        "$ROOT/config.toml.example" >"$dir/config.toml"
    SWITCHYARD_ADMIN_TOKEN=peer-bench-admin-token-0123456789abcdef \
        ${OWN[@]+"${OWN[@]}"} ${WRAP[@]+"${WRAP[@]}"} "$SWITCHYARD" serve --config "$dir/config.toml" >"$dir/log" 2>&1 &
    SWITCHYARD_PID=$!
    PIDS+=($!)
    wait_for "http://127.0.0.1:$1/healthz" all "$SWITCHYARD_PID" "$dir/log"
}

# User + system CPU of processes, in clock ticks (1/100 s).
cpu_ticks() { # PID...
    local ticks=0
    for pid in "$@"; do ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done
    echo "$ticks"
}
# The same of this script's children that have ended (oha, once each run is over).
children_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }

# The machine's ticks the host took (steal) and all its ticks, from /proc/stat's `cpu`
# line (user nice system idle iowait irq softirq steal); "0 0" where there is none.
machine_ticks() { awk '/^cpu / { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; f = 1 } END { if (!f) print 0, 0 }' /proc/stat 2>/dev/null || echo 0 0; }

# How many times the CPUs went idle in a state deeper than polling (on a VM, a halt:
# an exit to the hypervisor, and an interrupt to come back), from the kernel's cpuidle
# counts; 0 where there are none. At c=1 a request's latency follows this more than
# anything a process does: in session 37, straight to llmsim at c=1 took 0.094 ms with
# 0.2 halts a request and 0.256 ms with 1.9 (short runs under perf), by where the
# kernel had put oha and llmsim.
halts() {
    local n=0 usage
    for usage in /sys/devices/system/cpu/cpu[0-9]*/cpuidle/state*/usage; do
        [ -r "$usage" ] || continue
        [ "$(cat "${usage%usage}name")" = POLL ] && continue
        n=$((n + $(cat "$usage")))
    done
    echo "$n"
}

pin() { # CPUS PID...: each of the processes' threads (new ones inherit it)
    local cpus=$1 pid task
    shift
    for pid in "$@"; do
        for task in /proc/"$pid"/task/*; do taskset -pc "$cpus" "${task##*/}" >/dev/null; done
    done
}

# The medians' table of a `switchyard bench` output (the only table after one round).
table() {
    if grep -q '^medians' "$1"; then sed -n '/^medians/,$p' "$1"; else sed -n '/^target/,$p' "$1"; fi
}

# Each round's own table, for the log: a median hides whether one round stalled or all
# were slower.
rounds() { sed -n '/^round /,/^medians/{/^medians/!p;}' "$1"; }

rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
peak_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello in one short sentence."}]}'

# oha's ok requests per second, p50 and p99 (ms) for one target: as fast as it answers,
# or RATE requests a second whatever it answers, each request's latency counted from
# when it was due (oha's --latency-correction), so a stall is not hidden by the
# requests it kept from being sent.
oha_run() { # URL CONCURRENCY [RATE]
    local rate=()
    [ -n "${3:-}" ] && rate=(-q "$3" --latency-correction)
    ${LOADER[@]+"${LOADER[@]}"} ${OWN[@]+"${OWN[@]}"} oha --no-tui --output-format json -z "${SECONDS_PER_RUN}s" -c "$2" \
        ${rate[@]+"${rate[@]}"} -m POST \
        -H "authorization: Bearer $KEY" -H "content-type: application/json" -d "$BODY" \
        "$1/chat/completions" >"$WORK/oha.json"
    python3 - "$WORK/oha.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
ok = int(codes.get("200", 0))
total = r["summary"]["total"]
p = r["latencyPercentiles"]
print(f'{ok / total:.1f} {p["p50"] * 1000:.3f} {p["p99"] * 1000:.3f} {sum(codes.values()) - ok} {ok}')
EOF
}

if [ "${MEASURE:-}" = instructions ]; then
    command -v valgrind >/dev/null || { say "MEASURE=instructions needs valgrind (Debian: apt install valgrind)"; exit 1; }
    REQUESTS=${REQUESTS:-3000}
    STREAMED=${STREAMED:-1000}
    WAIT_TRIES=600 # a minute: programs start slowly under valgrind
    LLMSIM=$(port)
    start_llmsim "$LLMSIM" instant 16
    STREAM_BODY=${BODY/\"messages\"/\"stream\":true,\"messages\"}
    # Instructions and allocations (calls into Rust's allocator) of one gateway's
    # process: over REQUESTS whole answers, then STREAMED streamed ones, the counters
    # zeroed after a warm-up and between the two.
    count() { # NAME PID URL
        local load=(oha --no-tui -c 8 -m POST -H "authorization: Bearer $KEY"
            -H "content-type: application/json")
        "${load[@]}" -n 300 -d "$BODY" "$3/chat/completions" >/dev/null
        callgrind_control -z "$2" >/dev/null
        "${load[@]}" -n "$REQUESTS" -d "$BODY" --output-format json "$3/chat/completions" >"$WORK/oha-$1-1.json"
        callgrind_control -d "$2" >/dev/null
        "${load[@]}" -n 100 -d "$STREAM_BODY" "$3/chat/completions" >/dev/null
        callgrind_control -z "$2" >/dev/null
        "${load[@]}" -n "$STREAMED" -d "$STREAM_BODY" --output-format json "$3/chat/completions" >"$WORK/oha-$1-2.json"
        callgrind_control -d "$2" >/dev/null
        kill "$2"
        wait "$2" 2>/dev/null || true
        for part in 1 2; do
            python3 - "$1" "$WORK/oha-$1-$part.json" "$WORK"/callgrind-"$1".*."$part" <<'EOF'
import json, re, sys
name, load, dump = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
ok = int(load.get("statusCodeDistribution", {}).get("200", 0))
# Calls into Rust's allocator; a build with LTO inlines those shims into their callers,
# so there the calls into mimalloc (Switchyard's allocator) are counted instead.
names, target, total, rust, mimalloc = {}, None, 0, 0, 0
for line in open(dump):
    if line.startswith(("totals:", "summary:")):
        total = int(line.split()[1])
    elif line.startswith(("fn=", "cfn=")):
        # Names are given once, at an id's first use by either kind of line.
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
        if m.group(2):
            names[m.group(1)] = m.group(2).strip()
        if line.startswith("cfn="):
            target = names.get(m.group(1), "")
    elif line.startswith("calls=") and target is not None:
        calls = int(line.split()[0][len("calls="):])
        if target.endswith(("__rust_alloc", "__rust_alloc_zeroed", "__rust_realloc")):
            rust += calls
        elif target in ("mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned"):
            mimalloc += calls
        target = None
print(f"{name} {ok} {total} {rust or mimalloc}")
EOF
        done
    }
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-onwards.%p")
    ONWARDS=$(port)
    start_onwards "$ONWARDS" "$LLMSIM"
    count onwards "$ONWARDS_PID" "http://127.0.0.1:$ONWARDS/v1" >"$WORK/counted.txt"
    WRAP=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-switchyard.%p")
    GATEWAY=$(port); ADMIN=$(port)
    start_switchyard "$GATEWAY" "$ADMIN" "$LLMSIM"
    sleep 3 # the first health probes
    count switchyard "$SWITCHYARD_PID" "http://127.0.0.1:$GATEWAY/v1" >>"$WORK/counted.txt"
    if [ -n "$NGINX" ]; then
        # The reference, as one process (no master), so that all its work is counted.
        WRAP=(valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-nginx.%p")
        REFERENCE_PORT=$(port)
        start_nginx "$REFERENCE_PORT" "$LLMSIM" single
        count nginx "$NGINX_PID" "http://127.0.0.1:$REFERENCE_PORT/openai/v1" >>"$WORK/counted.txt"
    fi
    python3 - "$WORK/counted.txt" <<'EOF'
import sys
# Each one's whole answers, then its streamed ones.
counted = {}
for line in open(sys.argv[1]):
    name, ok, ins, al = line.split()
    counted.setdefault(name, []).append((int(ok), int(ins), int(al)))
(o1, o2), (s1, s2) = counted["onwards"], counted["switchyard"]
print()
print("| per answered request (callgrind, c=8) | onwards | Switchyard |")
print("|---|---|---|")
for what, (ook, oins, oal), (sok, sins, sal) in (("whole", o1, s1), ("streamed (16 tokens)", o2, s2)):
    print(f"| {what}: answered | {ook:,} | {sok:,} |")
    print(f"| {what}: instructions | {oins / ook:,.0f} | {sins / sok:,.0f} ({sins / sok / (oins / ook):.2f}x onwards) |")
    print(f"| {what}: allocations (and reallocations) | {oal / ook:.1f} | {sal / sok:.1f} |")
if "nginx" in counted:
    (n1, n2) = counted["nginx"]
    print()
    print("reference, nginx forwarding only (one process; its allocations are not Rust's, not counted): "
          f"{n1[1] / n1[0]:,.0f} instructions a whole answer, {n2[1] / n2[0]:,.0f} a streamed one")
EOF
    exit 0
fi

LLMSIM=$(port); ONWARDS=$(port); GATEWAY=$(port); ADMIN=$(port)
start_llmsim "$LLMSIM" instant 16
start_onwards "$ONWARDS" "$LLMSIM"
start_switchyard "$GATEWAY" "$ADMIN" "$LLMSIM"
sleep 3 # the first health probes
IDLE=$(rss_mib "$SWITCHYARD_PID")

declare -A TARGET=(
    [direct]="http://127.0.0.1:$LLMSIM/openai/v1"
    [onwards]="http://127.0.0.1:$ONWARDS/v1"
    [switchyard]="http://127.0.0.1:$GATEWAY/v1"
)
declare -A SERVER=([direct]=$LLMSIM_PID [onwards]=$ONWARDS_PID [switchyard]=$SWITCHYARD_PID)
ORDER=(direct onwards switchyard)
if [ -n "$NGINX" ]; then
    REFERENCE_PORT=$(port)
    start_nginx "$REFERENCE_PORT" "$LLMSIM"
    TARGET[nginx]="http://127.0.0.1:$REFERENCE_PORT/openai/v1"
    SERVER[nginx]=$NGINX_PIDS
    ORDER+=(nginx)
else
    say "nginx is not installed: no reference row (Debian: apt install nginx-light)"
fi
ROUNDS=${ROUNDS:-${#ORDER[@]}}
# c=50 as fast as each answers, then c=1, then c=50 at a steady PLAIN_RATE a second
# (by default 60% of what the slower gateway managed at c=50): the latency a gateway
# adds under load that leaves the machine room, where at full speed on two shared
# cores the kernel's choice of which process runs next decides the p99 as much as any
# of the three does.
PLAIN_RATE=${PLAIN_RATE:-}
# `one` is c=1 again with every process on one CPU (when taskset is there): no hop then
# wakes a thread on another CPU, which on a VM is an interrupt to a halted virtual CPU,
# so what a gateway adds is its own work, not where the kernel put whom.
LOADER=()
for load in 50 1 one steady; do
    c=$load rate=
    if [ "$load" = one ]; then
        command -v taskset >/dev/null || continue
        c=1 ALL_CPUS=$(taskset -pc $$ | awk '{print $NF}')
        FIRST=$(python3 -c 'import os; print(min(os.sched_getaffinity(0)))')
        for name in "${ORDER[@]}"; do pin "$FIRST" ${SERVER[$name]}; done
        LOADER=(taskset -c "$FIRST")
    elif [ ${#LOADER[@]} -gt 0 ]; then
        for name in "${ORDER[@]}"; do pin "$ALL_CPUS" ${SERVER[$name]}; done
        LOADER=()
    fi
    if [ "$load" = steady ]; then
        c=50
        if [ -z "$PLAIN_RATE" ]; then
            PLAIN_RATE=$(awk '$1 == 50 && ($2 == "onwards" || $2 == "switchyard") { print $2, $3 }' "$WORK/plain.txt" | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    name, rate = line.split()
    runs.setdefault(name, []).append(float(rate))
print(int(0.6 * min(statistics.median(v) for v in runs.values()) // 100 * 100))')
        fi
        rate=$PLAIN_RATE
    fi
    for round in $(seq 1 "$ROUNDS"); do
        # Each round starts one further along ORDER, so no target always runs in the
        # same place (after the same other load); ROUNDS a multiple of the targets'
        # count puts each in every place equally often.
        for i in "${!ORDER[@]}"; do
            name=${ORDER[$(((round - 1 + i) % ${#ORDER[@]}))]}
            before=$(cpu_ticks ${SERVER[$name]})
            upstream=$(cpu_ticks "$LLMSIM_PID") generator=$(children_ticks)
            read -r stolen ticks < <(machine_ticks)
            halted=$(halts)
            result=$(oha_run "${TARGET[$name]}" "$c" "$rate")
            halted=$(($(halts) - halted))
            read -r stolen_after ticks_after < <(machine_ticks)
            # CPU in all of the answering process (llmsim's own for direct), of llmsim,
            # and of oha.
            result="$result $(( ($(cpu_ticks ${SERVER[$name]}) - before) * 10000 ))"
            result="$result $(( ($(cpu_ticks "$LLMSIM_PID") - upstream) * 10000 ))"
            result="$result $(( ($(children_ticks) - generator) * 10000 ))"
            # The share of the machine's CPU the host took meanwhile, in percent.
            result="$result $(awk -v s=$((stolen_after - stolen)) -v a=$((ticks_after - ticks)) 'BEGIN { printf "%.1f", (a > 0 ? 100 * s / a : 0) }')"
            # The CPUs' halts per answered request.
            result="$result $(awk -v h=$halted -v n="$(echo "$result" | cut -d' ' -f5)" 'BEGIN { printf "%.2f", (n > 0 ? h / n : 0) }')"
            say "plain ${load/one/1 on one CPU}${rate:+ at $rate/s} round $round $name: $result (ok req/s, p50 ms, p99 ms, not ok, ok answers, CPU µs in all: answering, llmsim, oha; % of the CPU the host took; halts a request)"
            if [ "${result%% *}" = "0.0" ]; then
                say "$name answered nothing with 200; its log is in $WORK"
                trap - EXIT
                exit 1
            fi
            echo "$load $name $result" >>"$WORK/plain.txt"
        done
    done
done
AFTER_PLAIN=$(rss_mib "$SWITCHYARD_PID")
PEAK_PLAIN=$(peak_mib "$SWITCHYARD_PID")

# Streams against the realistic upstream: everything restarted in front of it.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
# One session for all (see the top): pinned, sessions of their own split the shared
# core between llmsim and the generator by process, and the burst's first-token p99
# then moved more between runs (+3.5 to +7.8 ms added in four runs, against +0.5 to
# +4.7 in nine in one session).
OWN=()
LLMSIM=$(port); ONWARDS=$(port); GATEWAY=$(port); ADMIN=$(port)
# On two or more cores the gateways get a core of their own (every thread of onwards
# and of Switchyard; they take turns, so they share it), and llmsim and the load
# generator share another, as a gateway in production does not share its cores with
# its clients and upstreams. Unpinned, a burst of 200 stream starts on two cores is
# decided by which of the four processes the kernel runs first: the first token's p99
# moved by 15 ms between rounds. PIN=0 runs them unpinned.
#
# The gateways start on their core, so each sizes its threads to the one core it has,
# as a deployment given one core would (Switchyard one connection worker, onwards one
# runtime worker). Pinned after they had started, each ran threads for two cores on
# one, and Switchyard's two connection workers took turns on it, each holding its own
# connections while it waited: with a busy loop sharing the gateways' core, the first
# token's p99 added (median of four rounds, two runs) +8.8 and +8.4 ms with two workers,
# +4.3 and +3.4 with one, onwards (pinned after start too) +2.7 and +4.0.
GENERATOR=() ON_GATEWAY_CORE=()
if [ "${PIN:-1}" = 1 ] && command -v taskset >/dev/null; then
    read -r -a CPUS <<<"$(python3 -c 'import os; print(*sorted(os.sched_getaffinity(0))[:2])')"
    if [ "${#CPUS[@]}" -ge 2 ]; then
        GENERATOR=(taskset -c "${CPUS[0]}")
        ON_GATEWAY_CORE=(taskset -c "${CPUS[1]}")
        say "streams: llmsim and the load generator on CPU ${CPUS[0]}, each gateway started on CPU ${CPUS[1]}"
    fi
fi
start_llmsim "$LLMSIM" realistic 32
[ "${#GENERATOR[@]}" = 0 ] || pin "${CPUS[0]}" "$LLMSIM_PID"
WRAP=(${ON_GATEWAY_CORE[@]+"${ON_GATEWAY_CORE[@]}"})
start_onwards "$ONWARDS" "$LLMSIM"
start_switchyard "$GATEWAY" "$ADMIN" "$LLMSIM"
WRAP=()
sleep 3
STREAM_TARGETS=(--target "direct=http://127.0.0.1:$LLMSIM/openai/v1"
    --target "onwards=http://127.0.0.1:$ONWARDS/v1" --target-key "onwards=$KEY"
    --target "switchyard=http://127.0.0.1:$GATEWAY/v1" --target-key "switchyard=$KEY"
    --target-pid "direct=$LLMSIM_PID" --target-pid "onwards=$ONWARDS_PID"
    --target-pid "switchyard=$SWITCHYARD_PID")
# Each round also says how long each server's threads waited, ready to run, for a CPU
# (the kernel's run delay): steal is what the host takes; this is what anything else
# on the machine took from the server's own core. On this machine the virtual
# machine's agent (PID 1's `tokio-rt-worker`, at nice -10) runs about once a second
# for a median 3 ms and up to 10, and in the run traced all 51 of its runs were on
# the gateways' core: a wait in the middle of a wave of starts is the first token's in
# full.
# 200 clients, each starting its next stream when the last ends: as every stream takes
# the same time, they stay in step, and every ~0.7 s 200 streams start at once (the
# time to first token's p99 is then how fast a burst of 200 gets through).
${GENERATOR[@]+"${GENERATOR[@]}"} "$BENCH" bench --stream -n "$STREAMS" -c 200 --rounds "$STREAM_ROUNDS" "${STREAM_TARGETS[@]}" \
    >"$WORK/streams.txt" 2>&1 || { cat "$WORK/streams.txt" >&2; exit 1; }
rounds "$WORK/streams.txt" >&2
table "$WORK/streams.txt" >&2
# The same streams started at a steady STREAM_RATE a second (an open loop), as many
# independent clients arrive: about as many in flight, no bursts.
${GENERATOR[@]+"${GENERATOR[@]}"} "$BENCH" bench --stream -n "$STREAMS" -c 1000 --rate "$STREAM_RATE" --rounds "$STREAM_ROUNDS" \
    "${STREAM_TARGETS[@]}" >"$WORK/steady.txt" 2>&1 || { cat "$WORK/steady.txt" >&2; exit 1; }
rounds "$WORK/steady.txt" >&2
table "$WORK/steady.txt" >&2
AFTER_STREAMS=$(rss_mib "$SWITCHYARD_PID")

# How this machine's idle CPUs wait, which the c=1 rows depend on: between two requests
# at c=1 every process sleeps, and a CPU that halts at once (on a VM, an exit to the
# hypervisor) makes each wake-up, and each hop, dear. With the haltpoll governor a guest
# polls a while first; its kernel's default is 200 µs, and 0 turns polling off.
IDLE_DRIVER=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)
if [ -r /sys/module/haltpoll/parameters/guest_halt_poll_ns ]; then
    IDLE_DRIVER="$IDLE_DRIVER, guest_halt_poll_ns $(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns)"
fi
echo "this machine: $(nproc) CPUs; idle: $IDLE_DRIVER"
if [ -n "${THREADS:-}" ]; then
    echo "both gateways serve connections on $THREADS thread(s) (THREADS=$THREADS)"
fi
python3 - "$WORK/plain.txt" <<EOF
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    load, name, rate, p50, p99, bad, ok, cpu, upstream, generator, stolen, halts = line.split()
    load = int(load) if load.isdigit() else load
    per = lambda ticks: int(ticks) / max(int(ok), 1)
    # The whole machine's CPU per request, gateway (if any), llmsim and oha.
    machine = per(generator) + per(upstream) + (per(cpu) if name != "direct" else 0)
    rows.setdefault((load, name), []).append((float(rate), float(p50), float(p99), int(bad), per(cpu), machine, float(stolen), float(halts)))
def med(c, name, i):
    return statistics.median(r[i] for r in rows[(c, name)])
def span(c, name, i, form=",.0f"):
    v = [r[i] for r in rows[(c, name)]]
    return f"{min(v):{form}}–{max(v):{form}}"
d, o, s = (med(50, n, 0) for n in ("direct", "onwards", "switchyard"))
print()
print("| measure | direct to llmsim | onwards | Switchyard |")
print("|---|---|---|---|")
print(f"| plain, c=50: ok requests/s (median; range of $ROUNDS) | {d:,.0f} ({span(50,'direct',0)}) | {o:,.0f} ({span(50,'onwards',0)}), {o/d:.2f}x | {s:,.0f} ({span(50,'switchyard',0)}), {s/d:.2f}x direct, {s/o:.2f}x onwards |")
# One run's p99 moves by up to a millisecond from the next on two shared cores: the
# range, and in how many rounds Switchyard's was at or below onwards'.
def p99s(load):
    low = sum(ours[2] <= theirs[2] for ours, theirs in zip(rows[(load, "switchyard")], rows[(load, "onwards")]))
    cells = " | ".join(f"{med(load, n, 2):.1f} ms ({span(load, n, 2, '.1f')})" for n in ("direct", "onwards", "switchyard"))
    return f"{cells}, at or below onwards in {low} of {len(rows[(load, 'switchyard')])} rounds"
print(f"| plain, c=50: p99 (median; range) | {p99s(50)} |")
# On two shared cores throughput follows CPU: each process's CPU per answered request
# (llmsim's own for direct) says what a gateway costs, whatever the machine's noise.
dc, oc, sc = (med(50, n, 4) for n in ("direct", "onwards", "switchyard"))
print(f"| plain, c=50: CPU per request of the process answering | llmsim {dc:.0f} µs | {oc:.0f} µs | {sc:.0f} µs ({sc/oc:.2f}x onwards) |")
# What a ratio to direct is made of: with every core busy, req/s is the cores over the
# whole machine's CPU per request (oha, llmsim and the gateway), so a gateway reaches
# 0.70x direct only when that sum is at most direct's over 0.70. The last cell is the
# gateway CPU that leaves, given what oha and llmsim spent in Switchyard's runs.
dm, om, sm = (med(50, n, 5) for n in ("direct", "onwards", "switchyard"))
room = dm / 0.70 - statistics.median(r[5] - r[4] for r in rows[(50, "switchyard")])
print(f"| plain, c=50: CPU per request, whole machine (oha + llmsim + gateway) | {dm:.0f} µs | {om:.0f} µs (predicts {dm/om:.2f}x direct) | {sm:.0f} µs (predicts {dm/sm:.2f}x direct); 0.70x direct leaves a gateway {room:.0f} µs |")
for load, what in ((1, "plain, c=1: p50 (added)"), ("one", "plain, c=1, all on one CPU: p50 (added)")):
    if (load, "direct") in rows:
        d1, o1, s1 = (med(load, n, 1) for n in ("direct", "onwards", "switchyard"))
        print(f"| {what} | {d1:.3f} ms | {o1:.3f} ms ({o1-d1:+.3f}) | {s1:.3f} ms ({s1-d1:+.3f}) |")
# How often a CPU halted for each request at c=1: each halt is an exit to the
# hypervisor and an interrupt back, which is most of what c=1 measures on a VM, and it
# depends on where the kernel put each process, which moves from run to run.
if (1, "direct") in rows:
    cells = " | ".join(f"{med(1, n, 7):.2f} ({span(1, n, 7, '.2f')})" for n in ("direct", "onwards", "switchyard"))
    print(f"| plain, c=1: CPU halts a request (median; range) | {cells} |")
# At c=1 what a gateway adds is mostly its own CPU on the way and the two wake-ups more;
# where idle CPUs halt at once, every process spends about twice what it does busy.
for load, what in ((1, "plain, c=1: CPU per request of the process answering"),
                   ("one", "plain, c=1, all on one CPU: CPU per request of the process answering")):
    if (load, "direct") in rows:
        d1, o1, s1 = (med(load, n, 4) for n in ("direct", "onwards", "switchyard"))
        print(f"| {what} | llmsim {d1:.0f} µs | {o1:.0f} µs | {s1:.0f} µs |")
print(f"| plain, c=50 at $PLAIN_RATE a second: p50 | {med('steady','direct',1):.2f} ms | {med('steady','onwards',1):.2f} ms | {med('steady','switchyard',1):.2f} ms |")
print(f"| plain, c=50 at $PLAIN_RATE a second: p99 (median; range) | {p99s('steady')} |")
# Rounds far off are often ones where the host took the CPU: each target's rounds' share
# stolen, the median and the most, over every plain load.
def stolen(name):
    v = sorted(r[6] for (load, n), rs in rows.items() if n == name for r in rs)
    return f"{statistics.median(v):.1f}% (at most {v[-1]:.1f}%)"
print(f"| plain: CPU the host took during the runs (median; most in one) | {stolen('direct')} | {stolen('onwards')} | {stolen('switchyard')} |")
bad = sum(r[3] for v in rows.values() for r in v)
print(f"| not ok answers, all plain runs | {bad} | | |")
print(f"| Switchyard resident memory | idle $IDLE MiB | after plain load $AFTER_PLAIN MiB (peak $PEAK_PLAIN) | after streams $AFTER_STREAMS MiB |")
if (50, "nginx") in rows:
    # Below the table: a reference, not a peer (it does none of a gateway's work).
    n = med(50, "nginx", 0)
    added = [f"{what} p50 {med(load, 'nginx', 1) - med(load, 'direct', 1):+.3f} ms, CPU {med(load, 'nginx', 4):.0f} µs"
             + (f", {med(load, 'nginx', 7):.2f} halts a request" if load == 1 else "")
             for load, what in ((1, "c=1"), ("one", "c=1 on one CPU")) if (load, "nginx") in rows]
    print()
    print(f"reference, nginx forwarding only (no key check, none of a gateway's work): c=50 {n:,.0f} req/s "
          f"({n/d:.2f}x direct), p99 {med(50, 'nginx', 2):.1f} ms, CPU {med(50, 'nginx', 4):.0f} µs a request; "
          + "; ".join(added))
EOF
# What each server wrote of its own over the run: one that logs every request spends
# CPU on it, and cores on the disk's writeback.
written() { du -cb "$@" 2>/dev/null | tail -1 | awk '{ printf "%.1f MiB", $1 / 1048576 }'; }
echo
echo "written by the servers over the run: llmsim $(written "$WORK"/llmsim-*.log)$([ "${LLMSIM_LOGS:-}" = requests ] && echo " (LLMSIM_LOGS=requests)"), onwards $(written "$WORK"/onwards-*.log), Switchyard $(written "$WORK"/switchyard-*/log) and its audit log $(written "$WORK"/switchyard-*/data/audit)"
echo
echo "streams, c=200, realistic upstream (TTFT 200 ms, 10 ms a token, 32 tokens): medians of $STREAM_ROUNDS round$([ "$STREAM_ROUNDS" = 1 ] || echo s)${GENERATOR[*]:+ (gateways pinned to a core of their own)}"
table "$WORK/streams.txt"
echo
echo "the same streams started $STREAM_RATE a second (open loop): medians of $STREAM_ROUNDS round$([ "$STREAM_ROUNDS" = 1 ] || echo s)"
table "$WORK/steady.txt"
