-- Credit limit changes and plan cancellation (PostgreSQL).
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
ALTER TABLE plans DROP CONSTRAINT plans_status_check;
ALTER TABLE plans ADD CONSTRAINT plans_status_check
    CHECK (status IN ('ACTIVE', 'SETTLED', 'SETTLED_EARLY', 'CANCELLED'));
ALTER TABLE bills DROP CONSTRAINT bills_state_check;
ALTER TABLE bills ADD CONSTRAINT bills_state_check
    CHECK (state IN ('OPEN', 'OVERDUE', 'PAID', 'SETTLED_EARLY', 'CANCELLED'));
