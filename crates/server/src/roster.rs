//! The registered devices of one tenant as fleet status reads them: in id order, packed, with
//! sites and types interned.
//!
//! Fleet status visits every device each time it is asked. Looking each one up in the
//! registry's hash map costs a few cache misses per device (the table, the key, the record),
//! which at 100,000 devices is most of the answer's time. The shadows are kept in id order, so
//! a roster in the same order is walked alongside them: both in order, memory read in order,
//! and a site is a small number to count by rather than a string to hash.

use crate::registry::Known;
use ahash::AHashMap;

/// One registered device, as fleet status needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The site's name index (see [`Roster::name`]); 0 for none.
    pub site: u32,
    /// The type's name index; 0 for none.
    pub device_type: u32,
    /// The expected reporting interval (ms), when the registry gives one.
    pub interval_ms: Option<i64>,
}

/// The registered devices of one tenant, by id (see the module doc).
#[derive(Debug, Default)]
pub struct Roster {
    /// Every id, one after another, in order.
    ids: String,
    /// Where each id ends in `ids`.
    ends: Vec<u32>,
    entries: Vec<Entry>,
    /// Interned names; index 0 is the empty name (none).
    names: Vec<String>,
}

impl Roster {
    /// Packs `devices`.
    pub fn new<'a>(devices: impl IntoIterator<Item = &'a Known>) -> Roster {
        let mut all: Vec<&Known> = devices.into_iter().collect();
        all.sort_unstable_by(|a, b| a.device.id.cmp(&b.device.id));
        let mut r = Roster {
            names: vec![String::new()],
            ..Roster::default()
        };
        let mut index: AHashMap<String, u32> = AHashMap::new();
        let mut intern = |names: &mut Vec<String>, n: Option<&str>| match n {
            None | Some("") => 0,
            Some(n) => *index.entry(n.to_string()).or_insert_with(|| {
                names.push(n.to_string());
                (names.len() - 1) as u32
            }),
        };
        for k in all {
            r.ids.push_str(&k.device.id);
            r.ends.push(r.ids.len() as u32);
            let site = intern(&mut r.names, k.device.site.as_deref());
            let device_type = intern(&mut r.names, k.device.device_type.as_deref());
            r.entries.push(Entry {
                site,
                device_type,
                interval_ms: k.interval_ms,
            });
        }
        r
    }

    /// Devices in the roster.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no device is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `i`th id in order.
    pub fn id(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.ids[start..self.ends[i] as usize]
    }

    /// The `i`th device.
    pub fn entry(&self, i: usize) -> Entry {
        self.entries[i]
    }

    /// An interned name; `None` for index 0.
    pub fn name(&self, index: u32) -> Option<&str> {
        (index != 0).then(|| self.names[index as usize].as_str())
    }

    /// Names interned (index 0 included): the bound of name indexes.
    pub fn names_len(&self) -> usize {
        self.names.len()
    }

    /// Walks from position `*at` to `id`, for callers visiting ids in ascending order: leaves
    /// `*at` at the first id not below it and returns its position when it is `id`.
    pub fn seek(&self, at: &mut usize, id: &str) -> Option<usize> {
        while *at < self.len() && self.id(*at) < id {
            *at += 1;
        }
        (*at < self.len() && self.id(*at) == id).then_some(*at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_meta::registry::Device;

    fn known(id: &str, site: Option<&str>, t: Option<&str>) -> Known {
        let mut device: Device = serde_json::from_value(serde_json::json!({"id": id})).unwrap();
        device.site = site.map(str::to_string);
        device.device_type = t.map(str::to_string);
        Known::new(device, Vec::new())
    }

    #[test]
    fn a_walk_in_order_finds_each_registered_id() {
        let devices = [
            known("d3", Some("s1"), None),
            known("d1", Some("s2"), Some("pump")),
            known("d10", Some("s1"), Some("pump")),
        ];
        let r = Roster::new(devices.iter());
        assert_eq!(
            (0..r.len()).map(|i| r.id(i)).collect::<Vec<_>>(),
            ["d1", "d10", "d3"]
        );
        let e = r.entry(1);
        assert_eq!(
            (r.name(e.site), r.name(e.device_type)),
            (Some("s1"), Some("pump"))
        );
        assert_eq!(r.name(r.entry(2).device_type), None);
        assert_eq!(r.name(r.entry(0).site), Some("s2"));
        let mut at = 0;
        let found: Vec<_> = ["d0", "d1", "d2", "d3", "d4"]
            .iter()
            .map(|id| r.seek(&mut at, id))
            .collect();
        assert_eq!(found, [None, Some(0), None, Some(2), None]);
        assert_eq!(at, 3);
    }
}
