//! Plans: turning a purchase into a priced schedule, and what a plan is once opened.

use chrono::NaiveDate;
use rust_decimal::Decimal;
use service_kit::money::{Money, MoneyError};

use super::{
    apr::Apr,
    calendar::{DateError, purchase_date},
    product::{Catalog, InstallmentMethod, Product},
    schedule::{Schedule, ScheduleError, ScheduleTotals},
};

/// A purchase to finance, as the caller asked for it (every field already parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRequest {
    pub product_id: String,
    pub term_count: u32,
    pub price: Money,
    pub down_payment: Money,
    /// As sent: empty means today.
    pub purchase_date: String,
}

impl PlanRequest {
    /// What makes two CreatePlan requests "the same request" for idempotency. The
    /// purchase date is taken as sent, so a retry on a later day still matches.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.product_id, self.term_count, self.price, self.down_payment, self.purchase_date
        )
    }
}

/// Why a purchase cannot be financed as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no product {0}")]
    UnknownProduct(String),
    #[error("product {product_id} does not offer {term_count} terms (offered: {offered:?})")]
    TermNotOffered {
        product_id: String,
        term_count: u32,
        offered: Vec<u32>,
    },
    #[error("down_payment {down_payment} is above the price {price}")]
    DownPaymentAbovePrice { price: Money, down_payment: Money },
    #[error("the financed principal {principal} is outside the product's range {min} to {max}")]
    PrincipalOutOfRange {
        principal: Money,
        min: Money,
        max: Money,
    },
    #[error("purchase_date {0}")]
    PurchaseDate(DateError),
    #[error("APR {apr} % is above the cap of {cap} %")]
    AprAboveCap { apr: Decimal, cap: Decimal },
    #[error("cannot build the schedule: {0}")]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// A priced plan, ready to quote or to open.
#[derive(Debug, Clone, PartialEq)]
pub struct PricedPlan {
    pub product_id: String,
    pub method: InstallmentMethod,
    pub term_count: u32,
    pub rate: Decimal,
    pub price: Money,
    pub down_payment: Money,
    /// price − down_payment.
    pub principal: Money,
    pub purchase_date: NaiveDate,
    pub schedule: Schedule,
    pub totals: ScheduleTotals,
    pub apr: Apr,
}

/// Prices `request` against the catalog on business date `today`: the product and
/// term must be offered, the principal within the product's range, the purchase
/// date today or up to five years back, and the APR within the cap.
pub fn price_plan(
    catalog: &Catalog,
    request: &PlanRequest,
    today: NaiveDate,
) -> Result<PricedPlan, PlanError> {
    let product = catalog
        .product(&request.product_id)
        .ok_or_else(|| PlanError::UnknownProduct(request.product_id.clone()))?;
    let rate = offered_rate(product, request.term_count)?;
    let principal = request
        .price
        .checked_sub(request.down_payment)
        .map_err(|_| PlanError::DownPaymentAbovePrice {
            price: request.price,
            down_payment: request.down_payment,
        })?;
    if principal.amount() < product.min_principal.amount()
        || principal.amount() > product.max_principal.amount()
    {
        return Err(PlanError::PrincipalOutOfRange {
            principal,
            min: product.min_principal,
            max: product.max_principal,
        });
    }
    let purchase_date =
        purchase_date(&request.purchase_date, today).map_err(PlanError::PurchaseDate)?;
    let schedule = Schedule::build(
        product.method,
        principal,
        request.term_count,
        rate,
        purchase_date,
    )?;
    let totals = schedule.totals()?;
    let apr = Apr::of(principal.amount(), &schedule);
    if apr.annual_percent > catalog.apr_cap() {
        return Err(PlanError::AprAboveCap {
            apr: apr.annual_percent,
            cap: catalog.apr_cap(),
        });
    }
    Ok(PricedPlan {
        product_id: product.product_id.clone(),
        method: product.method,
        term_count: request.term_count,
        rate,
        price: request.price,
        down_payment: request.down_payment,
        principal,
        purchase_date,
        schedule,
        totals,
        apr,
    })
}

fn offered_rate(product: &Product, term_count: u32) -> Result<Decimal, PlanError> {
    product
        .rate(term_count)
        .ok_or_else(|| PlanError::TermNotOffered {
            product_id: product.product_id.clone(),
            term_count,
            offered: product.terms.keys().copied().collect(),
        })
}

/// A plan's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanStatus {
    Active,
    Settled,
    SettledEarly,
    /// Cancelled by CancelPlan (goods returned).
    Cancelled,
}

impl PlanStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Settled => "SETTLED",
            Self::SettledEarly => "SETTLED_EARLY",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Active,
            Self::Settled,
            Self::SettledEarly,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// An opened plan, as stored. Its totals are not stored: they are the sums of its
/// bills, computed where shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub plan_id: String,
    pub account_id: String,
    pub order_ref: String,
    pub product_id: String,
    pub method: InstallmentMethod,
    pub term_count: u32,
    pub rate: Decimal,
    pub price: Money,
    pub down_payment: Money,
    pub principal: Money,
    pub purchase_date: NaiveDate,
    /// Percent, two decimals.
    pub apr: Decimal,
    /// Percent, two decimals.
    pub effective_rate: Decimal,
    pub status: PlanStatus,
    pub created_at_micros: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    fn request(
        product_id: &str,
        term_count: u32,
        price: &str,
        down: &str,
        date: &str,
    ) -> PlanRequest {
        PlanRequest {
            product_id: product_id.into(),
            term_count,
            price: money(price),
            down_payment: money(down),
            purchase_date: date.into(),
        }
    }

    #[test]
    fn prices_the_mall_fee_example() {
        let today: NaiveDate = "2026-11-29".parse().unwrap();
        let priced = price_plan(
            &Catalog::demo().unwrap(),
            &request("mall-fee", 12, "5999.00", "0", ""),
            today,
        )
        .unwrap();
        assert_eq!(priced.principal, money("5999.00"));
        assert_eq!(priced.purchase_date, today);
        assert_eq!(priced.apr.annual_percent.to_string(), "13.03");
        assert_eq!(priced.totals.fee, money("431.88"));
        assert_eq!(
            priced.schedule.lines()[0].due_date.to_string(),
            "2026-12-29"
        );
    }

    #[test]
    fn refuses_what_cannot_be_financed() {
        let catalog = Catalog::demo().unwrap();
        let today: NaiveDate = "2026-11-29".parse().unwrap();
        let refuse = |request: PlanRequest| price_plan(&catalog, &request, today).unwrap_err();
        assert!(matches!(
            refuse(request("nope", 12, "5999", "0", "")),
            PlanError::UnknownProduct(_)
        ));
        assert!(matches!(
            refuse(request("mall-fee", 24, "5999", "0", "")),
            PlanError::TermNotOffered { .. }
        ));
        assert!(matches!(
            refuse(request("mall-fee", 12, "5999", "6000", "")),
            PlanError::DownPaymentAbovePrice { .. }
        ));
        assert!(matches!(
            refuse(request("mall-fee", 12, "99.99", "0", "")),
            PlanError::PrincipalOutOfRange { .. }
        ));
        assert!(matches!(
            refuse(request("mall-fee", 12, "50000.01", "0", "")),
            PlanError::PrincipalOutOfRange { .. }
        ));
        assert!(matches!(
            refuse(request("mall-fee", 12, "5000", "4950", "")),
            PlanError::PrincipalOutOfRange { .. }
        ));
        assert!(matches!(
            refuse(request("mall-fee", 12, "5999", "0", "2026-11-30")),
            PlanError::PurchaseDate(DateError::Future(_))
        ));
    }

    #[test]
    fn fingerprints_differ_when_requests_differ() {
        let a = request("mall-fee", 12, "5999", "0", "");
        let b = request("mall-fee", 12, "5999", "1", "");
        assert_eq!(
            a.fingerprint(),
            request("mall-fee", 12, "5999.00", "0.00", "").fingerprint()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
