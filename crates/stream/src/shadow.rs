//! Device shadows: each device's last known reading of every metric, by event time.
//!
//! A device is the value of a series' `device` label. The windows' series table keeps, per
//! series, the sample with the highest timestamp seen (a later write at the same timestamp
//! replaces it, as in the raw tier), so a late or replayed event never rolls a shadow back; this
//! module indexes those series by device and persists the readings with the window checkpoint.

use crate::bytes::{put, Reader};
use crate::StreamError;
use ahash::AHashMap;
use std::path::Path;
use strata_model::{Sample, SeriesKey, SeriesKeyRef, Tenant};

/// The label naming a series' device.
pub const DEVICE_LABEL: &str = "device";

/// Each device's series (indexes into the windows' series table).
#[derive(Debug, Default)]
pub struct DeviceIndex {
    devices: AHashMap<Tenant, AHashMap<Box<str>, Vec<u32>>>,
}

impl DeviceIndex {
    /// Records a new series; returns whether it belongs to a device.
    pub fn add(&mut self, tenant: &Tenant, key: SeriesKeyRef<'_>, series: u32) -> bool {
        let Some(device) = key.get(DEVICE_LABEL.as_bytes()) else {
            return false;
        };
        // Keys hold valid UTF-8 (checked when built).
        let device = std::str::from_utf8(device).unwrap_or_default();
        self.devices
            .entry(tenant.clone())
            .or_default()
            .entry(device.into())
            .or_default()
            .push(series);
        true
    }

    /// The series of `device`.
    pub fn series(&self, tenant: &Tenant, device: &str) -> &[u32] {
        self.devices
            .get(tenant)
            .and_then(|d| d.get(device))
            .map_or(&[], |v| v.as_slice())
    }
}

/// The newest non-NaN sample of `samples`, later entries winning ties.
pub fn newest(samples: &[Sample]) -> Option<Sample> {
    samples
        .iter()
        .filter(|s| !s.value.is_nan())
        .copied()
        .reduce(|a, b| if b.timestamp >= a.timestamp { b } else { a })
}

/// Keeps `last` the newest of itself and `s`.
pub fn update(last: &mut Option<Sample>, s: Sample) {
    if last.is_none_or(|l| s.timestamp >= l.timestamp) {
        *last = Some(s);
    }
}

const MAGIC: &[u8; 8] = b"STRSHADW";
const VERSION: u32 = 1;

/// Serialises readings (for the shard's checkpoint).
pub(crate) fn encode<'a>(
    readings: impl ExactSizeIterator<Item = (&'a Tenant, &'a SeriesKey, Sample)>,
    b: &mut Vec<u8>,
) {
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&(readings.len() as u64).to_le_bytes());
    for (tenant, key, s) in readings {
        put(b, tenant.as_str().as_bytes());
        put(b, key.as_bytes());
        b.extend_from_slice(&s.timestamp.to_le_bytes());
        b.extend_from_slice(&s.value.to_bits().to_le_bytes());
    }
}

/// Reads what [`encode`] wrote.
pub(crate) fn decode(
    b: &[u8],
    path: &Path,
) -> Result<Vec<(Tenant, SeriesKey, Sample)>, StreamError> {
    let bad = |reason: &str| StreamError::Corrupt {
        path: path.into(),
        reason: format!("device shadows: {reason}"),
    };
    let mut r = Reader::new(b);
    if r.take(8) != Some(&MAGIC[..]) || r.u32() != Some(VERSION) {
        return Err(bad("bad header"));
    }
    let n = r.u64().ok_or_else(|| bad("truncated"))?;
    let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        let entry = (|| {
            let tenant = Tenant::new(std::str::from_utf8(r.field()?).ok()?).ok()?;
            let key = SeriesKey::from_bytes(r.field()?)?;
            let t = r.i64()?;
            let v = f64::from_bits(r.u64()?);
            Some((tenant, key, Sample::new(t, v)))
        })()
        .ok_or_else(|| bad("damaged entry"))?;
        out.push(entry);
    }
    if !r.is_done() {
        return Err(bad("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    #[test]
    fn newest_update_index_and_round_trip() {
        let s = [
            Sample::new(10, 1.0),
            Sample::new(30, 3.0),
            Sample::new(20, 2.0),
            Sample::new(40, f64::NAN),
        ];
        assert_eq!(newest(&s), Some(Sample::new(30, 3.0)));
        let mut last = Some(Sample::new(50, 5.0));
        update(&mut last, Sample::new(40, 4.0));
        assert_eq!(last, Some(Sample::new(50, 5.0)), "never rolls back");
        update(&mut last, Sample::new(50, 6.0));
        assert_eq!(
            last,
            Some(Sample::new(50, 6.0)),
            "a later write at the same time wins"
        );
        let t = Tenant::default_tenant();
        let k = Labels::from_pairs([("__name__", "temp"), ("device", "d1")])
            .unwrap()
            .key();
        let none = Labels::from_pairs([("__name__", "x")]).unwrap().key();
        let mut idx = DeviceIndex::default();
        assert!(idx.add(&t, k.as_ref(), 7));
        assert!(!idx.add(&t, none.as_ref(), 8));
        assert_eq!(idx.series(&t, "d1"), &[7]);
        assert!(idx.series(&Tenant::new("other").unwrap(), "d1").is_empty());
        let mut b = Vec::new();
        encode([(&t, &k, Sample::new(1, 2.0))].into_iter(), &mut b);
        let p = Path::new("x");
        assert_eq!(
            decode(&b, p).unwrap(),
            vec![(t.clone(), k.clone(), Sample::new(1, 2.0))]
        );
        assert!(decode(&b[..b.len() - 3], p).is_err());
    }
}
