-- The provider simulator's ledger, in the simulator's own database.
-- A charge's row is its idempotency record: the primary key turns a repeated payment id
-- into a no-op however many repeats arrive at once (R2). Declined charges are kept so a
-- repeat answers the same; only SUCCEEDED rows moved money.
CREATE TABLE charges (
    provider TEXT NOT NULL CHECK (provider IN ('bank_card', 'alipay', 'wechat_pay')),
    payment_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    currency_code TEXT NOT NULL,
    instrument_last4 TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('SUCCEEDED', 'DECLINED')),
    decline_code TEXT,
    provider_ref TEXT NOT NULL UNIQUE,
    charged_at_micros BIGINT NOT NULL,
    PRIMARY KEY (provider, payment_id),
    CHECK ((status = 'DECLINED') = (decline_code IS NOT NULL))
);

-- Refunds, idempotent on (provider, refund_id); each one names the charge it returns.
CREATE TABLE refunds (
    provider TEXT NOT NULL,
    refund_id TEXT NOT NULL,
    payment_id TEXT NOT NULL,
    amount_minor BIGINT NOT NULL CHECK (amount_minor > 0),
    refunded_at_micros BIGINT NOT NULL,
    PRIMARY KEY (provider, refund_id),
    FOREIGN KEY (provider, payment_id) REFERENCES charges (provider, payment_id)
);

CREATE INDEX refunds_by_charge ON refunds (provider, payment_id);
