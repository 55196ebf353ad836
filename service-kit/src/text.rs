//! Limits on text taken from callers and sent back to them.

/// The longest status message sent to a caller, in bytes; longer ones are cut (at a
/// character boundary) and marked, so no input is ever echoed unbounded.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 512;

/// Whether `c` is a Unicode format character (general category Cf): bidi overrides
/// and isolates, zero-width spaces and joiners, the byte order mark, soft hyphen,
/// tags. They render as nothing, or reorder what is around them ("Li\u{202e}ieL"),
/// so a name holding one can pass for another.
pub fn is_format_character(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Whether `text` holds a control or format character.
pub fn has_invisible_characters(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() || is_format_character(c))
}

/// `message` cut to at most `max` bytes at a character boundary, marked when cut.
pub fn bounded(message: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if message.len() <= max {
        return message.into();
    }
    const MARK: &str = "… (cut)";
    let mut end = max.saturating_sub(MARK.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bidi_and_zero_width_characters() {
        for bad in [
            "Li\u{202E}ieL",
            "\u{200B}",
            "a\u{2066}b",
            "\u{FEFF}x",
            "a\nb",
        ] {
            assert!(has_invisible_characters(bad), "{bad:?}");
        }
        for good in ["Li Lei", "李雷", "Zoë", "O'Brien-Smith"] {
            assert!(!has_invisible_characters(good), "{good:?}");
        }
    }

    #[test]
    fn cuts_long_messages_at_a_boundary() {
        assert_eq!(bounded("short", 10), "short");
        let long = "雷".repeat(400);
        let cut = bounded(&long, 512);
        assert!(cut.len() <= 512 && cut.ends_with("(cut)"), "{}", cut.len());
    }
}
