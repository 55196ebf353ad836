//! The business date billing-svc works on: the wall clock read in the business time
//! zone — or, for tests only, a date the test harness sets and moves. The fixed date
//! cannot be chosen by a flag or an environment variable: only code that builds a
//! [`crate::config::Config`] can set it (the integration harness does, for the
//! randomized model test that must run months of business days in seconds).

use std::sync::{
    Arc,
    atomic::{AtomicI32, Ordering},
};

use chrono::{Datelike as _, FixedOffset, NaiveDate};
use service_kit::clock::now_micros;

use crate::domain::calendar::business_date;

/// Where "today" comes from.
#[derive(Debug, Clone, Default)]
pub struct BusinessClock {
    /// Days from the common era of a date set by a test; None reads the wall clock.
    fixed: Option<Arc<AtomicI32>>,
}

impl BusinessClock {
    /// A clock standing on `today` until [`BusinessClock::set`] moves it. Tests only.
    pub fn fixed(today: NaiveDate) -> Self {
        Self {
            fixed: Some(Arc::new(AtomicI32::new(today.num_days_from_ce()))),
        }
    }

    /// Moves a fixed clock to `today` (a wall clock ignores this).
    pub fn set(&self, today: NaiveDate) {
        if let Some(fixed) = &self.fixed {
            fixed.store(today.num_days_from_ce(), Ordering::SeqCst);
        }
    }

    /// Today in the business time zone `offset`.
    pub fn today(&self, offset: FixedOffset) -> NaiveDate {
        self.fixed
            .as_ref()
            .and_then(|fixed| NaiveDate::from_num_days_from_ce_opt(fixed.load(Ordering::SeqCst)))
            .unwrap_or_else(|| business_date(now_micros(), offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_stands_where_it_is_set() {
        let offset = crate::config::shanghai();
        let clock = BusinessClock::fixed("2028-02-29".parse().unwrap());
        let copy = clock.clone();
        assert_eq!(
            copy.today(offset),
            "2028-02-29".parse::<NaiveDate>().unwrap()
        );
        clock.set("2028-03-01".parse().unwrap());
        assert_eq!(
            copy.today(offset),
            "2028-03-01".parse::<NaiveDate>().unwrap(),
            "clones share the date"
        );
        let wall = BusinessClock::default();
        wall.set("2000-01-01".parse().unwrap());
        assert_eq!(wall.today(offset), business_date(now_micros(), offset));
    }
}
