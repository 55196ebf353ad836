-- Day close and the event stream.
-- The date each bill's penalty has been posted through (NULL: none posted yet).
ALTER TABLE bills ADD COLUMN penalty_through TEXT;

CREATE INDEX bills_unpaid_by_due ON bills (state, due_date);

-- One row per business date closed (manually or automatically).
CREATE TABLE day_closes (
    as_of TEXT PRIMARY KEY,
    closed_at_micros BIGINT NOT NULL
);

-- State changes worth telling a customer, written in the same transaction as the
-- change. One event per kind and subject (bill, plan or payment), so reminders and
-- replays never repeat.
CREATE TABLE events (
    event_id {{postgres: BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY | sqlite: INTEGER PRIMARY KEY AUTOINCREMENT}},
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    plan_id TEXT,
    bill_id TEXT,
    payment_id TEXT,
    amount_minor BIGINT,
    currency_code TEXT,
    due_date TEXT,
    created_at_micros BIGINT NOT NULL,
    UNIQUE (kind, subject_id)
);
