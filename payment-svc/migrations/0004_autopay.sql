-- Autopay (SPEC §11): mandates, the notices and debit attempts of each due date, and
-- payment-svc's own event stream.
CREATE TABLE mandates (
    mandate_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    -- Idempotency keys are scoped per account (only the customer creates mandates).
    idempotency_key TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    method TEXT NOT NULL CHECK (method IN ('BANK_CARD', 'ALIPAY', 'WECHAT_PAY')),
    instrument_last4 TEXT NOT NULL,
    -- The instrument, sealed (AES-256-GCM) with a key derived from the fingerprint
    -- key, which lives in configuration: the database alone does not give it back.
    instrument_sealed TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    max_amount_minor BIGINT NOT NULL CHECK (max_amount_minor > 0),
    consent_text_version TEXT NOT NULL,
    consent_accepted_at_micros BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ACTIVE', 'REVOKED', 'REPLACED', 'SUSPENDED')),
    status_reason TEXT NOT NULL DEFAULT '',
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL,
    UNIQUE (account_id, idempotency_key)
);

-- One ACTIVE mandate per account, decided by the database.
CREATE UNIQUE INDEX mandates_one_active ON mandates (account_id) WHERE status = 'ACTIVE';
CREATE INDEX mandates_by_status ON mandates (status, mandate_id);

-- The notice of one due date's debit, sent once.
CREATE TABLE autopay_notices (
    mandate_id TEXT NOT NULL REFERENCES mandates (mandate_id),
    due_date TEXT NOT NULL,
    account_id TEXT NOT NULL,
    -- The business date of the run that sent it.
    notice_date TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    PRIMARY KEY (mandate_id, due_date)
);

-- A debit started: recorded, while the mandate is ACTIVE, before any money moves.
-- One per run date and at most three per due date; the claim is the insert.
CREATE TABLE autopay_attempts (
    mandate_id TEXT NOT NULL REFERENCES mandates (mandate_id),
    due_date TEXT NOT NULL,
    attempt BIGINT NOT NULL CHECK (attempt BETWEEN 1 AND 3),
    run_date TEXT NOT NULL,
    account_id TEXT NOT NULL,
    -- autopay:{mandate_id}:{due_date}:{attempt}, the payment's idempotency key.
    idempotency_key TEXT NOT NULL UNIQUE,
    -- Set once the payment's outcome is known: SUCCEEDED, FAILED, or NOT_CHARGED.
    outcome TEXT,
    failure_code TEXT,
    created_at_micros BIGINT NOT NULL,
    PRIMARY KEY (mandate_id, due_date, attempt),
    UNIQUE (mandate_id, due_date, run_date)
);

CREATE TABLE payment_events (
    event_id {{postgres: BIGSERIAL PRIMARY KEY | sqlite: INTEGER PRIMARY KEY AUTOINCREMENT}},
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    -- What makes the event unique per kind (a mandate, an attempt, a skip of a day).
    subject_id TEXT NOT NULL,
    mandate_id TEXT,
    payment_id TEXT,
    amount_minor BIGINT,
    currency_code TEXT,
    due_date TEXT,
    instrument_last4 TEXT,
    reason TEXT,
    attempt BIGINT,
    created_at_micros BIGINT NOT NULL,
    UNIQUE (kind, subject_id)
);

-- The business dates the automatic run has finished.
CREATE TABLE autopay_runs (
    as_of TEXT PRIMARY KEY,
    finished_at_micros BIGINT NOT NULL
);
