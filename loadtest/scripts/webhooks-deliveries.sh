#!/usr/bin/env bash
# Webhook deliveries/s to a fast loopback receiver (BENCHMARKS.md, "Webhooks (issue 8)").
# One workspace, in-process simulator, one endpoint for message.status; a short closed-loop
# burst of the harness, then wait until the receiver has seen every status event once.
# Rounds interleave the max_concurrency values. Ports: receiver 127.0.0.1:7480, gateway QUIC
# 7481, metrics 9481. One JSON line per run on stdout.
#   usage: webhooks-deliveries.sh OUT_DIR [ROUNDS=3]
#   env: BIN (release dir with waping-gateway, waping-loadtest, examples/receiver),
#        KEEP (non-empty: keep each run's state directory), CONC ("8 64"), DUR (closed-loop send time, "0.4s"), WINDOW (256)
set -euo pipefail
out=${1:?usage: webhooks-deliveries.sh OUT_DIR [ROUNDS]}; rounds=${2:-3}
bin=${BIN:-/work/target-bench/release}
mkdir -p "$out"
gw= rx=
# A failed step stops the script: stop this run's gateway and receiver with it.
trap 'for p in $gw $rx; do kill -TERM "$p" 2>/dev/null || true; done' EXIT
for r in $(seq 1 "$rounds"); do for c in ${CONC:-8 64}; do
  d=$out/c$c-r$r; rm -rf "$d"
  "$bin/waping-loadtest" init --out "$d" --workspaces 1 --listen 127.0.0.1:7481 --metrics 127.0.0.1:9481 2>/dev/null
  "$bin/examples/receiver" --listen 127.0.0.1:7480 > "$d/rx.json" 2> "$d/rx.log" & rx=$!
  WAPING__WEBHOOKS__ALLOW_HTTP=true WAPING__WEBHOOKS__ALLOW_NETWORKS='["127.0.0.0/8"]' \
  WAPING__WEBHOOKS__MAX_CONCURRENCY=$c "$bin/waping-gateway" run --config "$d/gateway.toml" > "$d/gw.log" 2>&1 & gw=$!
  until [ -f "$d/state/runtime.json" ]; do sleep 0.1; done
  http=$(jq -r .http "$d/state/runtime.json")   # the API: https, self-signed (-k on loopback)
  key=$(sed -n 's/^key = "\(.*\)"$/\1/p' "$d/keys.toml")
  curl -skf -X POST "https://$http/v1/webhooks" -H "authorization: Bearer $key" -H 'content-type: application/json' \
    -d '{"url":"http://127.0.0.1:7480/hook","event_types":["message.status"]}' > "$d/endpoint.json"
  t0=$(date +%s%3N)
  "$bin/waping-loadtest" run --keys "$d/keys.toml" --gateway-state "$d/state" -c 4 --body-bytes 200 \
    --closed-loop "${WINDOW:-256}" --duration "${DUR:-0.4s}" --json "$d/lt.json" > /dev/null 2> "$d/lt.log"
  n=$(jq '.delivered + ([.failed[]] | add // 0)' "$d/lt.json")
  # Every accepted message has its status event; wait (at most 300 s) until all have arrived.
  for _ in $(seq 1500); do
    seen=$(tail -n 1 "$d/rx.log" | jq -r '.distinct // 0' 2>/dev/null || echo 0)
    [ "$seen" -ge "$n" ] && break; sleep 0.2
  done
  curl -s http://127.0.0.1:9481/metrics > "$d/metrics.txt"
  kill -TERM $rx; wait $rx || true; rx=
  kill -TERM $gw; wait $gw || true; gw=
  dropped=$(awk '/^waping_events_dropped_total/ {s += $NF} END {print s + 0}' "$d/metrics.txt")
  jq -c --argjson n "$n" --argjson t0 "$t0" --argjson c "$c" --argjson r "$r" --argjson dropped "$dropped" \
     --slurpfile lt "$d/lt.json" '{conc: $c, round: $r, messages: $n, received: .distinct, duplicates,
      hot_path_per_s: ($lt[0].accepted_per_s | round), receiver_span_s: .elapsed_s,
      deliveries_per_s: (($n - 1) / .elapsed_s | round),
      deliveries_per_s_from_launch: ($n * 1000 / (.last_new_id_unix_ms - $t0) | round),
      dropped: $dropped}' "$d/rx.json" | tee "$d/result.json"
  [ -n "${KEEP:-}" ] || rm -rf "$d/state"   # journal and event store: hundreds of MB per run
done; done
