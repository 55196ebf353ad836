-- Repayments applied to bills, and where each one's money went.
CREATE TABLE repayments (
    payment_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    currency_code TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    applied_to_bills_minor BIGINT NOT NULL CHECK (applied_to_bills_minor >= 0),
    added_to_credit_balance_minor BIGINT NOT NULL CHECK (added_to_credit_balance_minor >= 0),
    state TEXT NOT NULL CHECK (state IN ('APPLIED', 'REVERSED')),
    applied_at_micros BIGINT NOT NULL,
    reversed_at_micros BIGINT,
    CHECK (applied_to_bills_minor + added_to_credit_balance_minor = amount_minor)
);

CREATE INDEX repayments_by_account ON repayments (account_id, applied_at_micros);

CREATE TABLE allocations (
    payment_id TEXT NOT NULL REFERENCES repayments (payment_id),
    bill_id TEXT NOT NULL REFERENCES bills (bill_id),
    account_id TEXT NOT NULL,
    principal_minor BIGINT NOT NULL CHECK (principal_minor >= 0),
    interest_minor BIGINT NOT NULL CHECK (interest_minor >= 0),
    fee_minor BIGINT NOT NULL CHECK (fee_minor >= 0),
    penalty_minor BIGINT NOT NULL CHECK (penalty_minor >= 0),
    PRIMARY KEY (payment_id, bill_id)
);
