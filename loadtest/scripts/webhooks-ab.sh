#!/usr/bin/env bash
# The hot path with webhooks (BENCHMARKS.md, "Webhooks (issue 8)"): closed-loop load against
#   a: no endpoint,
#   b: one endpoint per workspace for message.status at a receiver answering after 2 s
#      (the backlog grows for the whole run),
#   c: one endpoint per workspace for device.link_code (a type this load never produces),
#   a0, b0: a and b with [webhooks] log_all_events = false (only events an endpoint wants
#      are stored; a0 stores nothing, the node without webhooks),
# same config otherwise, rounds interleaved (a b c a b c …), fresh state each run.
# Ports: receiver 127.0.0.1:7480, gateway QUIC 7481, metrics 9481. One JSON line per run on stdout.
#   usage: webhooks-ab.sh OUT_DIR [ROUNDS=3]
#   env: BIN (release dir with waping-gateway, waping-loadtest, examples/receiver),
#        KEEP (non-empty: keep each run's state directory), ARMS ("a0 a b0 b"), DUR ("10s"), WINDOW (256)
set -euo pipefail
out=${1:?usage: webhooks-ab.sh OUT_DIR [ROUNDS]}; rounds=${2:-3}
bin=${BIN:-/work/target-bench/release}
mkdir -p "$out"
gw= rx=
# A failed step stops the script: stop this run's gateway and receiver with it.
trap 'for p in $gw $rx; do kill -TERM "$p" 2>/dev/null || true; done' EXIT
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # utime + stime, clock ticks
for r in $(seq 1 "$rounds"); do for v in ${ARMS:-a0 a b0 b}; do
  d=$out/$v-r$r; rm -rf "$d"
  "$bin/waping-loadtest" init --out "$d" --listen 127.0.0.1:7481 --metrics 127.0.0.1:9481 2>/dev/null
  delay=0; case $v in b|b0) delay=2000;; esac
  log_all=true; case $v in a0|b0) log_all=false;; esac
  "$bin/examples/receiver" --listen 127.0.0.1:7480 --delay-ms $delay > "$d/rx.json" 2> "$d/rx.log" & rx=$!
  WAPING__WEBHOOKS__ALLOW_HTTP=true WAPING__WEBHOOKS__ALLOW_NETWORKS='["127.0.0.0/8"]' \
    WAPING__WEBHOOKS__LOG_ALL_EVENTS=$log_all "$bin/waping-gateway" run --config "$d/gateway.toml" > "$d/gw.log" 2>&1 & gw=$!
  until [ -f "$d/state/runtime.json" ]; do sleep 0.1; done
  http=$(jq -r .http "$d/state/runtime.json")   # the API: https, self-signed (-k on loopback)
  types='[]'; case $v in b|b0) types='["message.status"]';; c) types='["device.link_code"]';; esac
  ids=()
  if [ "$v" != a ] && [ "$v" != a0 ]; then
    for key in $(sed -n 's/^key = "\(.*\)"$/\1/p' "$d/keys.toml"); do
      curl -skf -X POST "https://$http/v1/webhooks" -H "authorization: Bearer $key" -H 'content-type: application/json' \
        -d "{\"url\":\"http://127.0.0.1:7480/hook\",\"event_types\":$types}" > "$d/endpoint.json"
      ids+=("$key $(jq -r .webhook.id "$d/endpoint.json")")
    done
  fi
  size0=$(stat -c %s "$d/state/events.redb" 2>/dev/null || echo 0)
  c0=$(cpu_ticks $gw); t0=$(date +%s%N)
  "$bin/waping-loadtest" run --keys "$d/keys.toml" --gateway-state "$d/state" -c 4 --body-bytes 200 \
    --duration "${DUR:-10s}" --closed-loop "${WINDOW:-256}" --json "$d/lt.json" > /dev/null 2> "$d/lt.log"
  c1=$(cpu_ticks $gw); t1=$(date +%s%N)
  # The event writer may still be draining its queue: give it 2 s, then look.
  sleep 2
  curl -s http://127.0.0.1:9481/metrics > "$d/metrics.txt"
  # The backlog from the counters: appended - delivered - dead (each event here is owed to at
  # most one endpoint); api_pending is GET /v1/webhooks/{id}'s pending_deliveries summed.
  api_pending=0
  for e in "${ids[@]}"; do
    set -- $e
    p=$(curl -skf "https://$http/v1/webhooks/$2" -H "authorization: Bearer $1" | jq .pending_deliveries)
    api_pending=$((api_pending + p))
  done
  size1=$(stat -c %s "$d/state/events.redb" 2>/dev/null || echo 0)
  kill -TERM $gw; wait $gw || true; gw=
  kill -TERM $rx; wait $rx || true; rx=
  m() { awk -v k="$1" 'index($0, k) == 1 {s += $NF} END {print s + 0}' "$d/metrics.txt"; }
  appended=$(m waping_events_appended_total); delivered=$(m 'waping_webhook_deliveries_total{result="delivered"}')
  dead=$(m 'waping_webhook_deliveries_total{result="dead"}')
  jq -c --arg v "$v" --argjson r "$r" --argjson dropped "$(m waping_events_dropped_total)" \
     --argjson appended "$appended" --argjson delivered "$delivered" --argjson pending "$((appended - delivered - dead))" \
     --argjson api_pending "$api_pending" --argjson grow "$((size1 - size0))" \
     --argjson cpu "$(( (c1 - c0) * 1000 / $(getconf CLK_TCK) ))" --argjson wall "$(( (t1 - t0) / 1000000 ))" \
     --argjson log_lines "$(wc -l < "$d/gw.log")" --slurpfile rx "$d/rx.json" \
     '{arm: $v, round: $r, accepted_per_s: (.accepted_per_s | round), accepted, missing_reports,
       p50_ms: .accept_latency.p50_ms, p99_ms: .accept_latency.p99_ms,
       gw_cpu_s: ($cpu / 1000), gw_cpu_per_wall: ($cpu / $wall * 100 | round / 100),
       appended: $appended, dropped: $dropped, queued_end: (if $appended + $dropped == 0 then 0 else .accepted - $appended - $dropped end),
       delivered: $delivered, pending_end: $pending, api_pending_capped: $api_pending,
       store_growth_bytes: $grow, gw_log_lines: $log_lines, rx_requests: $rx[0].requests}' "$d/lt.json" | tee "$d/result.json"
  [ -n "${KEEP:-}" ] || rm -rf "$d/state"   # journal and event store: hundreds of MB per run
done; done
