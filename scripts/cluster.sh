#!/usr/bin/env bash
# Three Switchyard replicas on this machine sharing limits, budgets and operators'
# changes through one Valkey (or Redis) server, in front of three simulated upstreams.
# Ctrl-C stops everything and removes what it made.
#
#   scripts/cluster.sh            # replicas on :8181 :8182 :8183, admin on :8281 ...
#
# Needs valkey-server or redis-server (apt-get install redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."

server=$(command -v valkey-server || command -v redis-server || true)
if [ -z "$server" ]; then
    echo "cluster.sh needs valkey-server or redis-server: apt-get install redis-server" >&2
    exit 1
fi
valkey_port=${VALKEY_PORT:-6390}
export SWITCHYARD_ADMIN_TOKEN=${SWITCHYARD_ADMIN_TOKEN:-cluster-demo-admin-token}

cargo build --release --quiet
bin=$PWD/target/release/switchyard
dir=$(mktemp -d "${TMPDIR:-/tmp}/switchyard-cluster.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT INT TERM

"$server" --port "$valkey_port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$dir/valkey.log" 2>&1 &
for port in 9101 9102 9103; do
    "$bin" mock --listen "127.0.0.1:$port" >"$dir/mock-$port.log" 2>&1 &
done

for i in 1 2 3; do
    # The example config, with each replica's ports and data, and the shared state.
    sed -e "s|^listen = \"127.0.0.1:8080\"|listen = \"127.0.0.1:818$i\"|" \
        -e "s|^admin_listen = \"127.0.0.1:8081\"|admin_listen = \"127.0.0.1:828$i\"|" \
        -e "s|^data_dir = \"./data\"|data_dir = \"$dir/replica-$i\"|" \
        -e "s|^backend = \"local\"|backend = \"valkey\"\nurl = \"redis://127.0.0.1:$valkey_port\"\nreplica = \"replica-$i\"|" \
        config.toml.example >"$dir/replica-$i.toml"
    "$bin" serve --config "$dir/replica-$i.toml" >"$dir/replica-$i.log" 2>&1 &
done

for i in 1 2 3; do
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:818$i/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

cat <<TEXT
Three replicas share one Valkey at 127.0.0.1:$valkey_port:

  http://127.0.0.1:8181/v1   http://127.0.0.1:8182/v1   http://127.0.0.1:8183/v1
  admin: :8281 :8282 :8283, token \$SWITCHYARD_ADMIN_TOKEN=$SWITCHYARD_ADMIN_TOKEN

Each tenant's limits hold across the three. Try, in another terminal:

  curl -s http://127.0.0.1:8182/v1/chat/completions -H 'authorization: Bearer sy-demo-initech' \\
    -H 'content-type: application/json' -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
  SWITCHYARD_ADMIN_TOKEN=$SWITCHYARD_ADMIN_TOKEN $bin console --connect http://127.0.0.1:8281
  SWITCHYARD_ADMIN_TOKEN=$SWITCHYARD_ADMIN_TOKEN $bin ctl --url http://127.0.0.1:8283 pause initech

Logs and data: $dir (removed on exit). Ctrl-C stops everything.
TEXT
wait
