-- Installment plans and their bills. Totals are not stored: they are the sums
-- of the bills. Every row carries account_id (sharding key, ARCHITECTURE.md).
CREATE TABLE plans (
    plan_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    order_ref TEXT NOT NULL,
    -- The request as sent, to tell a retry from a different request (idempotency).
    request_fingerprint TEXT NOT NULL,
    product_id TEXT NOT NULL,
    method TEXT NOT NULL,
    term_count BIGINT NOT NULL CHECK (term_count > 0),
    rate TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    price_minor BIGINT NOT NULL CHECK (price_minor > 0),
    down_payment_minor BIGINT NOT NULL CHECK (down_payment_minor >= 0),
    principal_minor BIGINT NOT NULL CHECK (principal_minor > 0),
    purchase_date TEXT NOT NULL,
    apr TEXT NOT NULL,
    effective_rate TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'SETTLED', 'SETTLED_EARLY')),
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL,
    UNIQUE (account_id, order_ref)
);

CREATE INDEX plans_by_account ON plans (account_id, plan_id);

CREATE TABLE bills (
    bill_id TEXT PRIMARY KEY,
    plan_id TEXT NOT NULL REFERENCES plans (plan_id),
    account_id TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq > 0),
    due_date TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    principal_minor BIGINT NOT NULL CHECK (principal_minor >= 0),
    interest_minor BIGINT NOT NULL CHECK (interest_minor >= 0),
    fee_minor BIGINT NOT NULL CHECK (fee_minor >= 0),
    penalty_minor BIGINT NOT NULL DEFAULT 0 CHECK (penalty_minor >= 0),
    paid_principal_minor BIGINT NOT NULL DEFAULT 0 CHECK (paid_principal_minor BETWEEN 0 AND principal_minor),
    paid_interest_minor BIGINT NOT NULL DEFAULT 0 CHECK (paid_interest_minor BETWEEN 0 AND interest_minor),
    paid_fee_minor BIGINT NOT NULL DEFAULT 0 CHECK (paid_fee_minor BETWEEN 0 AND fee_minor),
    paid_penalty_minor BIGINT NOT NULL DEFAULT 0 CHECK (paid_penalty_minor BETWEEN 0 AND penalty_minor),
    -- OPEN shows as UPCOMING or DUE by the business date.
    state TEXT NOT NULL CHECK (state IN ('OPEN', 'OVERDUE', 'PAID', 'SETTLED_EARLY')),
    paid_at_micros BIGINT,
    paid_on TEXT,
    updated_at_micros BIGINT NOT NULL,
    UNIQUE (plan_id, seq)
);

CREATE INDEX bills_by_account_due ON bills (account_id, due_date, plan_id, seq);
