-- Accounts and the operator audit trail.
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    customer_ref TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    phone TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    credit_limit_minor BIGINT NOT NULL CHECK (credit_limit_minor >= 0),
    -- Principal of all plans not yet repaid: available credit = limit - this.
    principal_unpaid_minor BIGINT NOT NULL DEFAULT 0 CHECK (principal_unpaid_minor >= 0),
    credit_balance_minor BIGINT NOT NULL DEFAULT 0 CHECK (credit_balance_minor >= 0),
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'DELINQUENT', 'CLOSED')),
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL
);

CREATE TABLE operator_audit (
    audit_id {{postgres: BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY | sqlite: INTEGER PRIMARY KEY AUTOINCREMENT}},
    subject TEXT NOT NULL,
    rpc TEXT NOT NULL,
    account_id TEXT,
    at_micros BIGINT NOT NULL
);

CREATE INDEX operator_audit_by_account ON operator_audit (account_id, at_micros);
