//! The three simulated providers: one JSON dialect, three base paths, three secrets.

/// One simulated provider, named on the wire by its path prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    BankCard,
    Alipay,
    WechatPay,
}

impl Provider {
    /// Every provider the simulator plays.
    pub const ALL: [Self; 3] = [Self::BankCard, Self::Alipay, Self::WechatPay];

    /// The provider whose base path is `/{segment}`, if any.
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|provider| provider.path_segment() == segment)
    }

    /// The first path segment of the provider's base URL.
    pub fn path_segment(self) -> &'static str {
        match self {
            Self::BankCard => "bank-card",
            Self::Alipay => "alipay",
            Self::WechatPay => "wechat-pay",
        }
    }

    /// The name the ledger stores and `GET /ledger` shows.
    pub fn ledger_name(self) -> &'static str {
        match self {
            Self::BankCard => "bank_card",
            Self::Alipay => "alipay",
            Self::WechatPay => "wechat_pay",
        }
    }

    /// The provider stored under `name`, if any.
    pub fn from_ledger_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|provider| provider.ledger_name() == name)
    }

    /// Whether the provider answers a charge PENDING and reports the outcome by
    /// notification (the wallets), rather than answering it at once (bank card).
    pub fn notifies(self) -> bool {
        match self {
            Self::BankCard => false,
            Self::Alipay | Self::WechatPay => true,
        }
    }

    /// How the provider's own references start, so a reference names its provider.
    pub fn reference_prefix(self) -> &'static str {
        match self {
            Self::BankCard => "bc",
            Self::Alipay => "ali",
            Self::WechatPay => "wx",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for provider in Provider::ALL {
            assert_eq!(
                Provider::from_path_segment(provider.path_segment()),
                Some(provider)
            );
            assert_eq!(
                Provider::from_ledger_name(provider.ledger_name()),
                Some(provider)
            );
        }
        assert_eq!(Provider::from_path_segment("bank_card"), None);
        assert_eq!(Provider::from_path_segment("ledger"), None);
    }

    #[test]
    fn only_wallets_notify() {
        let notifying: Vec<_> = Provider::ALL
            .into_iter()
            .filter(|provider| provider.notifies())
            .collect();
        assert_eq!(notifying, [Provider::Alipay, Provider::WechatPay]);
    }
}
