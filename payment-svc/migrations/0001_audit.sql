-- The operator audit trail. Payments arrive with the repayments issue.
CREATE TABLE operator_audit (
    audit_id {{postgres: BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY | sqlite: INTEGER PRIMARY KEY AUTOINCREMENT}},
    subject TEXT NOT NULL,
    rpc TEXT NOT NULL,
    account_id TEXT,
    at_micros BIGINT NOT NULL
);

CREATE INDEX operator_audit_by_account ON operator_audit (account_id, at_micros);
