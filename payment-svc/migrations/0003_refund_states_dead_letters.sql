-- A refund is its own state machine, driven like a payment: REQUESTED (billing not yet
-- asked) → SENT (billing reversed; the provider is asked) → REFUNDED, or FAILED
-- (billing refused: nothing moved), or REINSTATING (the provider refused after billing
-- reversed: billing re-applies the money) → FAILED.
ALTER TABLE refunds ADD COLUMN status TEXT NOT NULL DEFAULT 'REQUESTED'
    CHECK (status IN ('REQUESTED', 'SENT', 'REFUNDED', 'REINSTATING', 'FAILED'));
ALTER TABLE refunds ADD COLUMN failure_code TEXT;
ALTER TABLE refunds ADD COLUMN failure_message TEXT;
ALTER TABLE refunds ADD COLUMN updated_at_micros BIGINT NOT NULL DEFAULT 0;
UPDATE refunds SET status = 'REFUNDED', updated_at_micros = created_at_micros
    WHERE payment_id IN (SELECT payment_id FROM payments WHERE status = 'REFUNDED');
CREATE INDEX refunds_unfinished ON refunds (status, updated_at_micros);

-- An outbox row billing refused for good, or that ran out of attempts, is a dead
-- letter: no longer retried on its own, listed for operators, retried by an admin.
ALTER TABLE outbox ADD COLUMN dead_at_micros BIGINT;
CREATE INDEX outbox_dead ON outbox (dead_at_micros);
