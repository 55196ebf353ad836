//! Sequences the model test found (or issue 13 reported) and shrank, kept as named
//! regression tests, each on both backends. A failing model run prints new ones ready
//! to paste here.

use integration_tests::Backend;

use super::{CloseMode::*, How::*, Step::*, replay};

/// Issue 13: mall-fee/3, 10074.28 bought 2026-11-29, bill 1 (due 2026-12-29) paid in
/// full at once; the payoff the next day owes the remaining principal, 6716.19, not
/// bill 2's fee of 74.55 on top (6790.74): bill 2's period has not started.
async fn flat_fee_payoff_with_the_current_bill_prepaid_owes_no_later_fee(
    backend: Backend,
    test: &str,
) {
    replay(
        backend,
        test,
        "2026-11-29",
        &[
            NewPlan {
                product: 0,
                term: 0,
                price: 1_007_428,
                back_days: 0,
                month_end: 0,
            },
            Pay {
                plan: 0,
                how: Bills([0, 0]),
            },
            Advance {
                days: 1,
                close: NoClose,
            },
            Pay {
                plan: 0,
                how: Payoff,
            },
        ],
    )
    .await;
}

/// Shrunk by the model test (seed 13, sequence 62) before the fix: mall-fee/6 with
/// bills 2 and 4 paid ahead, a payoff four days after bill 1's due date (in bill 2's
/// period, already paid) was quoted 19567.24 — bill 3's fee 187.13 too much.
async fn flat_fee_payoff_in_a_paid_period_charges_no_fee(backend: Backend, test: &str) {
    replay(
        backend,
        test,
        "2092-08-10",
        &[
            NewPlan {
                product: 0,
                term: 1,
                price: 2_878_948,
                back_days: 0,
                month_end: 4,
            },
            Pay {
                plan: 0,
                how: Bills([9, 1]),
            },
            AdvanceToDue {
                plan: 0,
                offset: 4,
                close: CatchUp,
            },
            Pay {
                plan: 0,
                how: Payoff,
            },
        ],
    )
    .await;
}

/// Shrunk by the model test (seed 13, sequence 1) before the fix: a back-dated
/// mall-free/3 whose three bills are all due; a payoff pays only due bills, so the
/// plan is SETTLED, not SETTLED_EARLY.
async fn a_payoff_of_due_bills_only_settles_the_plan(backend: Backend, test: &str) {
    replay(
        backend,
        test,
        "2095-07-08",
        &[
            NewPlan {
                product: 1,
                term: 0,
                price: 20_921,
                back_days: 165,
                month_end: 2,
            },
            Pay {
                plan: 0,
                how: Payoff,
            },
        ],
    )
    .await;
}

/// Issue 13: cash-loan/6, 31503.48 bought 2026-05-31, paid off on its last due date
/// (2026-11-30): every bill is simply PAID and the plan SETTLED.
async fn a_payoff_on_the_last_due_date_settles_the_plan(backend: Backend, test: &str) {
    replay(
        backend,
        test,
        "2026-11-30",
        &[
            NewPlan {
                product: 2,
                term: 0,
                price: 3_150_348,
                back_days: 183,
                month_end: 0,
            },
            Pay {
                plan: 0,
                how: Payoff,
            },
        ],
    )
    .await;
}

/// Shrunk by the model test (seed 13, sequence 1) with the old penalty rule put back:
/// a back-dated mall-free/3 (bill 1 due 2095-01-29, five months before), 44.14 of its
/// principal repaid on 2095-07-08, then the catch-up closes the days to 07-15. The days
/// before the repayment bear penalty on the principal unpaid then, 69.74 (0.03 a day):
/// 4.85, not the 1.67 of charging every day on what is unpaid at the close (SPEC §5.8).
async fn a_repayment_lowers_the_penalty_only_from_its_own_day(backend: Backend, test: &str) {
    replay(
        backend,
        test,
        "2095-07-08",
        &[
            NewPlan {
                product: 1,
                term: 0,
                price: 20_921,
                back_days: 165,
                month_end: 2,
            },
            Pay {
                plan: 2,
                how: Amount(211),
            },
            Advance {
                days: 8,
                close: CatchUp,
            },
        ],
    )
    .await;
}

/// Found by the 100,000-sequence run (seed 13, sequence 65139), shrunk to 6 steps.
/// Bill 5's principal was paid ahead and only part of its fee; the payoff cut its fee
/// to what was paid, so it owed nothing and got no allocation — and stayed UPCOMING,
/// paid in full, with a next due date. Every bill a payoff settles is SETTLED_EARLY,
/// allocation or not.
async fn a_payoff_after_a_reversal_settles_every_future_bill(backend: Backend, test: &str) {
    replay(
        backend,
        test,
        "2036-06-21",
        &[
            NewPlan {
                product: 0,
                term: 2,
                price: 1_892_822,
                back_days: 0,
                month_end: 0,
            },
            Overpay { extra: 90_208 },
            Pay {
                plan: 0,
                how: Amount(338),
            },
            Pay {
                plan: 2,
                how: Amount(198),
            },
            Reverse { payment: 1 },
            Pay {
                plan: 2,
                how: Payoff,
            },
        ],
    )
    .await;
}

/// Shrunk by the model test (seed 13, sequence 20) with a deliberate bug put in
/// (CancelPlan refunding only the principal paid): cash-loan-ep/12 bought 2096-02-29
/// (every bill due), its first two bills paid (principal and interest), then the goods
/// returned. All that was paid, interest too, becomes credit balance.
async fn a_cancel_refunds_everything_paid_on_the_plan(backend: Backend, test: &str) {
    replay(
        backend,
        test,
        "2099-01-30",
        &[
            NewPlan {
                product: 3,
                term: 2,
                price: 480_141,
                back_days: 16,
                month_end: 5,
            },
            Pay {
                plan: 2,
                how: Bills([0, 1]),
            },
            Cancel { plan: 2 },
        ],
    )
    .await;
}

crate::on_both_backends!(
    a_cancel_refunds_everything_paid_on_the_plan,
    a_payoff_after_a_reversal_settles_every_future_bill,
    a_repayment_lowers_the_penalty_only_from_its_own_day,
    flat_fee_payoff_with_the_current_bill_prepaid_owes_no_later_fee,
    flat_fee_payoff_in_a_paid_period_charges_no_fee,
    a_payoff_of_due_bills_only_settles_the_plan,
    a_payoff_on_the_last_due_date_settles_the_plan,
);
