//! Bulk copies of one real account and its plan, for `billpay bench --accounts N`:
//! measuring reads and day close at a million accounts needs the rows in minutes,
//! not the hours a million CreatePlan calls would take. Nothing in the services calls
//! this; the bench says when it seeded this way.

use super::{StorageError, Store};

/// Copies made per statement (and transaction), to bound each one's size.
const COPIES_PER_STATEMENT: u64 = 50_000;

impl Store {
    /// Makes copies `first..first + count` of `template_account_id` and its one plan
    /// `template_plan_id` with the plan's bills, ids `{id}_bulk_{n}`, phone numbers and
    /// customer refs unique per copy. Returns the copied account ids in order.
    pub async fn copy_account_in_bulk(
        &self,
        template_account_id: &str,
        template_plan_id: &str,
        first: u64,
        count: u64,
    ) -> Result<Vec<String>, StorageError> {
        let mut start = first;
        let end = first + count;
        while start < end {
            let stop = (start + COPIES_PER_STATEMENT).min(end);
            self.copy_range(template_account_id, template_plan_id, start, stop)
                .await?;
            start = stop;
        }
        Ok((first..end)
            .map(|n| format!("{template_account_id}_bulk_{n}"))
            .collect())
    }

    async fn copy_range(
        &self,
        template_account_id: &str,
        template_plan_id: &str,
        start: u64,
        stop: u64,
    ) -> Result<(), StorageError> {
        let numbers = "WITH RECURSIVE copies (n) AS (SELECT $1 UNION ALL SELECT n + 1 FROM copies WHERE n + 1 < $2) ";
        let (start, stop) = (
            i64::try_from(start).map_err(|_| StorageError::Corrupt("copy number".into()))?,
            i64::try_from(stop).map_err(|_| StorageError::Corrupt("copy number".into()))?,
        );
        let mut transaction = self.db.begin_write().await?;
        for sql in [
            "INSERT INTO accounts (account_id, customer_ref, display_name, phone, currency_code, credit_limit_minor, \
               principal_unpaid_minor, credit_balance_minor, status, created_at_micros, updated_at_micros) \
             SELECT t.account_id || '_bulk_' || CAST(c.n AS TEXT), t.customer_ref || '_bulk_' || CAST(c.n AS TEXT), \
               t.display_name, t.phone, t.currency_code, t.credit_limit_minor, t.principal_unpaid_minor, \
               t.credit_balance_minor, t.status, t.created_at_micros, t.updated_at_micros \
             FROM copies c CROSS JOIN accounts t WHERE t.account_id = $3",
            "INSERT INTO plans (plan_id, account_id, order_ref, request_fingerprint, product_id, method, term_count, \
               rate, currency_code, price_minor, down_payment_minor, principal_minor, purchase_date, apr, \
               effective_rate, status, created_at_micros, updated_at_micros) \
             SELECT t.plan_id || '_bulk_' || CAST(c.n AS TEXT), t.account_id || '_bulk_' || CAST(c.n AS TEXT), \
               t.order_ref, t.request_fingerprint, t.product_id, t.method, t.term_count, t.rate, t.currency_code, \
               t.price_minor, t.down_payment_minor, t.principal_minor, t.purchase_date, t.apr, t.effective_rate, \
               t.status, t.created_at_micros, t.updated_at_micros \
             FROM copies c CROSS JOIN plans t WHERE t.plan_id = $4 AND t.account_id = $3",
            "INSERT INTO bills (bill_id, plan_id, account_id, seq, due_date, currency_code, principal_minor, \
               interest_minor, fee_minor, penalty_minor, state, updated_at_micros) \
             SELECT t.bill_id || '_bulk_' || CAST(c.n AS TEXT), t.plan_id || '_bulk_' || CAST(c.n AS TEXT), \
               t.account_id || '_bulk_' || CAST(c.n AS TEXT), t.seq, t.due_date, t.currency_code, t.principal_minor, \
               t.interest_minor, t.fee_minor, t.penalty_minor, t.state, t.updated_at_micros \
             FROM copies c CROSS JOIN bills t WHERE t.plan_id = $4 AND t.account_id = $3",
        ] {
            sqlx::query(&format!("{numbers}{sql}"))
                .bind(start)
                .bind(stop)
                .bind(template_account_id)
                .bind(template_plan_id)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }
}
