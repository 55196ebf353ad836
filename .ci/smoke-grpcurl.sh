#!/usr/bin/env bash
# Starts `billpay up` on a scratch data directory, runs every grpcurl command it
# prints (as an operator would paste them), checks what they answer, cross-checks
# random quotes against numpy-financial (.ci/quote_oracle.py), runs `billpay demo`
# (a repayment by each method), then stops it with SIGTERM and checks it exits 0.
set -euo pipefail
billpay="$1"
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

# Free ports (port 0): a busy default port on the machine cannot fail the smoke test.
"$billpay" up --data-dir "$work/data" --billing-addr 127.0.0.1:0 --payment-addr 127.0.0.1:0 \
  --notify-addr 127.0.0.1:0 --sim-addr 127.0.0.1:0 >"$work/out" 2>"$work/log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q 'stops it cleanly' "$work/out" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "billpay up exited early"; exit 1; }
  sleep 0.1
done
grep -q 'stops it cleanly' "$work/out" || { cat "$work/log"; echo "billpay up printed no banner"; exit 1; }

failures=0
check() { # check <description> <file> <pattern>
  if grep -q -- "$3" "$2"; then echo "ok   $1"; else echo "FAIL $1 (no '$3')"; cat "$2"; failures=$((failures + 1)); fi
}

n=0
while IFS= read -r command; do
  n=$((n + 1))
  bash -c "$command" >"$work/reply.$n" 2>&1 || true
done < <(sed -n 's/^  \(grpcurl .*\)$/\1/p' "$work/out")
[ "$n" -ge 26 ] || { echo "expected at least 26 grpcurl commands, got $n"; exit 1; }

check "billing list"            "$work/reply.1" 'billing.v1.BillingService'
check "billing list health"     "$work/reply.1" 'grpc.health.v1.Health'
check "payment list"            "$work/reply.2" 'payment.v1.PaymentService'
check "describe"                "$work/reply.3" 'rpc CreateAccount'
check "billing health"          "$work/reply.4" '"status": "SERVING"'
check "payment health"          "$work/reply.5" '"status": "SERVING"'
check "CreateAccount"           "$work/reply.6" '"customerRef": "c-1001"'
check "GetAccount as operator"  "$work/reply.7" '"phone": "138\*\*\*\*1234"'
check "GetAccount as customer"  "$work/reply.8" '"phone": "13812341234"'
check "ListProducts"            "$work/reply.9" '"productId": "cash-loan-ep"'
check "QuotePlan APR"           "$work/reply.10" '"apr": "13.03"'
check "QuotePlan effective"     "$work/reply.10" '"effectiveRate": "13.84"'
check "CreatePlan"              "$work/reply.11" '"totalFee"'
check "ListBills (customer)"    "$work/reply.12" '"status": "BILL_STATUS_UPCOMING"'
check "ListBills pages"         "$work/reply.12" '"nextPageToken"'
check "GetAccountSummary"       "$work/reply.13" '"availableCredit"'
check "QuoteRepayment"          "$work/reply.14" '"amount": "100.00"'
check "CreateRepayment"         "$work/reply.15" '"status": "PAYMENT_STATUS_SUCCEEDED"'
check "RunDayClose"             "$work/reply.16" '"asOf"'
check "WatchEvents replays"     "$work/reply.17" 'EVENT_KIND_PLAN_CREATED'
check "WatchEvents ends by itself" "$work/reply.17" 'EVENT_KIND_REPAYMENT_APPLIED'
if grep -q 'ERROR' "$work/reply.17"; then echo "FAIL WatchEvents one-shot ended in an error"; failures=$((failures + 1)); fi

# Refusals, as grpcurl shows them: the google.rpc details decoded as JSON by reflection.
billing_addr=$(sed -n 's/^  billing-svc  //p' "$work/out")
payment_addr=$(sed -n 's/^  payment-svc  \([^ ]*\).*/\1/p' "$work/out")
service_token=$(sed -n 's/^  service (all scopes but billing:apply)  //p' "$work/out")
customer_token=$(sed -n 's/^  customer ([^)]*)  //p' "$work/out")
account=$(sed -n 's/^  demo account //p' "$work/out")
cny() { printf '{"currency_code":"CNY","amount":"%s"}' "$1"; }
refusal() { # refusal <name> <grpcurl args...>: runs it, keeps and prints what it answered
  local name="$1"; shift
  grpcurl -plaintext "$@" >"$work/refusal.$name" 2>&1 || true
  echo "---- grpcurl: $name"; sed 's/^/    /' "$work/refusal.$name"
}
refusal describe-errorinfo "$billing_addr" describe google.rpc.ErrorInfo
check "describe google.rpc.ErrorInfo" "$work/refusal.describe-errorinfo" 'message ErrorInfo'
# The account of reply 6 has a 20000.00 limit; a 30000.00 phone is within the product's range.
limited_account=$(grep -o '"accountId": "[^"]*"' "$work/reply.6" | sed 's/.*: "//; s/"$//')
refusal credit-limit -H "authorization: Bearer $service_token" \
  -d "{\"account_id\":\"$limited_account\",\"order_ref\":\"too-big\",\"product_id\":\"mall-fee\",\"term_count\":12,\"price\":$(cny 30000.00)}" \
  "$billing_addr" billing.v1.BillingService/CreatePlan
check "CREDIT_LIMIT_EXCEEDED decoded" "$work/refusal.credit-limit" '"reason":"CREDIT_LIMIT_EXCEEDED"'
refusal amount-changed -H "authorization: Bearer $customer_token" \
  -d "{\"idempotency_key\":\"smoke-changed\",\"account_id\":\"$account\",\"target\":{\"amount\":$(cny 50.00)},\"expected_amount\":$(cny 60.00),\"method\":\"PAYMENT_METHOD_BANK_CARD\",\"instrument\":\"tok_6222020000004242\"}" \
  "$payment_addr" payment.v1.PaymentService/CreateRepayment
check "AMOUNT_CHANGED decoded" "$work/refusal.amount-changed" '"reason":"AMOUNT_CHANGED"'
refusal bad-request -H "authorization: Bearer $service_token" \
  -d "{\"customer_ref\":\"\",\"display_name\":\"Li Lei\",\"phone\":\"12\",\"credit_limit\":$(cny -5.00)}" \
  "$billing_addr" billing.v1.BillingService/CreateAccount
check "BadRequest decoded" "$work/refusal.bad-request" '"fieldViolations"'
[ "$(grep -o '"field":' "$work/refusal.bad-request" | wc -l)" -ge 2 ] && echo "ok   two field violations" \
  || { echo "FAIL expected two field violations"; failures=$((failures + 1)); }
refusal wrong-port-list "$payment_addr" list
if grep -q 'billing.v1' "$work/refusal.wrong-port-list"; then
  echo "FAIL payment-svc reflects billing's contract"; failures=$((failures + 1))
else
  echo "ok   payment-svc reflects only its own contract"
fi
refusal wrong-port -import-path "$(dirname "$0")/../proto" -proto billing/v1/billing_service.proto \
  -H "authorization: Bearer $service_token" -d "{\"account_id\":\"$account\"}" \
  "$payment_addr" billing.v1.BillingService/GetAccount
check "a call on the wrong port names the service" "$work/refusal.wrong-port" 'it serves payment.v1.PaymentService'
check "UpdateCreditLimit"       "$work/reply.18" 'CREDIT_LIMIT_CHANGE_KIND_PERMANENT'
check "ListCreditLimitChanges"  "$work/reply.19" '"changeId"'
check "CancelPlan needs a plan" "$work/reply.20" 'NotFound'
check "CreateMandate (customer)" "$work/reply.21" 'MANDATE_STATUS_ACTIVE'
check "ListMandates"            "$work/reply.22" '"instrumentLast4": "4242"'
check "RunAutopay"              "$work/reply.25" '"asOf"'
check "WatchPaymentEvents"      "$work/reply.26" 'PAYMENT_EVENT_KIND_MANDATE_CREATED'

bash -c "$(sed -n 's/^  \(grpcurl .*CreateAccount\)$/\1/p' "$work/out")" >"$work/again" 2>&1
check "CreateAccount again is the same account" "$work/again" "$(grep -o '"accountId": "[^"]*"' "$work/reply.6")"

# An independent oracle: numpy-financial against 250 random live quotes.
if python3 "$(dirname "$0")/quote_oracle.py" --addr "$billing_addr" --token "$service_token" --count 250; then
  echo "ok   numpy-financial oracle"
else
  echo "FAIL numpy-financial oracle"; failures=$((failures + 1))
fi

# The customer's journey: buy, see what is due, pay by card, Alipay and WeChat Pay.
if "$billpay" demo --data-dir "$work/data" --billing-addr "$billing_addr" --payment-addr "$payment_addr" >"$work/demo" 2>&1; then
  check "billpay demo: three bills PAID" "$work/demo" '3  20[0-9-]*  *499.92  *35.99  *535.91  *0.00  Paid'
else
  echo "FAIL billpay demo"; cat "$work/demo"; failures=$((failures + 1))
fi
check "the notifier sent the customer messages" "$work/log" 'SMS: we received your repayment'
check "provider-sim ledger reachable" <(curl -s "http://$(sed -n 's/^  provider-sim \([^ ]*\).*/\1/p' "$work/out")/ledger") '"captured_minor"'

kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] && echo "ok   SIGTERM exits 0" || { echo "FAIL SIGTERM exit status $status"; failures=$((failures + 1)); }
check "stopped cleanly" "$work/out" 'billpay stopped cleanly.'

# TLS: `up --tls` on free ports; its grpcurl lines use -cacert (and billing's, which
# asks for mutual TLS, the dev client certificate). payment-svc reaches billing over
# mutual TLS, so the demo account and a quote through it show both sides work.
"$billpay" up --tls --data-dir "$work/tls-data" --billing-addr 127.0.0.1:0 \
  --payment-addr 127.0.0.1:0 --notify-addr 127.0.0.1:0 --sim-addr 127.0.0.1:0 \
  >"$work/tls-out" 2>"$work/tls-log" &
pid=$!
for _ in $(seq 1 100); do
  grep -q 'stops it cleanly' "$work/tls-out" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
check "up --tls is up" "$work/tls-out" 'TLS with the dev CA'
check "grpcurl lines use -cacert" "$work/tls-out" '^  grpcurl -cacert '
n=0
while IFS= read -r command; do
  n=$((n + 1))
  bash -c "$command" >"$work/tls-reply.$n" 2>&1 || true
done < <(sed -n 's/^  \(grpcurl .*\)$/\1/p' "$work/tls-out" | head -9)
check "TLS billing list"        "$work/tls-reply.1" 'billing.v1.BillingService'
check "TLS payment health"      "$work/tls-reply.5" '"status": "SERVING"'
check "TLS GetAccount"          "$work/tls-reply.8" '"phone": "13812341234"'
tls_billing=$(sed -n 's/^  billing-svc  //p' "$work/tls-out")
if grpcurl -plaintext "$tls_billing" list >"$work/tls-plain" 2>&1; then
  echo "FAIL plaintext to a TLS billing answered"; failures=$((failures + 1))
else
  echo "ok   plaintext to a TLS billing is refused"
fi
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] && echo "ok   up --tls exits 0 on SIGTERM" || { echo "FAIL up --tls exit status $status"; cat "$work/tls-log"; failures=$((failures + 1)); }

[ "$failures" -eq 0 ] || { echo "$failures smoke check(s) failed"; exit 1; }
echo "smoke: all checks passed"
