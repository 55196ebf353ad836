-- billpay: foreign_keys off
-- Credit limit changes and plan cancellation (SQLite). The directive above makes the
-- runner turn foreign keys off around this migration (and check them before it
-- commits): SQLite cannot change a CHECK constraint, so plans and bills are rebuilt
-- the way SQLite documents (create, copy, drop, rename), which a table other tables
-- reference cannot survive with foreign keys on.
-- Credit limits (SPEC §5.1.1): the permanent limit stays in accounts.credit_limit_minor;
-- a temporary limit in force sits beside it until the close of its until date.
ALTER TABLE accounts ADD COLUMN temporary_limit_minor BIGINT CHECK (temporary_limit_minor >= 0);
ALTER TABLE accounts ADD COLUMN temporary_limit_until TEXT;
-- The limit CreateAccount was called with, so a retry of it is still recognised after
-- the limit has changed.
ALTER TABLE accounts ADD COLUMN opening_credit_limit_minor BIGINT;
UPDATE accounts SET opening_credit_limit_minor = credit_limit_minor;
CREATE INDEX accounts_temporary_limit_until ON accounts (temporary_limit_until);

-- Every change of a credit limit, and every lapse of a temporary one. UpdateCreditLimit
-- is idempotent on (account_id, request_id); a lapse has no request_id.
CREATE TABLE credit_limit_changes (
    change_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    request_id TEXT,
    -- The request as sent, to tell a retry from a different request.
    request_fingerprint TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('PERMANENT', 'TEMPORARY', 'TEMPORARY_LAPSED')),
    currency_code TEXT NOT NULL,
    previous_limit_minor BIGINT NOT NULL CHECK (previous_limit_minor >= 0),
    new_limit_minor BIGINT NOT NULL CHECK (new_limit_minor >= 0),
    permanent_limit_minor BIGINT NOT NULL CHECK (permanent_limit_minor >= 0),
    until_date TEXT,
    reason TEXT NOT NULL,
    business_date TEXT NOT NULL,
    changed_at_micros BIGINT NOT NULL,
    UNIQUE (account_id, request_id)
);

CREATE INDEX credit_limit_changes_by_account ON credit_limit_changes (account_id, change_id);

-- One row per cancelled plan (SPEC §5.4): the request that cancelled it and its answer,
-- so a retry gets the same answer and another request is refused.
CREATE TABLE plan_cancellations (
    plan_id TEXT PRIMARY KEY REFERENCES plans (plan_id),
    account_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    released_principal_minor BIGINT NOT NULL CHECK (released_principal_minor >= 0),
    refunded_minor BIGINT NOT NULL CHECK (refunded_minor >= 0),
    business_date TEXT NOT NULL,
    cancelled_at_micros BIGINT NOT NULL
);

-- CREDIT_LIMIT_CHANGED events say the limit before, the kind of change and until.
ALTER TABLE events ADD COLUMN previous_amount_minor BIGINT;
ALTER TABLE events ADD COLUMN limit_change_kind TEXT;
ALTER TABLE events ADD COLUMN until_date TEXT;

-- Plans and bills can be CANCELLED.
CREATE TABLE plans_new (
    plan_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    order_ref TEXT NOT NULL,
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
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'SETTLED', 'SETTLED_EARLY', 'CANCELLED')),
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL,
    UNIQUE (account_id, order_ref)
);

INSERT INTO plans_new (plan_id, account_id, order_ref, request_fingerprint, product_id, method, term_count,
    rate, currency_code, price_minor, down_payment_minor, principal_minor, purchase_date, apr, effective_rate,
    status, created_at_micros, updated_at_micros)
SELECT plan_id, account_id, order_ref, request_fingerprint, product_id, method, term_count,
    rate, currency_code, price_minor, down_payment_minor, principal_minor, purchase_date, apr, effective_rate,
    status, created_at_micros, updated_at_micros FROM plans;

DROP TABLE plans;

ALTER TABLE plans_new RENAME TO plans;

CREATE INDEX plans_by_account ON plans (account_id, plan_id);

CREATE TABLE bills_new (
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
    state TEXT NOT NULL CHECK (state IN ('OPEN', 'OVERDUE', 'PAID', 'SETTLED_EARLY', 'CANCELLED')),
    paid_at_micros BIGINT,
    paid_on TEXT,
    updated_at_micros BIGINT NOT NULL,
    penalty_through TEXT,
    UNIQUE (plan_id, seq)
);

INSERT INTO bills_new (bill_id, plan_id, account_id, seq, due_date, currency_code, principal_minor,
    interest_minor, fee_minor, penalty_minor, paid_principal_minor, paid_interest_minor, paid_fee_minor,
    paid_penalty_minor, state, paid_at_micros, paid_on, updated_at_micros, penalty_through)
SELECT bill_id, plan_id, account_id, seq, due_date, currency_code, principal_minor,
    interest_minor, fee_minor, penalty_minor, paid_principal_minor, paid_interest_minor, paid_fee_minor,
    paid_penalty_minor, state, paid_at_micros, paid_on, updated_at_micros, penalty_through FROM bills;

DROP TABLE bills;

ALTER TABLE bills_new RENAME TO bills;

CREATE INDEX bills_by_account_due ON bills (account_id, due_date, plan_id, seq);

CREATE INDEX bills_unpaid_by_due ON bills (state, due_date);
