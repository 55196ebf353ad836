-- A day close as shareable work: a run closes one date; the accounts it has to visit
-- are rows, claimed in batches, so that replicas closing the same date share them and
-- each account is closed once per run (closed_at_micros is set in the account's own
-- close transaction, only while it is NULL).
CREATE TABLE day_close_runs (
    run_id {{postgres: BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY | sqlite: INTEGER PRIMARY KEY AUTOINCREMENT}},
    as_of TEXT NOT NULL,
    started_at_micros BIGINT NOT NULL,
    -- Accounts listed, set with the list: progress is this less the unclosed rows.
    accounts_to_close BIGINT NOT NULL DEFAULT 0,
    finished_at_micros BIGINT,
    -- The run's summary, summed from its work rows when it finishes.
    bills_overdue BIGINT,
    penalties_minor BIGINT,
    credit_applied_minor BIGINT
);

-- At most one unfinished run per date: a replica joins it instead of starting another.
CREATE UNIQUE INDEX day_close_runs_unfinished ON day_close_runs (as_of) WHERE finished_at_micros IS NULL;

CREATE TABLE day_close_work (
    run_id BIGINT NOT NULL REFERENCES day_close_runs (run_id),
    account_id TEXT NOT NULL,
    -- The replica holding the account's batch, until claim_expires_micros; after
    -- that (a replica died) any replica may claim it again.
    claimed_by TEXT,
    claim_expires_micros BIGINT,
    closed_by TEXT,
    closed_at_micros BIGINT,
    -- What the account's close did, for the run's summary.
    bills_overdue BIGINT NOT NULL DEFAULT 0,
    penalties_minor BIGINT NOT NULL DEFAULT 0,
    credit_applied_minor BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, account_id)
);

-- Claims walk the accounts still to close in order; closed ones leave the index.
CREATE INDEX day_close_work_open ON day_close_work (run_id, account_id) WHERE closed_at_micros IS NULL;
