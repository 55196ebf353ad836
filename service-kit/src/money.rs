//! Exact money: a currency and a `Decimal` amount with exactly two decimals.
//!
//! Money enters the system only through [`Money::parse`] (the wire's decimal strings)
//! or [`Money::from_minor`] (storage's integer minor units), so every `Money` value
//! holds a valid, non-negative amount in an accepted currency.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

/// The most integer digits an amount may have on the wire (`^[0-9]{1,13}(\.[0-9]{1,2})?$`).
const INTEGER_DIGITS_MAX: usize = 13;
/// The most decimals an amount may have on the wire.
const FRACTION_DIGITS_MAX: usize = 2;
/// The largest amount in minor units: 13 nines, then two.
const MINOR_MAX: u64 = 10_u64.pow((INTEGER_DIGITS_MAX + FRACTION_DIGITS_MAX) as u32) - 1;

/// An accepted currency. Only CNY today; another one arrives as a new variant and a
/// configuration switch, never as a free-form string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Currency {
    Cny,
}

impl Currency {
    /// Parses an ISO 4217 code, exactly as written (upper case).
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        match code {
            "CNY" => Ok(Self::Cny),
            _ => Err(MoneyError::UnsupportedCurrency),
        }
    }

    /// The ISO 4217 code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Cny => "CNY",
        }
    }
}

/// Why a wire amount or currency was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency must be CNY")]
    UnsupportedCurrency,
    #[error("amount is empty")]
    Empty,
    #[error(
        "amount must be a plain decimal like \"1066.19\": digits, at most one '.', no sign, exponent or spaces"
    )]
    Malformed,
    #[error("amount has more than 2 decimals")]
    TooManyDecimals,
    #[error("amount has more than 13 integer digits")]
    TooLarge,
    #[error("the result does not fit the amount range")]
    Overflow,
    #[error("the result would be negative")]
    Negative,
    #[error("amounts in different currencies")]
    CurrencyMismatch,
}

/// A non-negative amount of money with exactly two decimals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    currency: Currency,
    amount: Decimal,
}

impl Money {
    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Self {
        Self {
            currency,
            amount: Decimal::new(0, 2),
        }
    }

    /// Parses the wire form: `amount` must match `^[0-9]{1,13}(\.[0-9]{1,2})?$`.
    pub fn parse(currency_code: &str, amount: &str) -> Result<Self, MoneyError> {
        let currency = Currency::parse(currency_code)?;
        let amount = parse_amount(amount)?;
        Ok(Self { currency, amount })
    }

    /// Money from storage's integer minor units (分). Refuses negative values.
    pub fn from_minor(currency: Currency, minor: i64) -> Result<Self, MoneyError> {
        if minor < 0 {
            return Err(MoneyError::Negative);
        }
        Ok(Self {
            currency,
            amount: Decimal::new(minor, 2),
        })
    }

    /// Money from any decimal, rounded half-up to 0.01: the one rounding rule of billpay.
    pub fn round_half_up(currency: Currency, value: Decimal) -> Result<Self, MoneyError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(MoneyError::Negative);
        }
        let mut amount = value.round_dp_with_strategy(
            FRACTION_DIGITS_MAX as u32,
            RoundingStrategy::MidpointAwayFromZero,
        );
        amount.rescale(FRACTION_DIGITS_MAX as u32);
        // Beyond 13 integer digits is refused, as sums are: the minor units that
        // `minor`, the sums and the wire text work from must be exact.
        if amount.scale() != FRACTION_DIGITS_MAX as u32
            || amount.mantissa().unsigned_abs() > u128::from(MINOR_MAX)
        {
            return Err(MoneyError::Overflow);
        }
        Ok(Self { currency, amount })
    }

    /// The amount in integer minor units (分), as storage keeps it.
    pub fn minor(&self) -> i64 {
        // Every constructor keeps at most 13 integer digits plus 2 decimals (or checks
        // the sum), so the mantissa always fits an i64.
        i64::try_from(self.amount.mantissa()).unwrap_or(i64::MAX)
    }

    /// The amount's wire text, `1066.19` (what `Display` writes, without `fmt`).
    pub fn amount_text(&self) -> String {
        // The digits are ASCII, so the text is never empty.
        std::str::from_utf8(amount_digits(self.minor(), &mut [0; AMOUNT_TEXT_MAX]))
            .map(str::to_owned)
            .unwrap_or_default()
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    pub fn amount(&self) -> Decimal {
        self.amount
    }

    pub fn is_zero(&self) -> bool {
        self.amount.is_zero()
    }

    /// `self + other`; refuses a currency mismatch or a result beyond 13 integer digits.
    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        // Every amount has exactly two decimals, so its minor units are exact: adding
        // them is the sum, without `Decimal`'s scale alignment and range checks (a
        // reply sums a few dozen amounts).
        let sum = self
            .minor()
            .checked_add(other.minor())
            .ok_or(MoneyError::Overflow)?;
        Self::within_range(self.currency, sum)
    }

    /// `self - other`; refuses a currency mismatch or a negative result.
    pub fn checked_sub(self, other: Self) -> Result<Self, MoneyError> {
        self.same_currency(other)?;
        let difference = self
            .minor()
            .checked_sub(other.minor())
            .ok_or(MoneyError::Overflow)?;
        if difference < 0 {
            return Err(MoneyError::Negative);
        }
        Self::within_range(self.currency, difference)
    }

    fn same_currency(&self, other: Self) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch)
        }
    }

    /// `minor` units as money, refused beyond 13 integer digits.
    fn within_range(currency: Currency, minor: i64) -> Result<Self, MoneyError> {
        if minor.unsigned_abs() > MINOR_MAX {
            return Err(MoneyError::Overflow);
        }
        Ok(Self {
            currency,
            amount: Decimal::new(minor, FRACTION_DIGITS_MAX as u32),
        })
    }
}

impl fmt::Display for Money {
    /// The wire form of the amount: `1066.19`, always two decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0; AMOUNT_TEXT_MAX];
        let digits = amount_digits(self.minor(), &mut buffer);
        f.write_str(std::str::from_utf8(digits).map_err(|_| fmt::Error)?)
    }
}

/// The longest amount text: an `i64`'s 19 digits, its sign and the point.
const AMOUNT_TEXT_MAX: usize = 21;

/// `minor` units as the wire writes them (`1066.19`, always two decimals), in ASCII at
/// the end of `buffer`. Written digit by digit from the integer minor units, since every
/// amount has exactly two decimals: a reply carries dozens of amounts, and
/// `Decimal`'s own formatting, then `write!`, cost hundreds of instructions each.
fn amount_digits(minor: i64, buffer: &mut [u8; AMOUNT_TEXT_MAX]) -> &[u8] {
    let mut units = minor.unsigned_abs();
    let mut at = buffer.len();
    let mut put = |byte: u8| {
        at -= 1;
        buffer[at] = byte;
    };
    let cents = units % 100;
    units /= 100;
    put(b'0' + (cents % 10) as u8);
    put(b'0' + (cents / 10) as u8);
    put(b'.');
    loop {
        put(b'0' + (units % 10) as u8);
        units /= 10;
        if units == 0 {
            break;
        }
    }
    if minor < 0 {
        put(b'-');
    }
    &buffer[at..]
}

fn parse_amount(text: &str) -> Result<Decimal, MoneyError> {
    if text.is_empty() {
        return Err(MoneyError::Empty);
    }
    let (integer, fraction) = match text.split_once('.') {
        Some((integer, fraction)) => (integer, Some(fraction)),
        None => (text, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(integer) || fraction.is_some_and(|f| !all_digits(f)) {
        return Err(MoneyError::Malformed);
    }
    if integer.len() > INTEGER_DIGITS_MAX {
        return Err(MoneyError::TooLarge);
    }
    let fraction = fraction.unwrap_or("");
    if fraction.len() > FRACTION_DIGITS_MAX {
        return Err(MoneyError::TooManyDecimals);
    }
    // At most 15 digits, so the mantissa fits an i64 and the parse cannot fail.
    let digits = format!("{integer}{fraction:0<2}");
    let mantissa: i64 = digits.parse().map_err(|_| MoneyError::Malformed)?;
    Ok(Decimal::new(mantissa, FRACTION_DIGITS_MAX as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        let cases = [
            ("0", "0.00", 0),
            ("1", "1.00", 100),
            ("1.5", "1.50", 150),
            ("1066.19", "1066.19", 106_619),
            ("9999999999999.99", "9999999999999.99", 999_999_999_999_999),
            ("007.10", "7.10", 710),
        ];
        for (input, shown, minor) in cases {
            let money = Money::parse("CNY", input).unwrap();
            assert_eq!(money.to_string(), shown, "{input}");
            assert_eq!(money.minor(), minor, "{input}");
        }
    }

    #[test]
    fn shows_what_decimal_would_show() {
        let currency = Currency::parse("CNY").unwrap();
        for minor in [0, 1, 9, 10, 99, 100, 101, 12_345, 999_999_999_999_999] {
            let money = Money::from_minor(currency, minor).unwrap();
            assert_eq!(money.to_string(), Decimal::new(minor, 2).to_string());
            assert_eq!(money.amount_text(), money.to_string());
        }
        // Money is never negative, but the digits are written for any minor units.
        for minor in [-1, -100, -12_345, i64::MIN, i64::MAX] {
            assert_eq!(
                amount_digits(minor, &mut [0; AMOUNT_TEXT_MAX]),
                Decimal::new(minor, 2).to_string().as_bytes()
            );
        }
        let rounded = Money::round_half_up(currency, Decimal::new(1_005, 3)).unwrap();
        assert_eq!(rounded.to_string(), "1.01");
        let whole = Money::round_half_up(currency, Decimal::from(7)).unwrap();
        assert_eq!(whole.to_string(), "7.00");
        let round = |text: &str| Money::round_half_up(currency, text.parse().unwrap());
        assert_eq!(
            round("9999999999999.994").unwrap().to_string(),
            "9999999999999.99"
        );
        assert_eq!(round("9999999999999.995"), Err(MoneyError::Overflow));
        assert_eq!(round("10000000000000"), Err(MoneyError::Overflow));
        assert_eq!(
            round("79228162514264337593543950335"),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn refuses_everything_else() {
        let cases = [
            ("", MoneyError::Empty),
            ("-1", MoneyError::Malformed),
            ("+1", MoneyError::Malformed),
            ("1e3", MoneyError::Malformed),
            ("1.001", MoneyError::TooManyDecimals),
            ("abc", MoneyError::Malformed),
            (" 1.00", MoneyError::Malformed),
            ("1.00 ", MoneyError::Malformed),
            ("1.", MoneyError::Malformed),
            (".5", MoneyError::Malformed),
            ("1,000", MoneyError::Malformed),
            ("1.2.3", MoneyError::Malformed),
            ("12345678901234567890", MoneyError::TooLarge),
            ("１", MoneyError::Malformed),
        ];
        for (input, expected) in cases {
            assert_eq!(Money::parse("CNY", input), Err(expected), "{input:?}");
        }
        assert_eq!(
            Money::parse("USD", "1"),
            Err(MoneyError::UnsupportedCurrency)
        );
        assert_eq!(
            Money::parse("cny", "1"),
            Err(MoneyError::UnsupportedCurrency)
        );
    }

    #[test]
    fn rounds_half_up_to_the_cent() {
        let cases = [
            ("0.005", "0.01"),
            ("0.0049", "0.00"),
            ("1066.185", "1066.19"),
            ("2", "2.00"),
        ];
        for (input, expected) in cases {
            let value: Decimal = input.parse().unwrap();
            assert_eq!(
                Money::round_half_up(Currency::Cny, value)
                    .unwrap()
                    .to_string(),
                expected
            );
        }
    }

    #[test]
    fn arithmetic_is_checked() {
        let a = Money::parse("CNY", "10.00").unwrap();
        let b = Money::parse("CNY", "0.01").unwrap();
        assert_eq!(a.checked_sub(b).unwrap().to_string(), "9.99");
        assert_eq!(b.checked_sub(a), Err(MoneyError::Negative));
        let max = Money::parse("CNY", "9999999999999.99").unwrap();
        assert_eq!(max.checked_add(b), Err(MoneyError::Overflow));
        let below_max = Money::parse("CNY", "9999999999999.98").unwrap();
        assert_eq!(below_max.checked_add(b), Ok(max));
        assert_eq!(max.checked_sub(max).unwrap().to_string(), "0.00");
        // Sums of minor units agree with decimal arithmetic, scale included.
        for (x, y) in [(0, 0), (1, 99), (12_345, 67_890), (999_999_999_999_999, 0)] {
            let (x, y) = (
                Money::from_minor(Currency::Cny, x).unwrap(),
                Money::from_minor(Currency::Cny, y).unwrap(),
            );
            let sum = x.checked_add(y).unwrap();
            assert_eq!(sum.amount(), x.amount() + y.amount());
            assert_eq!(sum.amount().scale(), 2);
            assert_eq!(sum.checked_sub(y), Ok(x));
        }
        assert_eq!(
            Money::from_minor(Currency::Cny, -1),
            Err(MoneyError::Negative)
        );
    }
}
