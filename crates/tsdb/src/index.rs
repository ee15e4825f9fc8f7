//! The head's label index: postings lists (label name → value → series) over its series, and
//! the selection rule it shares with the blocks' indexes (see [`crate::block_index`]).

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
            |ids, rest| {
                ids.retain(|&id| {
                    let key = self.key(id);
                    rest.iter().all(|m| {
                        let v = key.get(m.name.as_bytes()).unwrap_or(b"");
                        m.matches(std::str::from_utf8(v).unwrap_or(""))
                    })
                })
            },
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

/// Series among `0..n` matching every matcher, ascending, given the postings of a matcher's
/// label (`postings_for`) and a filter keeping the series whose labels match every matcher
/// that matches the empty string (`retain_rest`): the one selection rule of the head's index
/// and the blocks'.
pub(crate) fn select(
    n: usize,
    matchers: &[Matcher],
    mut postings_for: impl FnMut(&Matcher) -> Vec<u32>,
    retain_rest: impl FnOnce(&mut Vec<u32>, &[&Matcher]),
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
        retain_rest(&mut ids, &rest);
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
        for (ms, want) in cases {
            assert_eq!(i.select(&ms), want, "{ms:?}");
        }
    }
}
