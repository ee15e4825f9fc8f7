//! The label index: postings lists (label name → value → series) over one set of series, used
//! by the head and by every block.

use ahash::AHashMap;
use smallvec::SmallVec;
use strata_model::{MatchOp, Matcher, SeriesKey, SeriesKeyRef};

/// Series having one label value, ascending: up to four inline (as large as a `Vec`), so the
/// many values held by a few series each (device or instance names) take no allocation.
type Postings = SmallVec<[u32; 4]>;

/// Label value -> series having it.
type ValuePostings = AHashMap<Box<[u8]>, Postings>;

/// Postings over series numbered `0..n` in the order they were added.
#[derive(Default)]
pub struct Index {
    postings: AHashMap<Box<[u8]>, ValuePostings>,
    keys: Vec<SeriesKey>,
}

impl Index {
    /// Adds the next series; returns its number.
    pub fn add(&mut self, key: SeriesKey) -> u32 {
        let id = self.keys.len() as u32;
        for (n, v) in key.as_ref().pairs() {
            self.postings
                .entry(n.into())
                .or_default()
                .entry(v.into())
                .or_default()
                .push(id);
        }
        self.keys.push(key);
        id
    }

    /// Keeps the series whose `keep` entry is true (one per series), renumbering them in
    /// order. Returns each old number's new one (`u32::MAX` for series removed).
    pub fn retain(&mut self, keep: &[bool]) -> Vec<u32> {
        let mut next = 0u32;
        let remap: Vec<u32> = keep
            .iter()
            .map(|&k| {
                if k {
                    next += 1;
                    next - 1
                } else {
                    u32::MAX
                }
            })
            .collect();
        // Renumbering keeps the order, so postings stay ascending.
        self.postings.retain(|_, values| {
            values.retain(|_, list| {
                list.retain_mut(|id| {
                    *id = remap[*id as usize];
                    *id != u32::MAX
                });
                if list.spilled() && list.capacity() > 2 * list.len() + 16 {
                    list.shrink_to_fit();
                }
                !list.is_empty()
            });
            !values.is_empty()
        });
        let mut i = 0;
        self.keys.retain(|_| {
            i += 1;
            keep[i - 1]
        });
        crate::head::shrink(&mut self.keys);
        remap
    }

    /// The key of series `id`.
    pub fn key(&self, id: u32) -> SeriesKeyRef<'_> {
        self.keys[id as usize].as_ref()
    }

    /// Series matching every matcher, ascending. A matcher that matches the empty string also
    /// matches series without its label, as in Prometheus.
    pub fn select(&self, matchers: &[Matcher]) -> Vec<u32> {
        select(
            self.keys.len(),
            matchers,
            |m| self.postings_for(m),
            |id| self.key(id),
        )
    }

    /// Series whose label `m.name` is present and matches `m`.
    fn postings_for(&self, m: &Matcher) -> Vec<u32> {
        let Some(values) = self.postings.get(m.name.as_bytes()) else {
            return Vec::new();
        };
        let mut lists: Vec<&[u32]> = Vec::new();
        match (&m.op, m.literal_alternatives()) {
            (MatchOp::Equal, _) => lists.extend(values.get(m.value.as_bytes()).map(|l| &l[..])),
            (_, Some(alts)) => lists.extend(
                alts.iter()
                    .filter_map(|a| values.get(a.as_bytes()))
                    .map(|l| &l[..]),
            ),
            _ => lists.extend(
                values
                    .iter()
                    .filter(|(v, _)| m.matches(std::str::from_utf8(v).unwrap_or("")))
                    .map(|(_, l)| &l[..]),
            ),
        }
        union(lists)
    }
}

/// A label index built once over series given in key order, for a block's parsed index: every
/// key in one buffer, all postings in one array, each label value pointing at its first
/// occurrence in the keys. No allocation per series or per value, so it holds about the key
/// bytes plus four bytes per label of each series ([`Index`], built to grow, holds several
/// times that), and a block's index stays in the index cache's budget.
pub struct FrozenIndex {
    keys: Vec<u8>,
    /// Where each key ends in `keys` (series `i` is `ends[i - 1]..ends[i]`).
    ends: Vec<u32>,
    /// Label names in byte order, each with its range of `values`.
    names: Vec<(Box<[u8]>, u32, u32)>,
    /// Each name's values in byte order.
    values: Vec<ValueEntry>,
    /// Series of each value, ascending, value after value.
    postings: Vec<u32>,
}

/// One label value of a [`FrozenIndex`]: its bytes in the keys and its postings.
#[derive(Clone, Copy)]
struct ValueEntry {
    at: u32,
    len: u32,
    from: u32,
    to: u32,
}

impl FrozenIndex {
    /// Indexes the well-formed keys `keys[ends[i - 1]..ends[i]]` (series numbered in that
    /// order). `None` when the keys do not fit in 4 GiB (offsets are 32-bit).
    pub fn build(keys: Vec<u8>, ends: Vec<u32>) -> Option<FrozenIndex> {
        u32::try_from(keys.len()).ok()?;
        let key_at = |i: usize| {
            let start = if i == 0 { 0 } else { ends[i - 1] as usize };
            SeriesKeyRef::new_unchecked(&keys[start..ends[i] as usize])
        };
        // First pass: number the names and values, count each value's series.
        let mut name_ids: AHashMap<&[u8], u32> = AHashMap::new();
        let mut value_ids: AHashMap<(u32, &[u8]), u32> = AHashMap::new();
        // (name id, value entry) of each value seen, and the value of every label in order.
        let mut seen: Vec<(u32, ValueEntry)> = Vec::new();
        let mut label_values: Vec<u32> = Vec::new();
        for i in 0..ends.len() {
            for (n, v) in key_at(i).pairs() {
                let next = name_ids.len() as u32;
                let nid = *name_ids.entry(n).or_insert(next);
                let vid = *value_ids.entry((nid, v)).or_insert_with(|| {
                    let at = (v.as_ptr() as usize - keys.as_ptr() as usize) as u32;
                    let len = v.len() as u32;
                    let e = ValueEntry {
                        at,
                        len,
                        from: 0,
                        to: 0,
                    };
                    seen.push((nid, e));
                    seen.len() as u32 - 1
                });
                seen[vid as usize].1.to += 1;
                label_values.push(vid);
            }
        }
        drop(value_ids);
        let mut names: Vec<(&[u8], u32)> = name_ids.into_iter().collect();
        names.sort_unstable();
        let mut name_rank = vec![0u32; names.len()];
        for (rank, (_, nid)) in names.iter().enumerate() {
            name_rank[*nid as usize] = rank as u32;
        }
        // Values in (name, bytes) order; postings laid out in that order.
        let bytes = |e: &ValueEntry| &keys[e.at as usize..(e.at + e.len) as usize];
        let mut order: Vec<u32> = (0..seen.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            let (na, ea) = &seen[a as usize];
            let (nb, eb) = &seen[b as usize];
            (name_rank[*na as usize], bytes(ea)).cmp(&(name_rank[*nb as usize], bytes(eb)))
        });
        let mut rank = vec![0u32; seen.len()];
        let mut values = Vec::with_capacity(seen.len());
        let mut name_ranges = vec![(u32::MAX, 0u32); names.len()];
        let mut total = 0u32;
        for (pos, &vid) in order.iter().enumerate() {
            let (nid, mut e) = seen[vid as usize];
            rank[vid as usize] = pos as u32;
            let count = e.to;
            (e.from, e.to) = (total, total);
            total += count;
            values.push(e);
            let r = &mut name_ranges[name_rank[nid as usize] as usize];
            r.0 = r.0.min(pos as u32);
            r.1 = pos as u32 + 1;
        }
        drop((seen, order));
        // Second pass: series numbers into each value's postings, ascending as numbered.
        let mut postings = vec![0u32; total as usize];
        let mut labels = label_values.iter();
        for i in 0..ends.len() {
            for _ in key_at(i).pairs() {
                let e = &mut values[rank[*labels.next()? as usize] as usize];
                postings[e.to as usize] = i as u32;
                e.to += 1;
            }
        }
        let names = names
            .iter()
            .zip(name_ranges)
            .map(|((n, _), (from, to))| (Box::from(*n), from, to))
            .collect();
        Some(FrozenIndex {
            keys,
            ends,
            names,
            values,
            postings,
        })
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes it holds on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity()
            + self.ends.capacity() * 4
            + self.names.iter().map(|(n, ..)| n.len() + 24).sum::<usize>()
            + self.values.capacity() * std::mem::size_of::<ValueEntry>()
            + self.postings.capacity() * 4
    }

    /// The key of series `id`.
    pub fn key(&self, id: u32) -> SeriesKeyRef<'_> {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        SeriesKeyRef::new_unchecked(&self.keys[start..self.ends[i] as usize])
    }

    /// Series matching every matcher, ascending, as [`Index::select`].
    pub fn select(&self, matchers: &[Matcher]) -> Vec<u32> {
        select(
            self.len(),
            matchers,
            |m| self.postings_for(m),
            |id| self.key(id),
        )
    }

    fn value(&self, e: &ValueEntry) -> &[u8] {
        &self.keys[e.at as usize..(e.at + e.len) as usize]
    }

    /// Series whose label `m.name` is present and matches `m`.
    fn postings_for(&self, m: &Matcher) -> Vec<u32> {
        let Ok(n) = self
            .names
            .binary_search_by(|(n, ..)| n.as_ref().cmp(m.name.as_bytes()))
        else {
            return Vec::new();
        };
        let (_, from, to) = self.names[n];
        let values = &self.values[from as usize..to as usize];
        let list = |e: &ValueEntry| &self.postings[e.from as usize..e.to as usize];
        let find = |v: &[u8]| {
            values
                .binary_search_by(|e| self.value(e).cmp(v))
                .ok()
                .map(|i| list(&values[i]))
        };
        let mut lists: Vec<&[u32]> = Vec::new();
        match (&m.op, m.literal_alternatives()) {
            (MatchOp::Equal, _) => lists.extend(find(m.value.as_bytes())),
            (_, Some(alts)) => lists.extend(alts.iter().filter_map(|a| find(a.as_bytes()))),
            _ => lists.extend(
                values
                    .iter()
                    .filter(|e| m.matches(std::str::from_utf8(self.value(e)).unwrap_or("")))
                    .map(list),
            ),
        }
        union(lists)
    }
}

/// Series among `0..n` matching every matcher, ascending, given the postings of a matcher's
/// label (`postings_for`) and each series' key: the one selection rule of both indexes.
fn select<'k>(
    n: usize,
    matchers: &[Matcher],
    postings_for: impl Fn(&Matcher) -> Vec<u32>,
    key: impl Fn(u32) -> SeriesKeyRef<'k>,
) -> Vec<u32> {
    // Start from the most selective matcher that needs the label to be present.
    let mut candidates: Option<Vec<u32>> = None;
    for m in matchers.iter().filter(|m| !m.matches_empty()) {
        let p = postings_for(m);
        candidates = Some(match candidates {
            None => p,
            Some(c) => intersect(&c, &p),
        });
        if candidates.as_ref().is_some_and(|c| c.is_empty()) {
            return Vec::new();
        }
    }
    let mut ids = candidates.unwrap_or_else(|| (0..n as u32).collect());
    let rest: Vec<&Matcher> = matchers.iter().filter(|m| m.matches_empty()).collect();
    if !rest.is_empty() {
        ids.retain(|&id| {
            let key = key(id);
            rest.iter().all(|m| {
                let v = key.get(m.name.as_bytes()).unwrap_or(b"");
                m.matches(std::str::from_utf8(v).unwrap_or(""))
            })
        });
    }
    ids
}

/// The series in any of `lists` (each ascending), ascending.
fn union(lists: Vec<&[u32]>) -> Vec<u32> {
    match lists.len() {
        0 => Vec::new(),
        1 => lists[0].to_vec(),
        _ => {
            let mut all: Vec<u32> = lists.into_iter().flatten().copied().collect();
            all.sort_unstable();
            all.dedup();
            all
        }
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_model::Labels;

    fn idx() -> Index {
        let mut i = Index::default();
        for l in [
            vec![("__name__", "up"), ("job", "a"), ("env", "prod")],
            vec![("__name__", "up"), ("job", "b")],
            vec![("__name__", "up"), ("job", "c"), ("env", "dev")],
            vec![("__name__", "down"), ("job", "a")],
        ] {
            i.add(Labels::from_pairs(l).unwrap().key());
        }
        i
    }

    #[test]
    fn matcher_table() {
        let i = idx();
        let re = |n: &str, p: &str| Matcher::regex(n, p, false).unwrap();
        let nre = |n: &str, p: &str| Matcher::regex(n, p, true).unwrap();
        let cases: Vec<(Vec<Matcher>, Vec<u32>)> = vec![
            (vec![Matcher::equal("__name__", "up")], vec![0, 1, 2]),
            (
                vec![
                    Matcher::equal("__name__", "up"),
                    Matcher::not_equal("job", "a"),
                ],
                vec![1, 2],
            ),
            (vec![re("job", "a|c")], vec![0, 2, 3]),
            (vec![re("job", "[bc]")], vec![1, 2]),
            (
                vec![Matcher::equal("__name__", "up"), nre("env", "pro.*")],
                vec![1, 2],
            ),
            (
                vec![Matcher::equal("__name__", "up"), Matcher::equal("env", "")],
                vec![1],
            ),
            (
                vec![Matcher::equal("__name__", "up"), re("env", ".+")],
                vec![0, 2],
            ),
            (
                vec![Matcher::equal("__name__", "up"), re("env", ".*")],
                vec![0, 1, 2],
            ),
            (vec![Matcher::equal("nope", "x")], vec![]),
            (vec![Matcher::not_equal("job", "a")], vec![1, 2]),
        ];
        let mut keys = Vec::new();
        let mut ends = Vec::new();
        for id in 0..4 {
            keys.extend_from_slice(i.key(id).as_bytes());
            ends.push(keys.len() as u32);
        }
        let frozen = FrozenIndex::build(keys, ends).unwrap();
        for (ms, want) in cases {
            assert_eq!(i.select(&ms), want, "{ms:?}");
            assert_eq!(frozen.select(&ms), want, "frozen: {ms:?}");
        }
        for id in 0..4 {
            assert_eq!(frozen.key(id), i.key(id));
        }
    }
}
