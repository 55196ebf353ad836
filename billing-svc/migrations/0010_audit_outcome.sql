-- Every operator call is audited with its outcome (issue 10): ADMITTED, REFUSED or
-- NOT_FOUND, and the gRPC code it ended with. Rows from before say ADMITTED/OK, as
-- only admitted reads were written then.
ALTER TABLE operator_audit ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ADMITTED';
ALTER TABLE operator_audit ADD COLUMN code TEXT NOT NULL DEFAULT 'OK';
CREATE INDEX operator_audit_by_subject ON operator_audit (subject, at_micros);
CREATE INDEX operator_audit_by_time ON operator_audit (at_micros);
