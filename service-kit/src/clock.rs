//! Wall-clock time in the units storage keeps.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the unix epoch, as instants are stored.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX)
        })
}

/// Seconds since the unix epoch, as JWT claims count them.
pub fn now_unix_seconds() -> i64 {
    now_micros() / 1_000_000
}

/// A stored instant as a protobuf timestamp.
pub fn timestamp_from_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}
