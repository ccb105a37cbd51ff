#!/usr/bin/env bash
# A soak run (not CI): the demo's mixed traffic (plain, streamed, cached, six tenants
# over three tiers) against simulated regions with an outage every few minutes, plus
# watchers following streams, for DURATION (default 30m). Every minute it prints the
# daemon's resident memory, open descriptors, threads, live streams, requests, and
# audit records written and dropped: memory and descriptors should stay flat and no
# audit record should be dropped.
#
#   scripts/soak.sh            # 30 minutes
#   DURATION=5m scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30m}
OUTAGE_EVERY=${OUTAGE_EVERY:-3m}
cargo build --release --quiet
bin=target/release/switchyard
log=$(mktemp)
"$bin" demo --headless --duration "$DURATION" --outage-every "$OUTAGE_EVERY" >"$log" 2>&1 &
demo=$!
trap 'kill $demo 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "attach a console" "$log" && break; sleep 0.2; done
api=$(grep -o 'gateway on http://[^ ,]*' "$log" | head -1 | sed 's/gateway on //; s#/v1$##')
admin=$(grep -o 'admin on http://[^ ,]*' "$log" | head -1 | sed 's/admin on //')
token=$(grep -o -- '--token [^ ]*' "$log" | head -1 | sed 's/--token //')
echo "soak: demo pid $demo, api $api, admin $admin, for $DURATION (outage every $OUTAGE_EVERY)"

# Watchers: every few seconds follow a live stream to its end, as operators do.
(
  while kill -0 $demo 2>/dev/null; do
    id=$(curl -s -H "authorization: Bearer $token" "$admin/admin/snapshot" \
      | python3 -c 'import json,sys; s=json.load(sys.stdin).get("streams",[]); print(s[0]["id"] if s else "")' 2>/dev/null || true)
    if [ -n "$id" ]; then
      curl -s -N --max-time 30 -H "authorization: Bearer $token" "$admin/admin/streams/$id" >/dev/null || true
    fi
    sleep 3
  done
) &
watchers=$!
trap 'kill $demo $watchers 2>/dev/null || true; rm -f "$log"' EXIT

metric() { curl -s -H "authorization: Bearer $token" "$admin/metrics" | awk -v m="$1" '$1 == m {print $2; exit}'; }
printf '%-6s %8s %6s %8s %6s %10s %10s %8s\n' MIN RSS_MIB FDS THREADS LIVE REQUESTS AUDIT_OK AUDIT_X
minute=0
while kill -0 $demo 2>/dev/null; do
  rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$demo/status 2>/dev/null || echo -)
  fds=$(ls /proc/$demo/fd 2>/dev/null | wc -l)
  threads=$(awk '/Threads/ {print $2}' /proc/$demo/status 2>/dev/null || echo -)
  printf '%-6s %8s %6s %8s %6s %10s %10s %8s\n' "$minute" "$rss" "$fds" "$threads" \
    "$(metric switchyard_streams_live)" "$(metric switchyard_requests_total)" \
    "$(metric switchyard_audit_records_written_total)" "$(metric switchyard_audit_dropped_total)"
  minute=$((minute + 1))
  sleep 60 & wait $! || true
done
echo "soak: done"; tail -20 "$log"
