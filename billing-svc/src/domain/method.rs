//! The installment methods (SPEC §5.3): a leaf that products, schedules and the APR
//! solver all name, so none of them needs another to say which method it is.

use serde::Deserialize;

/// How a plan's bills are computed (SPEC §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstallmentMethod {
    /// 等额本息.
    EqualInstallment,
    /// 等额本金.
    EqualPrincipal,
    /// 分期手续费.
    FlatFee,
    /// 免息.
    InterestFree,
}

impl InstallmentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EqualInstallment => "EQUAL_INSTALLMENT",
            Self::EqualPrincipal => "EQUAL_PRINCIPAL",
            Self::FlatFee => "FLAT_FEE",
            Self::InterestFree => "INTEREST_FREE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::EqualInstallment,
            Self::EqualPrincipal,
            Self::FlatFee,
            Self::InterestFree,
        ]
        .into_iter()
        .find(|method| method.as_str() == text)
    }
}
