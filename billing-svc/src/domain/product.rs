//! Installment products and the catalog of them, loaded once at start-up.
//!
//! A [`Catalog`] that exists has been checked whole: every product is well-formed and
//! every (product, term) has an APR within the cap at both ends of its principal range.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use rust_decimal::Decimal;
use serde::Deserialize;
use service_kit::money::Money;

pub use super::method::InstallmentMethod;
use super::{
    apr::Apr,
    schedule::{Schedule, TERM_COUNT_MAX},
};

/// The demo product set, built in.
const DEMO_CATALOG: &str = include_str!("../../products.toml");

/// What an early payoff of a FLAT_FEE plan owes in fees (SPEC §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrepayFee {
    /// The current period's fee only.
    Current,
    /// Every remaining fee.
    AllRemaining,
}

/// One product on offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub product_id: String,
    pub name: String,
    pub method: InstallmentMethod,
    /// Offered term counts and each one's rate per period.
    pub terms: BTreeMap<u32, Decimal>,
    pub grace_days: u32,
    pub penalty_daily_rate: Decimal,
    pub min_principal: Money,
    pub max_principal: Money,
    pub prepay_fee: PrepayFee,
}

impl Product {
    /// The rate for `term_count`, if that term is offered.
    pub fn rate(&self, term_count: u32) -> Option<Decimal> {
        self.terms.get(&term_count).copied()
    }
}

/// Every product, and the APR cap they are held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    products: Vec<Product>,
    apr_cap: Decimal,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("products file is not valid TOML of the expected shape: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("product {product_id}: {problem}")]
    Product { product_id: String, problem: String },
    #[error("product {product_id}, {term_count} terms: APR {apr} % is above the cap of {cap} %")]
    AprAboveCap {
        product_id: String,
        term_count: u32,
        apr: Decimal,
        cap: Decimal,
    },
    #[error("the catalog offers no products")]
    Empty,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default = "default_apr_cap")]
    apr_cap: Decimal,
    products: Vec<ProductFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductFile {
    product_id: String,
    name: String,
    method: InstallmentMethod,
    terms: BTreeMap<String, Decimal>,
    #[serde(default = "default_grace_days")]
    grace_days: u32,
    #[serde(default = "default_penalty_daily_rate")]
    penalty_daily_rate: Decimal,
    #[serde(default = "default_min_principal")]
    min_principal: String,
    #[serde(default = "default_max_principal")]
    max_principal: String,
    #[serde(default = "default_prepay_fee")]
    prepay_fee: PrepayFee,
}

fn default_apr_cap() -> Decimal {
    Decimal::new(2400, 2)
}
fn default_grace_days() -> u32 {
    3
}
fn default_penalty_daily_rate() -> Decimal {
    Decimal::new(5, 4)
}
fn default_min_principal() -> String {
    "100.00".into()
}
fn default_max_principal() -> String {
    "50000.00".into()
}
fn default_prepay_fee() -> PrepayFee {
    PrepayFee::Current
}

impl Catalog {
    /// The built-in demo set (SPEC §5.2).
    pub fn demo() -> Result<Self, CatalogError> {
        Self::from_toml(DEMO_CATALOG)
    }

    /// Parses and checks a products file.
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let file: CatalogFile = toml::from_str(text)?;
        if file.products.is_empty() {
            return Err(CatalogError::Empty);
        }
        let products = file
            .products
            .into_iter()
            .map(product_from_file)
            .collect::<Result<Vec<_>, _>>()?;
        for (index, product) in products.iter().enumerate() {
            if products[..index]
                .iter()
                .any(|p| p.product_id == product.product_id)
            {
                return Err(problem(&product.product_id, "is listed twice"));
            }
            check_apr_cap(product, file.apr_cap)?;
        }
        Ok(Self {
            products,
            apr_cap: file.apr_cap,
        })
    }

    pub fn products(&self) -> &[Product] {
        &self.products
    }

    pub fn product(&self, product_id: &str) -> Option<&Product> {
        self.products
            .iter()
            .find(|product| product.product_id == product_id)
    }

    /// The highest APR (percent) a plan may have.
    pub fn apr_cap(&self) -> Decimal {
        self.apr_cap
    }
}

fn problem(product_id: &str, problem: &str) -> CatalogError {
    CatalogError::Product {
        product_id: product_id.to_owned(),
        problem: problem.to_owned(),
    }
}

fn product_from_file(file: ProductFile) -> Result<Product, CatalogError> {
    let id = file.product_id.as_str();
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(problem(id, "product_id must be letters, digits, - and _"));
    }
    let money = |field: &str, text: &str| {
        Money::parse("CNY", text).map_err(|error| problem(id, &format!("{field}: {error}")))
    };
    let min_principal = money("min_principal", &file.min_principal)?;
    let max_principal = money("max_principal", &file.max_principal)?;
    if min_principal.is_zero() || min_principal.amount() > max_principal.amount() {
        return Err(problem(id, "needs 0 < min_principal <= max_principal"));
    }
    let mut terms = BTreeMap::new();
    for (term, rate) in file.terms {
        let term_count: u32 = term
            .parse()
            .ok()
            .filter(|n| (1..=TERM_COUNT_MAX).contains(n))
            .ok_or_else(|| {
                problem(
                    id,
                    &format!("term {term:?} must be a whole number from 1 to {TERM_COUNT_MAX}"),
                )
            })?;
        if rate.is_sign_negative() && !rate.is_zero() {
            return Err(problem(
                id,
                &format!("term {term_count}: the rate must not be negative"),
            ));
        }
        if file.method == InstallmentMethod::InterestFree && !rate.is_zero() {
            return Err(problem(id, "an INTEREST_FREE product's rates must be 0"));
        }
        terms.insert(term_count, rate);
    }
    if terms.is_empty() {
        return Err(problem(id, "offers no terms"));
    }
    if file.penalty_daily_rate.is_sign_negative() {
        return Err(problem(id, "penalty_daily_rate must not be negative"));
    }
    Ok(Product {
        product_id: file.product_id,
        name: file.name,
        method: file.method,
        terms,
        grace_days: file.grace_days,
        penalty_daily_rate: file.penalty_daily_rate,
        min_principal,
        max_principal,
        prepay_fee: file.prepay_fee,
    })
}

/// Every offered term must stay within the cap for the smallest and the largest
/// principal (rounding moves the APR slightly with the principal).
fn check_apr_cap(product: &Product, cap: Decimal) -> Result<(), CatalogError> {
    let any_date = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default();
    for (&term_count, &rate) in &product.terms {
        for principal in [product.min_principal, product.max_principal] {
            let schedule = Schedule::build(product.method, principal, term_count, rate, any_date)
                .map_err(|error| {
                problem(&product.product_id, &format!("term {term_count}: {error}"))
            })?;
            let apr = Apr::of(principal.amount(), &schedule).annual_percent;
            if apr > cap {
                return Err(CatalogError::AprAboveCap {
                    product_id: product.product_id.clone(),
                    term_count,
                    apr,
                    cap,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_catalog_loads() {
        let catalog = Catalog::demo().unwrap();
        let ids: Vec<_> = catalog
            .products()
            .iter()
            .map(|p| p.product_id.as_str())
            .collect();
        assert_eq!(ids, ["mall-fee", "mall-free", "cash-loan", "cash-loan-ep"]);
        let mall_fee = catalog.product("mall-fee").unwrap();
        assert_eq!(mall_fee.rate(12), Some("0.006".parse().unwrap()));
        assert_eq!(mall_fee.rate(24), None);
        assert_eq!(mall_fee.grace_days, 3);
        assert_eq!(mall_fee.penalty_daily_rate, "0.0005".parse().unwrap());
        assert_eq!(mall_fee.min_principal.to_string(), "100.00");
        assert_eq!(catalog.apr_cap(), "24.00".parse().unwrap());
    }

    #[test]
    fn a_term_above_the_cap_stops_start_up() {
        let text = r#"
            apr_cap = "24.00"
            [[products]]
            product_id = "greedy"
            name = "x"
            method = "FLAT_FEE"
            terms = { "12" = "0.02" }
        "#;
        let error = Catalog::from_toml(text).unwrap_err();
        assert!(
            matches!(error, CatalogError::AprAboveCap { term_count: 12, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("greedy"), "{error}");
    }

    #[test]
    fn malformed_products_are_refused() {
        let cases = [
            r#"products = []"#,
            r#"[[products]]
               product_id = "a"
               name = "x"
               method = "NOPE"
               terms = { "3" = "0" }"#,
            r#"[[products]]
               product_id = "a"
               name = "x"
               method = "INTEREST_FREE"
               terms = { "3" = "0.01" }"#,
            r#"[[products]]
               product_id = "a"
               name = "x"
               method = "FLAT_FEE"
               terms = { "0" = "0.01" }"#,
            r#"[[products]]
               product_id = "a"
               name = "x"
               method = "FLAT_FEE"
               terms = { "3" = "0.001" }
               min_principal = "500.00"
               max_principal = "100.00""#,
        ];
        for text in cases {
            assert!(Catalog::from_toml(text).is_err(), "{text}");
        }
    }
}
