#!/usr/bin/env python3
"""Cross-check QuotePlan schedules and APRs of a running billing-svc against numpy-financial.

For random quotes on `cash-loan` (EQUAL_INSTALLMENT) and `mall-fee` (FLAT_FEE) it
recomputes every schedule line, the totals, the APR and the effective rate, and
reports each field where the service differs.

Independent: nothing here comes from the Rust code. The only inputs taken from the
service are the per-term rates (ListProducts) and the QuotePlan responses under test.
The level payment and the IRR come from numpy-financial; money is rounded half-up to
the cent with `decimal`. Where float rounding could go either way (a payment within
1e-6 of a half cent, a percentage within 1e-7 of a .005 midpoint) the payment is
recomputed exactly in Decimal, and a percentage accepts either neighbour; both are
counted and printed.

Usage: quote_oracle.py --addr HOST:PORT --token JWT [--count 250] [--seed 20261129]
"""
import argparse
import importlib
import random
import subprocess
import sys
import tempfile
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from pathlib import Path

import grpc
import numpy_financial as npf

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PRODUCTS = {"cash-loan": "INSTALLMENT_METHOD_EQUAL_INSTALLMENT",
            "mall-fee": "INSTALLMENT_METHOD_FLAT_FEE"}
MIN_CENTS, MAX_CENTS = 10_000, 5_000_000  # principal 100.00 .. 50000.00
ZERO, CENT, HALF_CENT = Decimal("0.00"), Decimal("0.01"), Decimal("0.005")
MIN_COMPARED = 200


def load_stubs(out_dir):
    """Generates the Python stubs for every proto file into out_dir and imports them."""
    protos = sorted(str(p) for p in PROTO_ROOT.rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
                    f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos],
                   check=True)
    for package in (d for d in Path(out_dir).rglob("*") if d.is_dir()):
        # Regular packages, so an installed package named e.g. `common` cannot shadow them.
        (package / "__init__.py").touch()
    sys.path.insert(0, str(out_dir))
    return (importlib.import_module("billing.v1.billing_service_pb2"),
            importlib.import_module("billing.v1.billing_service_pb2_grpc"))


def cents(x):
    return Decimal(x).quantize(CENT, ROUND_HALF_UP)


def near_midpoint(d, tol):
    """Whether Decimal d lies within tol of a half-cent (x.xx5) midpoint."""
    return abs(d - d.quantize(CENT, ROUND_FLOOR) - HALF_CENT) < Decimal(tol)


def level_payment(principal, rate, n, stats):
    """The equal installment: npf.pmt, or exact Decimal arithmetic near a half cent."""
    approx = Decimal(repr(float(npf.pmt(float(rate), n, -float(principal)))))
    if not near_midpoint(approx, "1e-6"):
        return cents(approx)
    stats["exact_pmt"] += 1
    with localcontext() as ctx:
        ctx.prec = 50
        growth = (1 + rate) ** n
        return cents(principal * rate * growth / (growth - 1))


def expected_lines(method, principal, rate, n, stats):
    """[(principal, interest, fee)] per line, seq order."""
    if method == "INSTALLMENT_METHOD_FLAT_FEE":
        part, fee = cents(principal / n), cents(principal * rate)
        last = principal - (n - 1) * part
        return [(part, ZERO, fee)] * (n - 1) + [(last, ZERO, fee)]
    payment, balance, lines = level_payment(principal, rate, n, stats), principal, []
    for _ in range(n - 1):
        interest = cents(balance * rate)
        lines.append((payment - interest, interest, ZERO))
        balance -= payment - interest
    return lines + [(balance, cents(balance * rate), ZERO)]


def percent_choices(x, stats):
    """The accepted 2-decimal strings for percentage x; both neighbours at a tie."""
    d = Decimal(repr(float(x)))
    if not near_midpoint(d, "1e-7"):
        return {str(cents(d))}
    stats["ties"] += 1
    low = d.quantize(CENT, ROUND_FLOOR)
    return {str(low), str(low + CENT)}


def check(resp, method, principal, rate, n, stats):
    """Returns (field, expected, service) for every difference in one quote."""
    want = expected_lines(method, principal, rate, n, stats)
    got = [[Decimal(getattr(line, name).amount)
            for name in ("principal", "interest", "fee", "amount_due")] for line in resp.lines]
    dues = [g[3] for g in got]
    method_field = resp.DESCRIPTOR.fields_by_name["method"].enum_type
    diffs = [("method", method, method_field.values_by_number[resp.method].name),
             ("rate", str(rate), resp.rate),
             ("principal", str(principal), resp.principal.amount),
             ("line count", n, len(resp.lines)),
             ("seqs", list(range(1, n + 1)), [line.seq for line in resp.lines])]
    for k, (line, (p, i, f)) in enumerate(zip(resp.lines, want), 1):
        for name, value in (("principal", p), ("interest", i), ("fee", f),
                            ("amount_due", p + i + f)):
            diffs.append((f"line {k} {name}", str(value), getattr(line, name).amount))
    diffs += [("sum of line principal", principal, sum(g[0] for g in got)),
              ("lines where amount_due != principal+interest+fee", [],
               [k for k, g in enumerate(got, 1) if g[3] != g[0] + g[1] + g[2]]),
              ("total_interest", str(sum((g[1] for g in got), ZERO)), resp.total_interest.amount),
              ("total_fee", str(sum((g[2] for g in got), ZERO)), resp.total_fee.amount),
              ("total_amount", str(sum(dues, ZERO)), resp.total_amount.amount)]
    if method == "INSTALLMENT_METHOD_EQUAL_INSTALLMENT":
        payment = sum(want[0])
        diffs.append((f"lines before the last where amount_due != {payment}", [],
                      [k for k, due in enumerate(dues[:-1], 1) if due != payment]))
    irr = npf.irr([-float(principal)] + [float(due) for due in dues])
    for field, value in (("apr", 12 * irr * 100), ("effective_rate", ((1 + irr) ** 12 - 1) * 100)):
        accepted = percent_choices(value, stats)
        if getattr(resp, field) not in accepted:
            diffs.append((field, " or ".join(sorted(accepted)), getattr(resp, field)))
    return [d for d in diffs if d[1] != d[2]]


def random_request(rng, products):
    """(product_id, term, price, down payment or None), principal within 100.00..50000.00."""
    product_id = rng.choice(sorted(PRODUCTS))
    term = rng.choice(sorted(products[product_id]))
    if rng.random() < 0.1:
        principal = rng.choice([MIN_CENTS, MAX_CENTS])
    else:
        principal = rng.randint(MIN_CENTS, MAX_CENTS)
    down = rng.choice([None, 0, rng.randint(1, 2 * principal)])
    price = Decimal(principal + (down or 0)).scaleb(-2)
    return product_id, term, price, None if down is None else Decimal(down).scaleb(-2)


def cny(amount):
    return {"currency_code": "CNY", "amount": str(amount)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True, help="billing-svc HOST:PORT")
    parser.add_argument("--token", required=True, help="JWT with scope billing:read")
    parser.add_argument("--count", type=int, default=250)
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pb, pb_grpc = load_stubs(tmp)
    stub = pb_grpc.BillingServiceStub(grpc.insecure_channel(args.addr))
    auth = [("authorization", f"Bearer {args.token}")]
    try:
        offered = stub.ListProducts(pb.ListProductsRequest(), metadata=auth, timeout=10).products
    except grpc.RpcError as err:
        sys.exit(f"oracle: ListProducts failed: {err.code().name}: {err.details()}")
    products = {p.product_id: {t.term_count: Decimal(t.rate) for t in p.terms}
                for p in offered if p.product_id in PRODUCTS}
    if set(products) != set(PRODUCTS):
        sys.exit(f"oracle: ListProducts lacks {sorted(set(PRODUCTS) - set(products))}")
    rng, stats, failed = random.Random(args.seed), {"exact_pmt": 0, "ties": 0}, 0
    for _ in range(args.count):
        product_id, term, price, down = random_request(rng, products)
        fields = {"product_id": product_id, "term_count": term, "price": cny(price)}
        if down is not None:  # else omitted: zero down payment
            fields["down_payment"] = cny(down)
        try:
            resp = stub.QuotePlan(pb.QuotePlanRequest(**fields), metadata=auth, timeout=10)
            diffs = check(resp, PRODUCTS[product_id], price - (down or 0),
                          products[product_id][term], term, stats)
        except grpc.RpcError as err:
            diffs = [("status", "OK", f"{err.code().name}: {err.details()}")]
        except InvalidOperation as err:
            diffs = [("decimal strings", "parseable", repr(err))]
        for field, expected, actual in diffs:
            print(f"MISMATCH QuotePlan({product_id} n={term} price={price} down={down}): "
                  f"{field}: oracle {expected}, service {actual}")
        failed += bool(diffs)
    print(f"oracle: seed {args.seed}; payment recomputed exactly near a half cent "
          f"{stats['exact_pmt']} times; APR/effective-rate ties {stats['ties']}")
    print(f"oracle: {args.count - failed} passed, {failed} failed")
    return 1 if failed or args.count < MIN_COMPARED else 0


if __name__ == "__main__":
    sys.exit(main())
