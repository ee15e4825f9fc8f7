/// One value of a series at one instant (milliseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Event time, milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The value. May be the [`STALE_NAN`] marker.
    pub value: f64,
}

impl Sample {
    /// A sample at `timestamp` with `value`.
    pub const fn new(timestamp: i64, value: f64) -> Sample {
        Sample { timestamp, value }
    }

    /// True when the value is Prometheus' staleness marker.
    pub fn is_stale(&self) -> bool {
        self.value.to_bits() == STALE_NAN.to_bits()
    }

    /// Bitwise equality of the value: two NaNs with the same bits are the same value, which is
    /// what deduplication needs.
    pub fn same_value(&self, other: f64) -> bool {
        self.value.to_bits() == other.to_bits()
    }
}

/// Prometheus' staleness marker: a NaN with this exact bit pattern.
pub const STALE_NAN: f64 = f64::from_bits(0x7ff0000000000002);

/// Sorts samples by timestamp and keeps one per timestamp: of equal timestamps, the one that
/// came last in `v` (the storage rule: the last write wins).
pub fn sort_last_wins(v: &mut Vec<Sample>) {
    v.sort_by_key(|s| s.timestamp); // stable: order among equal timestamps is kept
    let mut w = 0;
    for r in 0..v.len() {
        if w > 0 && v[w - 1].timestamp == v[r].timestamp {
            v[w - 1] = v[r];
        } else {
            v[w] = v[r];
            w += 1;
        }
    }
    v.truncate(w);
}
