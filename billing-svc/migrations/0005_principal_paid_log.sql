-- Every change of a bill's paid principal, dated by the business day it happened on
-- (a repayment, a credit balance applied at a close, a reversal), so that a day close
-- posts each day's penalty on the principal unpaid at the end of that day (SPEC §5.8),
-- whenever the close runs.
CREATE TABLE principal_paid_log (
    bill_id TEXT NOT NULL REFERENCES bills (bill_id),
    account_id TEXT NOT NULL,
    on_date TEXT NOT NULL,
    -- Paid principal added (negative when a reversal takes it back).
    delta_minor BIGINT NOT NULL
);

CREATE INDEX principal_paid_log_by_account ON principal_paid_log (account_id, bill_id, on_date);

-- Principal paid before this log existed counts as paid on every day (the rule the
-- close applied until now).
INSERT INTO principal_paid_log (bill_id, account_id, on_date, delta_minor)
SELECT bill_id, account_id, '0001-01-01', paid_principal_minor FROM bills WHERE paid_principal_minor > 0;
