//! Device shadows: each device's last known reading of every metric, by event time.
//!
//! [`Shadows`] keeps them per shard apart from everything else (rollups need not be on): the
//! newest reading of each of a device's series, so a late or replayed event never rolls a
//! shadow back, checkpointed with the log offset it covers. The rest of this module is the
//! windows' own index of their devices' series (the rollup API's `latest` figures).
//!
//! A device is the value of a series' `device` label. The windows' series table keeps, per
//! series, the sample with the highest timestamp seen (a later write at the same timestamp
//! replaces it, as in the raw tier), so a late or replayed event never rolls a shadow back; this
//! module indexes those series by device and persists the readings with the window checkpoint.

use crate::bytes::{put, Reader};
use crate::StreamError;
use ahash::AHashMap;
use std::path::Path;
use strata_model::{Sample, SeriesId, SeriesKey, SeriesKeyRef, Tenant};

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

/// What a shard's shadows hold of one device: the newest reading of each of its series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceState {
    /// Per series, its newest reading (in the order first seen).
    pub readings: Vec<(SeriesKey, Sample)>,
    /// The readings' series ids (compared before keys).
    ids: Vec<SeriesId>,
}

impl DeviceState {
    /// The newest reading's event time.
    pub fn last_seen(&self) -> i64 {
        self.readings
            .iter()
            .map(|(_, s)| s.timestamp)
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Takes `s` as the series' reading if it is the newest; answers whether the reported
    /// state changed (a redelivery of the newest reading changes nothing).
    fn take(&mut self, id: SeriesId, key: SeriesKeyRef<'_>, s: Sample) -> bool {
        let found = self
            .ids
            .iter()
            .zip(&mut self.readings)
            .find(|(i, (k, _))| **i == id && k.as_bytes() == key.as_bytes());
        match found {
            Some((_, (_, last))) => {
                let before = *last;
                let mut l = Some(before);
                update(&mut l, s);
                *last = l.expect("kept");
                last.timestamp != before.timestamp || last.value.to_bits() != before.value.to_bits()
            }
            None => {
                self.ids.push(id);
                self.readings.push((key.to_owned(), s));
                true
            }
        }
    }
}

/// Every device's reported state in one shard (see the module doc).
#[derive(Debug, Default)]
pub struct Shadows {
    tenants: AHashMap<Tenant, std::collections::BTreeMap<Box<str>, DeviceState>>,
}

const SHADOWS_MAGIC: &[u8; 8] = b"STRSHDW2";

impl Shadows {
    /// Takes the readings of a batch's device series (those with a `device` label; `skip`
    /// names metrics that are not the device's readings, such as a detector's outputs).
    pub fn observe(&mut self, batch: &strata_model::WriteBatch, skip: impl Fn(&[u8]) -> bool) {
        self.observe_changes(batch, skip, |_, _| {});
    }

    /// As [`Shadows::observe`], telling `changed` of each series whose newest reading the
    /// batch changed, with that reading.
    pub fn observe_changes(
        &mut self,
        batch: &strata_model::WriteBatch,
        skip: impl Fn(&[u8]) -> bool,
        mut changed: impl FnMut(SeriesKeyRef<'_>, Sample),
    ) {
        let tenant = batch.tenant();
        if !self.tenants.contains_key(tenant) {
            if !batch
                .iter()
                .any(|s| s.key.get(DEVICE_LABEL.as_bytes()).is_some())
            {
                return;
            }
            self.tenants.insert(tenant.clone(), Default::default());
        }
        let map = self.tenants.get_mut(tenant).expect("inserted");
        // An event's readings come one after another: look its device up once.
        let mut last: Option<(&[u8], &mut DeviceState)> = None;
        for s in batch.iter() {
            let Some(device) = s.key.get(DEVICE_LABEL.as_bytes()) else {
                continue;
            };
            if s.key
                .get(strata_model::METRIC_NAME.as_bytes())
                .is_some_and(&skip)
            {
                continue;
            }
            let Some(n) = newest(s.samples) else { continue };
            if let Some((d, state)) = &mut last {
                if *d == device {
                    if state.take(s.id, s.key, n) {
                        changed(s.key, n);
                    }
                    continue;
                }
            }
            let Ok(name) = std::str::from_utf8(device) else {
                continue;
            };
            if !map.contains_key(name) {
                map.insert(name.into(), DeviceState::default());
            }
            let state = map.get_mut(name).expect("inserted");
            if state.take(s.id, s.key, n) {
                changed(s.key, n);
            }
            last = Some((device, state));
        }
    }

    /// Device `id` of `tenant`.
    pub fn device(&self, tenant: &Tenant, id: &str) -> Option<&DeviceState> {
        self.tenants.get(tenant)?.get(id)
    }

    /// The devices of `tenant` with ids after `after` (all when `None`), by id.
    pub fn devices_after<'a>(
        &'a self,
        tenant: &Tenant,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a str, &'a DeviceState)> + 'a {
        use std::ops::Bound;
        let lower = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        self.tenants
            .get(tenant)
            .into_iter()
            .flat_map(move |m| m.range::<str, _>((lower, Bound::Unbounded)))
            .map(|(k, v)| (&**k, v))
    }

    /// Writes the shadows to `path`, covering the log up to `offset`.
    pub fn save(&self, path: &Path, offset: Option<u64>) -> Result<(), StreamError> {
        Shadows::write_snapshot(path, self.snapshot(offset))
    }

    /// Writes a [`Shadows::snapshot`] where [`Shadows::load`] finds it (no lock needed on the
    /// shadows while the disk works).
    pub fn write_snapshot(path: &Path, snapshot: Vec<u8>) -> Result<(), StreamError> {
        crate::bytes::write_checked(path, snapshot)
    }

    /// The shadows as [`Shadows::save`] writes them.
    pub fn snapshot(&self, offset: Option<u64>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(SHADOWS_MAGIC);
        b.extend_from_slice(&offset.map_or(u64::MAX, |o| o).to_le_bytes());
        let readings: Vec<_> = self
            .tenants
            .iter()
            .flat_map(|(t, m)| {
                m.values()
                    .flat_map(move |d| d.readings.iter().map(move |(k, s)| (t, k, *s)))
            })
            .collect();
        encode(readings.into_iter(), &mut b);
        b
    }

    /// Loads what [`Shadows::save`] wrote, with the log offset it covers; none when missing.
    pub fn load(path: &Path) -> Result<(Shadows, Option<u64>), StreamError> {
        let mut sh = Shadows::default();
        let Some(body) = crate::bytes::read_checked(path, SHADOWS_MAGIC, 20, "device shadows")?
        else {
            return Ok((sh, None));
        };
        let offset = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        for (tenant, key, s) in decode(&body[16..], path)? {
            let tenant_key = tenant.clone();
            let Some(device) = key.as_ref().get(DEVICE_LABEL.as_bytes()) else {
                continue;
            };
            let device = std::str::from_utf8(device).unwrap_or_default().to_string();
            sh.tenants
                .entry(tenant)
                .or_default()
                .entry(device.into())
                .or_default()
                .take(SeriesId::of(&tenant_key, key.as_ref()), key.as_ref(), s);
        }
        Ok((sh, (offset != u64::MAX).then_some(offset)))
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

    #[test]
    fn shadows_keep_the_newest_reading_per_series_and_round_trip() {
        let t = Tenant::default_tenant();
        let mut b = strata_model::WriteBatch::new(t.clone());
        let limits = strata_model::Limits::default();
        let push = |b: &mut strata_model::WriteBatch, name: &str, dev: &str, ts: i64, v: f64| {
            let mut l: Vec<(&[u8], &[u8])> =
                vec![(b"__name__", name.as_bytes()), (b"device", dev.as_bytes())];
            b.push_series(&mut l, &[Sample::new(ts, v)], None, &limits)
                .unwrap();
        };
        push(&mut b, "temp", "d2", 20, 2.0);
        push(&mut b, "temp", "d1", 10, 1.0);
        push(&mut b, "hum", "d1", 30, 3.0);
        push(&mut b, "anomaly_score", "d1", 99, 9.0);
        let mut l: Vec<(&[u8], &[u8])> = vec![(b"__name__", b"up")];
        b.push_series(&mut l, &[Sample::new(5, 1.0)], None, &limits)
            .unwrap();
        let mut sh = Shadows::default();
        sh.observe(&b, |n| n == b"anomaly_score");
        // Older (a late event) and newer readings of d1's temp.
        let mut late = strata_model::WriteBatch::new(t.clone());
        push(&mut late, "temp", "d1", 5, 0.5);
        push(&mut late, "temp", "d2", 25, 2.5);
        // A redelivery of d1's hum changes nothing either.
        push(&mut late, "hum", "d1", 30, 3.0);
        let mut changed = Vec::new();
        sh.observe_changes(
            &late,
            |_| false,
            |k, s| changed.push((k.get(b"device").unwrap().to_vec(), s)),
        );
        assert_eq!(changed, [(b"d2".to_vec(), Sample::new(25, 2.5))]);
        let d1 = sh.device(&t, "d1").unwrap();
        assert_eq!(d1.readings.len(), 2);
        assert_eq!(d1.readings[0].1, Sample::new(10, 1.0), "never rolled back");
        assert_eq!(d1.last_seen(), 30);
        assert_eq!(
            sh.device(&t, "d2").unwrap().readings[0].1,
            Sample::new(25, 2.5)
        );
        let ids: Vec<&str> = sh.devices_after(&t, None).map(|(id, _)| id).collect();
        assert_eq!(ids, ["d1", "d2"]);
        let ids: Vec<&str> = sh.devices_after(&t, Some("d1")).map(|(id, _)| id).collect();
        assert_eq!(ids, ["d2"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shadows.ckpt");
        sh.save(&p, Some(7)).unwrap();
        let (back, off) = Shadows::load(&p).unwrap();
        assert_eq!(off, Some(7));
        assert_eq!(back.device(&t, "d1"), sh.device(&t, "d1"));
        assert_eq!(back.device(&t, "d2"), sh.device(&t, "d2"));
        std::fs::write(&p, b"STRSHDW2 damaged").unwrap();
        assert!(Shadows::load(&p).is_err());
        assert_eq!(Shadows::load(&dir.path().join("none")).unwrap().1, None);
    }
}
