use crate::{Label, Labels, Tenant};
use std::fmt;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Separator after every name and value in a key: 0xFF never occurs in UTF-8, so keys are
/// unambiguous without length prefixes.
const SEP: u8 = 0xFF;

/// A series' canonical label bytes: for each label in name order, `name 0xFF value 0xFF`.
///
/// The tenant is not part of the bytes (storage is laid out per tenant) but is part of the
/// [`SeriesId`], so equal label sets of two tenants never share an id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey(Box<[u8]>);

/// A borrowed [`SeriesKey`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKeyRef<'a>(&'a [u8]);

/// The stable 64-bit identity of a series: xxh3 of its key, seeded by its tenant. Stable across
/// processes and versions; collisions are detected by comparing keys, never silently merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u64);

/// Hashes a map keyed by [`SeriesId`]s (or other xxh3 hashes) by using the id as it is: it is
/// already a hash, so hashing it again is wasted work on the ingest path.
pub type BuildIdHasher = std::hash::BuildHasherDefault<IdHasher>;

/// The hasher of [`BuildIdHasher`]: a `u64` written is the hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl SeriesId {
    /// The id of `key` for `tenant`.
    pub fn of(tenant: &Tenant, key: SeriesKeyRef<'_>) -> SeriesId {
        SeriesId(xxh3_64_with_seed(key.0, tenant_seed(tenant)))
    }
}

/// The hash seed of a tenant, so ids of different tenants differ.
pub fn tenant_seed(tenant: &Tenant) -> u64 {
    xxh3_64(tenant.as_str().as_bytes())
}

impl SeriesKey {
    /// Encodes pairs that are already sorted by unique name.
    pub fn from_sorted_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> SeriesKey {
        let mut buf = Vec::new();
        for (n, v) in pairs {
            encode_pair(&mut buf, n, v);
        }
        SeriesKey(buf.into_boxed_slice())
    }

    /// Wraps bytes previously produced by this type. Returns `None` when they are not a
    /// well-formed key (odd number of parts, missing final separator, bad UTF-8).
    pub fn from_bytes(bytes: &[u8]) -> Option<SeriesKey> {
        SeriesKeyRef::parse(bytes).map(|r| r.to_owned())
    }

    /// Borrows the key.
    pub fn as_ref(&self) -> SeriesKeyRef<'_> {
        SeriesKeyRef(&self.0)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Decodes into owned labels.
    pub fn labels(&self) -> Labels {
        self.as_ref().labels()
    }
}

impl<'a> SeriesKeyRef<'a> {
    /// Checks that `bytes` are a well-formed key and borrows them.
    pub fn parse(bytes: &'a [u8]) -> Option<SeriesKeyRef<'a>> {
        if bytes.is_empty() {
            return Some(SeriesKeyRef(bytes));
        }
        if *bytes.last()? != SEP {
            return None;
        }
        let parts = bytes[..bytes.len() - 1].split(|b| *b == SEP);
        let mut n = 0;
        for p in parts {
            std::str::from_utf8(p).ok()?;
            n += 1;
        }
        (n % 2 == 0).then_some(SeriesKeyRef(bytes))
    }

    /// Wraps bytes known to be a key (from a [`SeriesKey`] or a checked source).
    pub fn new_unchecked(bytes: &'a [u8]) -> SeriesKeyRef<'a> {
        SeriesKeyRef(bytes)
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The (name, value) pairs in name order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let body = if self.0.is_empty() {
            self.0
        } else {
            &self.0[..self.0.len() - 1]
        };
        let mut parts = body.split(|b| *b == SEP).filter(move |_| !body.is_empty());
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    /// Compares as the keys' [`Labels`] compare, which byte order does not (`a` sorts before
    /// `ab` as a label name, after it as key bytes, the separator being 0xFF): for answers
    /// sorted by labels without decoding every key.
    pub fn cmp_as_labels(&self, other: &SeriesKeyRef<'_>) -> std::cmp::Ordering {
        self.pairs().cmp(other.pairs())
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &[u8]) -> Option<&'a [u8]> {
        self.pairs().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Copies into an owned key.
    pub fn to_owned(&self) -> SeriesKey {
        SeriesKey(self.0.into())
    }

    /// Decodes into owned labels.
    pub fn labels(&self) -> Labels {
        Labels::from_sorted(
            self.pairs()
                .map(|(n, v)| Label {
                    name: String::from_utf8_lossy(n).into_owned(),
                    value: String::from_utf8_lossy(v).into_owned(),
                })
                .collect(),
        )
    }
}

pub(crate) fn encode_pair(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.reserve(name.len() + value.len() + 2);
    buf.extend_from_slice(name);
    buf.push(SEP);
    buf.extend_from_slice(value);
    buf.push(SEP);
}

/// A key borrows as its bytes (it orders, hashes and compares as them), so maps of keys are
/// searched with bytes decoded into a buffer.
impl std::borrow::Borrow<[u8]> for SeriesKey {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.labels())
    }
}

impl fmt::Debug for SeriesKeyRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.labels())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn key_label_order_is_labels_order(
            a in proptest::collection::btree_map("[a-c_]{1,3}", "[a-c]{1,3}", 0..4),
            b in proptest::collection::btree_map("[a-c_]{1,3}", "[a-c]{1,3}", 0..4),
        ) {
            let (la, lb) = (Labels::from_pairs(a).unwrap(), Labels::from_pairs(b).unwrap());
            let (ka, kb) = (la.key(), lb.key());
            prop_assert_eq!(ka.as_ref().cmp_as_labels(&kb.as_ref()), la.cmp(&lb));
        }
    }

    #[test]
    fn key_label_order_differs_from_byte_order() {
        let a = Labels::from_pairs([("a", "x")]).unwrap();
        let ab = Labels::from_pairs([("ab", "x")]).unwrap();
        assert!(a < ab);
        assert!(
            a.key() > ab.key(),
            "the separator sorts after every name byte"
        );
        assert!(a.key().as_ref().cmp_as_labels(&ab.key().as_ref()).is_lt());
    }

    #[test]
    fn ids_differ_by_tenant() {
        let k = Labels::from_pairs([("__name__", "up")]).unwrap().key();
        let a = SeriesId::of(&Tenant::new("a").unwrap(), k.as_ref());
        let b = SeriesId::of(&Tenant::new("b").unwrap(), k.as_ref());
        assert_ne!(a, b);
        assert_eq!(a, SeriesId::of(&Tenant::new("a").unwrap(), k.as_ref()));
    }

    #[test]
    fn rejects_malformed() {
        assert!(SeriesKey::from_bytes(b"a\xffb").is_none());
        assert!(SeriesKey::from_bytes(b"a\xff").is_none());
        assert!(SeriesKey::from_bytes(b"a\xffb\xff").is_some());
    }

    proptest! {
        #[test]
        fn round_trip(pairs in proptest::collection::btree_map("[a-z_]{1,8}", "[^\u{0}]{1,12}", 0..8)) {
            let labels = Labels::from_pairs(pairs.clone()).unwrap();
            let key = labels.key();
            prop_assert!(SeriesKey::from_bytes(key.as_bytes()).is_some());
            prop_assert_eq!(key.labels(), labels);
            for (n, v) in &pairs {
                prop_assert_eq!(key.as_ref().get(n.as_bytes()), Some(v.as_bytes()));
            }
        }
    }
}
