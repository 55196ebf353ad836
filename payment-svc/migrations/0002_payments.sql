-- Payments, the outbox to billing-svc, and refunds.
CREATE TABLE payments (
    payment_id TEXT PRIMARY KEY,
    -- Idempotency keys are scoped per caller (the token's subject).
    caller TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_fingerprint TEXT NOT NULL,
    account_id TEXT NOT NULL,
    -- The repayment target as protobuf bytes, base64: forwarded to billing as sent.
    target TEXT NOT NULL,
    currency_code TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    method TEXT NOT NULL CHECK (method IN ('BANK_CARD', 'ALIPAY', 'WECHAT_PAY')),
    -- The instrument itself is never stored: its last four characters only.
    instrument_last4 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('PROCESSING', 'SUCCEEDED', 'FAILED', 'REFUNDED')),
    provider_ref TEXT,
    failure_code TEXT,
    failure_message TEXT,
    applied BIGINT NOT NULL DEFAULT 0 CHECK (applied IN (0, 1)),
    created_at_micros BIGINT NOT NULL,
    updated_at_micros BIGINT NOT NULL,
    UNIQUE (caller, idempotency_key)
);

CREATE INDEX payments_by_account ON payments (account_id, payment_id);
CREATE INDEX payments_by_status ON payments (status, updated_at_micros);

CREATE TABLE outbox (
    payment_id TEXT NOT NULL REFERENCES payments (payment_id),
    kind TEXT NOT NULL CHECK (kind IN ('APPLY', 'REVERSE')),
    account_id TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_micros BIGINT NOT NULL,
    delivered_at_micros BIGINT,
    last_error TEXT,
    created_at_micros BIGINT NOT NULL,
    PRIMARY KEY (payment_id, kind)
);

CREATE INDEX outbox_due ON outbox (delivered_at_micros, next_attempt_at_micros);

CREATE TABLE refunds (
    refund_id TEXT PRIMARY KEY,
    payment_id TEXT NOT NULL UNIQUE REFERENCES payments (payment_id),
    account_id TEXT NOT NULL,
    caller TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at_micros BIGINT NOT NULL,
    UNIQUE (caller, idempotency_key)
);
