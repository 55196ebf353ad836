//! The simulator's behaviour table (PROVIDER_PROTOCOL.md): what a charge does, chosen
//! by the instrument's last four characters. Pure: no IO, no clock.

use super::provider::Provider;

/// Why a provider declined a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineCode {
    InsufficientFunds,
    ExpiredInstrument,
}

impl DeclineCode {
    /// The code as the protocol spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::ExpiredInstrument => "EXPIRED_INSTRUMENT",
        }
    }

    /// The code spelled `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::InsufficientFunds, Self::ExpiredInstrument]
            .into_iter()
            .find(|code| code.as_str() == text)
    }
}

/// The provider's final word on a charge: money captured, or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Declined(DeclineCode),
}

impl Outcome {
    /// The status as the protocol and the ledger spell it.
    pub fn status(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Declined(_) => "DECLINED",
        }
    }

    pub fn decline_code(self) -> Option<DeclineCode> {
        match self {
            Self::Succeeded => None,
            Self::Declined(code) => Some(code),
        }
    }

    /// The outcome stored as `status` and `decline_code`; `None` when the pair is not
    /// one `status` and `decline_code` write.
    pub fn from_stored(status: &str, decline_code: Option<&str>) -> Option<Self> {
        match (status, decline_code) {
            ("SUCCEEDED", None) => Some(Self::Succeeded),
            ("DECLINED", Some(code)) => DeclineCode::parse(code).map(Self::Declined),
            _ => None,
        }
    }
}

/// A state a wallet reports in a notification, each with its place in the order of
/// states (`sequence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// Accepted, outcome to follow: what the charge's answer said.
    Pending,
    Final(Outcome),
}

impl Reported {
    pub fn status(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Final(outcome) => outcome.status(),
        }
    }

    pub fn decline_code(self) -> Option<DeclineCode> {
        match self {
            Self::Pending => None,
            Self::Final(outcome) => outcome.decline_code(),
        }
    }

    /// PENDING is the first state a wallet reports (in the charge's answer), the
    /// outcome the second, so a receiver can drop anything older than what it holds.
    pub fn sequence(self) -> u32 {
        match self {
            Self::Pending => 1,
            Self::Final(_) => 2,
        }
    }
}

/// What the simulator does with a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Captures; bank card answers SUCCEEDED, wallets answer PENDING and notify.
    Succeed,
    /// Captures nothing; the outcome is a decline with this code.
    Decline(DeclineCode),
    /// Captures and records, then holds the answer back as if it were lost.
    LoseReply,
    /// Answers 500 and records nothing, every time.
    FailServer,
    /// Succeeds; a wallet notifies the outcome twice, then a stale PENDING.
    NotifyTwiceThenStale,
}

impl Behaviour {
    /// The behaviour for a charge on `instrument`, by its last four characters.
    pub fn of(instrument: &str) -> Self {
        match last_four(instrument) {
            "0002" => Self::Decline(DeclineCode::InsufficientFunds),
            "0069" => Self::Decline(DeclineCode::ExpiredInstrument),
            "0119" => Self::LoseReply,
            "0341" => Self::FailServer,
            "0777" => Self::NotifyTwiceThenStale,
            _ => Self::Succeed,
        }
    }

    /// The outcome to record, or `None` when nothing is recorded at all.
    pub fn outcome(self) -> Option<Outcome> {
        match self {
            Self::Succeed | Self::LoseReply | Self::NotifyTwiceThenStale => {
                Some(Outcome::Succeeded)
            }
            Self::Decline(code) => Some(Outcome::Declined(code)),
            Self::FailServer => None,
        }
    }

    /// Whether the answer to a newly recorded charge is held back.
    pub fn holds_reply(self) -> bool {
        self == Self::LoseReply
    }

    /// The notifications `provider` sends, in order, for a charge it just recorded
    /// with `outcome`. A lost reply is only the HTTP answer: the wallet still notifies.
    pub fn notifications(self, provider: Provider, outcome: Outcome) -> Vec<Reported> {
        if !provider.notifies() {
            return Vec::new();
        }
        match self {
            Self::NotifyTwiceThenStale => vec![
                Reported::Final(outcome),
                Reported::Final(outcome),
                Reported::Pending,
            ],
            Self::Succeed | Self::Decline(_) | Self::LoseReply | Self::FailServer => {
                vec![Reported::Final(outcome)]
            }
        }
    }
}

/// The last four characters of `instrument` (all of it when shorter): the only part
/// of an instrument the simulator keeps or logs.
pub fn last_four(instrument: &str) -> &str {
    instrument
        .char_indices()
        .rev()
        .nth(3)
        .and_then(|(start, _)| instrument.get(start..))
        .unwrap_or(instrument)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaviour_follows_the_last_four_characters() {
        let table = [
            ("tok_4242", Behaviour::Succeed),
            (
                "tok_0002",
                Behaviour::Decline(DeclineCode::InsufficientFunds),
            ),
            (
                "tok_0069",
                Behaviour::Decline(DeclineCode::ExpiredInstrument),
            ),
            ("tok_0119", Behaviour::LoseReply),
            ("tok_0341", Behaviour::FailServer),
            ("tok_0777", Behaviour::NotifyTwiceThenStale),
            ("0002", Behaviour::Decline(DeclineCode::InsufficientFunds)),
            // Only the end counts: these hold a special code elsewhere.
            ("tok_00020", Behaviour::Succeed),
            ("0341_tok", Behaviour::Succeed),
            ("002", Behaviour::Succeed),
            ("", Behaviour::Succeed),
        ];
        for (instrument, expected) in table {
            assert_eq!(Behaviour::of(instrument), expected, "{instrument:?}");
        }
    }

    #[test]
    fn last_four_counts_characters_not_bytes() {
        assert_eq!(last_four("tok_4242"), "4242");
        assert_eq!(last_four("卡号0119"), "0119");
        assert_eq!(last_four("号卡号卡号"), "卡号卡号");
        assert_eq!(last_four("42"), "42");
    }

    #[test]
    fn outcomes_and_what_is_recorded() {
        let table = [
            (Behaviour::Succeed, Some(Outcome::Succeeded), false),
            (
                Behaviour::Decline(DeclineCode::ExpiredInstrument),
                Some(Outcome::Declined(DeclineCode::ExpiredInstrument)),
                false,
            ),
            (Behaviour::LoseReply, Some(Outcome::Succeeded), true),
            (Behaviour::FailServer, None, false),
            (
                Behaviour::NotifyTwiceThenStale,
                Some(Outcome::Succeeded),
                false,
            ),
        ];
        for (behaviour, outcome, holds) in table {
            assert_eq!(behaviour.outcome(), outcome, "{behaviour:?}");
            assert_eq!(behaviour.holds_reply(), holds, "{behaviour:?}");
        }
    }

    #[test]
    fn wallets_notify_and_bank_card_does_not() {
        let success = Reported::Final(Outcome::Succeeded);
        let declined = Outcome::Declined(DeclineCode::InsufficientFunds);
        let table = [
            (
                Provider::BankCard,
                Behaviour::Succeed,
                Outcome::Succeeded,
                vec![],
            ),
            (
                Provider::BankCard,
                Behaviour::NotifyTwiceThenStale,
                Outcome::Succeeded,
                vec![],
            ),
            (
                Provider::Alipay,
                Behaviour::Succeed,
                Outcome::Succeeded,
                vec![success],
            ),
            (
                Provider::WechatPay,
                Behaviour::LoseReply,
                Outcome::Succeeded,
                vec![success],
            ),
            (
                Provider::Alipay,
                Behaviour::Decline(DeclineCode::InsufficientFunds),
                declined,
                vec![Reported::Final(declined)],
            ),
            (
                Provider::WechatPay,
                Behaviour::NotifyTwiceThenStale,
                Outcome::Succeeded,
                vec![success, success, Reported::Pending],
            ),
        ];
        for (provider, behaviour, outcome, expected) in table {
            assert_eq!(
                behaviour.notifications(provider, outcome),
                expected,
                "{provider:?} {behaviour:?}"
            );
        }
    }

    #[test]
    fn the_stale_notification_is_older_than_the_outcome() {
        let outcome = Reported::Final(Outcome::Succeeded);
        assert_eq!((Reported::Pending.sequence(), outcome.sequence()), (1, 2));
        assert_eq!(Reported::Pending.status(), "PENDING");
        assert_eq!(Reported::Pending.decline_code(), None);
    }

    #[test]
    fn stored_outcomes_round_trip() {
        for outcome in [
            Outcome::Succeeded,
            Outcome::Declined(DeclineCode::InsufficientFunds),
            Outcome::Declined(DeclineCode::ExpiredInstrument),
        ] {
            let code = outcome.decline_code().map(DeclineCode::as_str);
            assert_eq!(Outcome::from_stored(outcome.status(), code), Some(outcome));
        }
        assert_eq!(
            Outcome::from_stored("SUCCEEDED", Some("INSUFFICIENT_FUNDS")),
            None
        );
        assert_eq!(Outcome::from_stored("DECLINED", None), None);
        assert_eq!(Outcome::from_stored("PENDING", None), None);
    }
}
