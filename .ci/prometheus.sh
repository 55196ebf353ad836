#!/usr/bin/env bash
# billing-svc, payment-svc and provider-sim run standalone (as in README's "Running the
# services on their own", here on SQLite in dev mode), each service with its metrics
# port; some traffic goes through grpcurl; then the real Prometheus server scrapes both
# and must see `up == 1` for each, the per-RPC request and latency series, and the
# payment series; `promtool check metrics` must pass on both pages.
# Usage: .ci/prometheus.sh <dir with billing-svc, payment-svc, provider-sim, billpay>
set -euo pipefail
bin="$1"
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
billing=127.0.0.1:$(free_port); billing_metrics=127.0.0.1:$(free_port)
payment=127.0.0.1:$(free_port); payment_metrics=127.0.0.1:$(free_port)
notify=127.0.0.1:$(free_port); sim=127.0.0.1:$(free_port); prom=127.0.0.1:$(free_port)

"$bin/provider-sim" --listen-addr "$sim" --database-url "sqlite://$work/sim.db" >"$work/sim.log" 2>&1 &
pids+=($!)
"$bin/billing-svc" --dev --database-url "sqlite://$work/billing.db" --listen-addr "$billing" \
  --metrics-addr "$billing_metrics" >"$work/billing.log" 2>&1 &
pids+=($!)
"$bin/payment-svc" --dev --database-url "sqlite://$work/payment.db" --listen-addr "$payment" \
  --metrics-addr "$payment_metrics" --notify-listen-addr "$notify" --billing-url "http://$billing" \
  --bank-card-url "http://$sim/bank-card" --alipay-url "http://$sim/alipay" \
  --wechat-pay-url "http://$sim/wechat-pay" >"$work/payment.log" 2>&1 &
pids+=($!)
for addr in "$billing" "$payment"; do
  for _ in $(seq 1 100); do
    grpcurl -plaintext "$addr" grpc.health.v1.Health/Check >/dev/null 2>&1 && break
    sleep 0.1
  done
done

# Tokens for services in dev mode without a keys file: HS256 with the dev secret.
export BILLPAY_JWT_SECRET=billpay-dev-secret-not-for-production-use
service=$("$bin/billpay" token --role service)
cny() { printf '{"currency_code":"CNY","amount":"%s"}' "$1"; }
call() { grpcurl -plaintext -H "authorization: Bearer $service" "$@"; }
account=$(call -d "{\"customer_ref\":\"prom-1\",\"display_name\":\"Li Lei\",\"phone\":\"13912345678\",\"credit_limit\":$(cny 20000.00)}" \
  "$billing" billing.v1.BillingService/CreateAccount | python3 -c 'import json,sys; print(json.load(sys.stdin)["account"]["accountId"])')
call -d "{\"account_id\":\"$account\",\"order_ref\":\"prom-phone\",\"product_id\":\"mall-fee\",\"term_count\":12,\"price\":$(cny 5999.00)}" \
  "$billing" billing.v1.BillingService/CreatePlan >/dev/null
call -d "{\"account_id\":\"$account\",\"order_ref\":\"prom-too-big\",\"product_id\":\"mall-fee\",\"term_count\":12,\"price\":$(cny 30000.00)}" \
  "$billing" billing.v1.BillingService/CreatePlan >/dev/null 2>&1 || true
customer=$("$bin/billpay" token --role customer --account "$account")
grpcurl -plaintext -H "authorization: Bearer $customer" \
  -d "{\"idempotency_key\":\"prom-pay-1\",\"account_id\":\"$account\",\"target\":{\"amount\":$(cny 100.00)},\"expected_amount\":$(cny 100.00),\"method\":\"PAYMENT_METHOD_BANK_CARD\",\"instrument\":\"tok_6222020000004242\"}" \
  "$payment" payment.v1.PaymentService/CreateRepayment >"$work/repay" 2>&1
grep -q PAYMENT_STATUS_SUCCEEDED "$work/repay" || { echo "FAIL the repayment"; cat "$work/repay" "$work/payment.log"; exit 1; }

failures=0
for target in "$billing_metrics" "$payment_metrics"; do
  curl -sf "http://$target/metrics" >"$work/page"
  if promtool check metrics <"$work/page"; then echo "ok   promtool check metrics ($target)"; else
    echo "FAIL promtool check metrics ($target)"; failures=$((failures + 1)); fi
done

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: billing-svc
    static_configs: [{ targets: ["$billing_metrics"] }]
  - job_name: payment-svc
    static_configs: [{ targets: ["$payment_metrics"] }]
YAML
promtool check config "$work/prometheus.yml" >/dev/null
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="$prom" >"$work/prometheus.log" 2>&1 &
pids+=($!)
query() { curl -sf "http://$prom/api/v1/query" --data-urlencode "query=$1" 2>/dev/null || true; }
# The number of series the query answers.
series() { query "$1" | python3 -c 'import json,sys
try: print(len(json.load(sys.stdin)["data"]["result"]))
except Exception: print(0)'; }
expect() { # expect <description> <query> <at least this many series>
  local got=0
  for _ in $(seq 1 60); do
    got=$(series "$2"); [ "$got" -ge "$3" ] && break; sleep 0.5
  done
  if [ "$got" -ge "$3" ]; then echo "ok   $1 ($got series: $2)"; else
    echo "FAIL $1: $2 gave $got series"; failures=$((failures + 1)); fi
}
expect "both targets up"                 'up == 1' 2
expect "billing's per-RPC requests"      'grpc_server_requests_total{job="billing-svc",grpc_method="CreatePlan",grpc_code="OK"}' 1
expect "billing's refusals by code"      'grpc_server_requests_total{job="billing-svc",grpc_method="CreatePlan",grpc_code="FAILED_PRECONDITION"}' 1
expect "billing's latency histogram"     'grpc_server_request_duration_seconds_bucket{job="billing-svc",grpc_method="CreateAccount"}' 1
expect "payment's per-RPC requests"      'grpc_server_requests_total{job="payment-svc",grpc_method="CreateRepayment"}' 1
expect "payment's latency histogram"     'grpc_server_request_duration_seconds_bucket{job="payment-svc",grpc_method="CreateRepayment"}' 1
expect "payments by method and outcome"  'payment_charges_total{method="BANK_CARD",outcome="succeeded"}' 1
expect "provider call latency"           'provider_call_duration_seconds_count{provider="bank-card"}' 1
expect "outbox gauges"                   'payment_outbox_rows' 1
expect "dead letters gauge"              'payment_dead_letters' 1
expect "DB pool gauges of both"          'db_pool_connections{state="in_use"}' 4
[ "$failures" -eq 0 ] || { echo "$failures Prometheus check(s) failed"; tail -5 "$work/prometheus.log"; exit 1; }
echo "prometheus: all checks passed"
