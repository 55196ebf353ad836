-- The operator audit trail (PostgreSQL). Payments arrive with the repayments issue.
CREATE TABLE operator_audit (
    audit_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject TEXT NOT NULL,
    rpc TEXT NOT NULL,
    account_id TEXT,
    at_micros BIGINT NOT NULL
);

CREATE INDEX operator_audit_by_account ON operator_audit (account_id, at_micros);
