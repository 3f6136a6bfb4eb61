#!/usr/bin/env bash
# Fuzzes the HTTP API of a real gateway against its committed OpenAPI document
# (docs/openapi.json) with schemathesis: no 5xx, every response conforming to the
# schema (status code, content type, body). Bounded: a fixed number of examples per
# operation and a hard timeout. Called by .ci/run after the tests built the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

ST_VERSION=4.32.5
if ! python3 -m schemathesis.cli --version 2>/dev/null | grep -q "$ST_VERSION" \
   && ! schemathesis --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
ST=(schemathesis)
command -v schemathesis >/dev/null 2>&1 || ST=(python3 -m schemathesis.cli)

cargo build -p waping-gateway --locked --quiet
BIN=target/debug/waping-gateway

work=$(mktemp -d)
gw_pid=
cleanup() {
  if [ -n "$gw_pid" ]; then
    kill "$gw_pid" 2>/dev/null || true
    wait "$gw_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

admin_token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s' "$admin_token" > "$work/admin-token"
chmod 600 "$work/admin-token"
key_out=$("$BIN" keygen --workspace st 2>"$work/keygen.txt")
key_id=$(grep '^id = ' "$work/keygen.txt" | cut -d'"' -f2)
key_hash=$(grep '^hash = ' "$work/keygen.txt" | cut -d'"' -f2)

cat > "$work/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:0"
state_dir = "$work/state"
[metrics]
enabled = false
[limits]
rate_per_second = 100000
burst = 100000
device_rate_per_second = 0
[api]
listen = "127.0.0.1:0"
scheme = "http"
admin_token_file = "$work/admin-token"
key_rate_per_second = 100000
key_burst = 100000
source_rate_per_second = 100000
source_burst = 100000
auth_failures_per_minute = 10000
[[workspaces]]
id = "st"
devices = ["d1"]
[[workspaces.keys]]
id = "$key_id"
hash = "$key_hash"
TOML

RUST_LOG=warn "$BIN" run --config "$work/gateway.toml" 2>"$work/gateway.log" &
gw_pid=$!
for _ in $(seq 1 300); do
  [ -s "$work/state/runtime.json" ] && break
  sleep 0.1
done
http=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$work/state/runtime.json")
url="http://$http"
echo "schemathesis $ST_VERSION against $url"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
common=(docs/openapi.json --url "$url" --checks "$checks" --max-examples "${ST_EXAMPLES:-30}"
        --generation-deterministic --request-timeout 10 --suppress-health-check all)

status=0
timeout 600 "${ST[@]}" run "${common[@]}" -H "Authorization: Bearer $key_out" \
  --exclude-path-regex '^/v1/admin' || status=$?
timeout 300 "${ST[@]}" run "${common[@]}" -H "Authorization: Bearer $admin_token" \
  --include-path-regex '^/v1/admin' || status=$?
if ! kill -0 "$gw_pid" 2>/dev/null; then
  echo "the gateway died during the run:"; tail -50 "$work/gateway.log"; exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis found problems (exit $status); gateway log tail:"; tail -30 "$work/gateway.log"
fi
exit "$status"
