//! Device shadows: each device's last known reading of every metric, by event time.
//!
//! A device is the value of a series' `device` label. The shadow keeps, per series of a device,
//! the sample with the highest timestamp seen (a later write at the same timestamp replaces
//! it, as in the raw tier), so a late or replayed event never rolls a shadow back.

use crate::bytes::{put, Reader};
use crate::StreamError;
use ahash::AHashMap;
use std::path::Path;
use strata_model::{Sample, SeriesId, SeriesKey, SeriesKeyRef, Tenant};

/// The label naming a series' device.
pub const DEVICE_LABEL: &str = "device";

/// The last reading of one series of a device.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    tenant: Tenant,
    key: SeriesKey,
    last: Sample,
}

/// Last readings of the devices of one shard.
#[derive(Debug, Default, Clone)]
pub struct Shadows {
    /// By series id, confirmed by tenant and key (ids may collide).
    series: AHashMap<u64, Vec<Entry>>,
    /// Each device's series ids.
    devices: AHashMap<Tenant, AHashMap<Box<str>, Vec<u64>>>,
}

impl PartialEq for Shadows {
    fn eq(&self, other: &Shadows) -> bool {
        let all = |s: &Shadows| {
            let mut v: Vec<&Entry> = s.series.values().flatten().collect();
            v.sort_by(|a, b| (&a.tenant, &a.key).cmp(&(&b.tenant, &b.key)));
            v.into_iter().cloned().collect::<Vec<Entry>>()
        };
        all(self) == all(other)
    }
}

const MAGIC: &[u8; 8] = b"STRSHADW";
const VERSION: u32 = 1;

impl Shadows {
    /// Takes a series' stored samples.
    pub fn observe(
        &mut self,
        tenant: &Tenant,
        id: SeriesId,
        key: SeriesKeyRef<'_>,
        samples: &[Sample],
    ) {
        let Some(newest) = samples
            .iter()
            .filter(|s| !s.value.is_nan())
            .copied()
            .reduce(|a, b| if b.timestamp >= a.timestamp { b } else { a })
        else {
            return;
        };
        if let Some(e) = self.series.get_mut(&id.0).and_then(|v| {
            v.iter_mut()
                .find(|e| e.key.as_ref() == key && &e.tenant == tenant)
        }) {
            if newest.timestamp >= e.last.timestamp {
                e.last = newest;
            }
            return;
        }
        let Some(device) = key.get(DEVICE_LABEL.as_bytes()) else {
            return;
        };
        // Keys hold valid UTF-8 (checked when built).
        let device = std::str::from_utf8(device).unwrap_or_default();
        self.series.entry(id.0).or_default().push(Entry {
            tenant: tenant.clone(),
            key: key.to_owned(),
            last: newest,
        });
        let ids = self
            .devices
            .entry(tenant.clone())
            .or_default()
            .entry(device.into())
            .or_default();
        if !ids.contains(&id.0) {
            ids.push(id.0);
        }
    }

    /// The last reading of each series of `device`.
    pub fn device(&self, tenant: &Tenant, device: &str) -> Vec<(SeriesKey, Sample)> {
        let Some(ids) = self.devices.get(tenant).and_then(|d| d.get(device)) else {
            return Vec::new();
        };
        let mut out: Vec<(SeriesKey, Sample)> = ids
            .iter()
            .filter_map(|id| self.series.get(id))
            .flatten()
            .filter(|e| {
                &e.tenant == tenant
                    && e.key.as_ref().get(DEVICE_LABEL.as_bytes()) == Some(device.as_bytes())
            })
            .map(|e| (e.key.clone(), e.last))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Devices known.
    pub fn len(&self) -> usize {
        self.devices.values().map(|d| d.len()).sum()
    }

    /// True when no device is known.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Serialises the shadows (for the shard's checkpoint).
    pub fn encode(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        let n: usize = self.series.values().map(|v| v.len()).sum();
        b.extend_from_slice(&(n as u64).to_le_bytes());
        for e in self.series.values().flatten() {
            put(b, e.tenant.as_str().as_bytes());
            put(b, e.key.as_bytes());
            b.extend_from_slice(&e.last.timestamp.to_le_bytes());
            b.extend_from_slice(&e.last.value.to_bits().to_le_bytes());
        }
    }

    /// Reads what [`Shadows::encode`] wrote.
    pub fn decode(b: &[u8], path: &Path) -> Result<Shadows, StreamError> {
        let bad = |reason: &str| StreamError::Corrupt {
            path: path.into(),
            reason: format!("device shadows: {reason}"),
        };
        let mut r = Reader::new(b);
        if r.take(8) != Some(&MAGIC[..]) || r.u32() != Some(VERSION) {
            return Err(bad("bad header"));
        }
        let mut out = Shadows::default();
        let n = r.u64().ok_or_else(|| bad("truncated"))?;
        for _ in 0..n {
            let entry = (|| {
                let tenant = Tenant::new(std::str::from_utf8(r.field()?).ok()?).ok()?;
                let key = SeriesKey::from_bytes(r.field()?)?;
                let t = r.i64()?;
                let v = f64::from_bits(r.u64()?);
                Some((tenant, key, Sample::new(t, v)))
            })()
            .ok_or_else(|| bad("damaged entry"))?;
            let (tenant, key, s) = entry;
            out.observe(
                &tenant,
                SeriesId::of(&tenant, key.as_ref()),
                key.as_ref(),
                &[s],
            );
        }
        if !r.is_done() {
            return Err(bad("trailing bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    #[test]
    fn keeps_the_newest_reading_and_round_trips() {
        let t = Tenant::default_tenant();
        let k = |m: &str, d: &str| {
            Labels::from_pairs([("__name__", m), ("device", d)])
                .unwrap()
                .key()
        };
        let mut s = Shadows::default();
        let id = |k: &SeriesKey| SeriesId::of(&t, k.as_ref());
        s.observe(
            &t,
            id(&k("temp", "d1")),
            k("temp", "d1").as_ref(),
            &[Sample::new(10, 1.0), Sample::new(30, 3.0)],
        );
        s.observe(
            &t,
            id(&k("temp", "d1")),
            k("temp", "d1").as_ref(),
            &[Sample::new(20, 2.0)],
        );
        s.observe(
            &t,
            id(&k("hum", "d1")),
            k("hum", "d1").as_ref(),
            &[Sample::new(5, 50.0)],
        );
        s.observe(
            &t,
            id(&k("temp", "d2")),
            k("temp", "d2").as_ref(),
            &[Sample::new(5, f64::NAN)],
        );
        let no_device = Labels::from_pairs([("__name__", "x")]).unwrap().key();
        s.observe(
            &t,
            id(&no_device),
            no_device.as_ref(),
            &[Sample::new(5, 1.0)],
        );
        let d1 = s.device(&t, "d1");
        assert_eq!(d1.len(), 2);
        assert!(d1.contains(&(k("temp", "d1"), Sample::new(30, 3.0))));
        assert!(d1.contains(&(k("hum", "d1"), Sample::new(5, 50.0))));
        assert!(s.device(&t, "d2").is_empty());
        assert!(s.device(&Tenant::new("other").unwrap(), "d1").is_empty());
        let mut b = Vec::new();
        s.encode(&mut b);
        let p = Path::new("x");
        assert_eq!(Shadows::decode(&b, p).unwrap(), s);
        assert!(Shadows::decode(&b[..b.len() - 3], p).is_err());
    }
}
