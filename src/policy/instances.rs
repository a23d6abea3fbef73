//! The table of one counter's instances, by scope value, laid out for the
//! cache.
//!
//! A busy proxy or a long replay holds one instance per (counter, session)
//! or (counter, agent), often hundreds of thousands, touched in no order the
//! caches can guess. Each decision then pays for every cache line a lookup
//! has to wait for. Here an instance is one 64-byte, line-aligned entry
//! holding its key inline (scope values of up to [`INLINE_SCOPE`] bytes:
//! most session, agent and tool ids) next to its state, so a lookup waits
//! for one line instead of three (table entry, key text, log buffer) — see
//! docs/performance.md for the measurements. A short key is hashed from
//! the same two words (one folded multiply with seeds drawn from the
//! table's random hasher), so a lookup reads its text once.
//!
//! Replay's report keeps its per-agent and per-session refusal counts in
//! the same kind of table, for the same reasons.

use std::sync::Arc;

/// Longest scope value kept inside a table entry.
pub(crate) const INLINE_SCOPE: usize = 14;

/// A scope value as a table key and in a reservation: short values inline,
/// longer ones shared (copying either touches no other cache line than the
/// one it is in).
#[derive(Clone)]
pub(crate) enum ScopeText {
    Inline { len: u8, bytes: [u8; INLINE_SCOPE] },
    Shared(Arc<String>),
}

impl ScopeText {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            // Validated (14 bytes at most) rather than assumed: lookups
            // compare words and never come here.
            ScopeText::Inline { len, bytes } => std::str::from_utf8(&bytes[..*len as usize])
                .expect("an inline scope key is a copy of a whole string"),
            ScopeText::Shared(text) => text,
        }
    }
}

impl ScopeText {
    /// The empty value.
    pub(crate) const EMPTY: ScopeText = ScopeText::Inline {
        len: 0,
        bytes: [0; INLINE_SCOPE],
    };
}

impl From<&str> for ScopeText {
    /// Short values inline (unused bytes zero, so equal values have equal
    /// arrays), longer ones shared.
    fn from(text: &str) -> ScopeText {
        Probe::new(text).key(text)
    }
}

impl ScopeText {
    /// Whether this key is the value `probe` was made from (`text` is that
    /// value): short values compare as two words, without a call to
    /// `memcmp` or another look at `text`.
    #[inline]
    fn matches(&self, probe: &Probe, text: &str) -> bool {
        match (self, probe) {
            (ScopeText::Inline { len: a, bytes }, Probe::Short { len: b, words }) => {
                a == b && words_of(bytes) == *words
            }
            (ScopeText::Shared(key), Probe::Long) => key.as_str() == text,
            _ => false,
        }
    }
}

/// The 14 inline bytes as two little-endian words (the second one's top
/// two bytes zero).
#[inline]
fn words_of(bytes: &[u8; INLINE_SCOPE]) -> (u64, u64) {
    let (lo, hi) = bytes.split_at(8);
    let mut high = [0; 8];
    high[..INLINE_SCOPE - 8].copy_from_slice(hi);
    (
        u64::from_le_bytes(lo.try_into().unwrap_or_default()),
        u64::from_le_bytes(high),
    )
}

/// What a lookup compares keys with: a short value as the two words of
/// its inline form, built with register loads (no copy through memory that
/// the compare would then wait for); a long one is compared as text.
enum Probe {
    Short { len: u8, words: (u64, u64) },
    Long,
}

impl Probe {
    #[inline]
    fn new(scope: &str) -> Probe {
        let b = scope.as_bytes();
        let n = b.len();
        let load8 = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
        let load4 = |at: usize| {
            u64::from(u32::from_le_bytes(
                b[at..at + 4].try_into().unwrap_or_default(),
            ))
        };
        // Overlapping loads of the first and the last bytes: the overlap
        // holds the same bytes in both, so OR-ing them is exact.
        let words = match n {
            0 => (0, 0),
            1..=3 => (
                u64::from(b[0])
                    | u64::from(b[n / 2]) << (8 * (n / 2))
                    | u64::from(b[n - 1]) << (8 * (n - 1)),
                0,
            ),
            4..=7 => (load4(0) | load4(n - 4) << (8 * (n - 4)), 0),
            8 => (load8(0), 0),
            9..=INLINE_SCOPE => (load8(0), load8(n - 8) >> (8 * (16 - n))),
            _ => return Probe::Long,
        };
        Probe::Short {
            len: n as u8,
            words,
        }
    }

    /// The key of a new instance for the value this probe was made from.
    fn key(&self, text: &str) -> ScopeText {
        match *self {
            Probe::Short {
                len,
                words: (lo, hi),
            } => {
                let mut bytes = [0; INLINE_SCOPE];
                bytes[..8].copy_from_slice(&lo.to_le_bytes());
                bytes[8..].copy_from_slice(&hi.to_le_bytes()[..INLINE_SCOPE - 8]);
                ScopeText::Inline { len, bytes }
            }
            Probe::Long => ScopeText::Shared(Arc::new(text.to_owned())),
        }
    }
}

impl PartialEq for ScopeText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Debug for ScopeText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// How a table hashes its keys: foldhash (randomly seeded) for long
/// values; for short ones, one folded multiply of their two inline words
/// with two seeds drawn from the same random hasher.
#[derive(Clone)]
struct KeyHasher {
    long: hashbrown::DefaultHashBuilder,
    seeds: (u64, u64),
}

impl Default for KeyHasher {
    fn default() -> Self {
        use std::hash::BuildHasher;
        let long = hashbrown::DefaultHashBuilder::default();
        let seeds = (long.hash_one(0u8), long.hash_one(1u8));
        KeyHasher { long, seeds }
    }
}

impl KeyHasher {
    #[inline]
    fn short(&self, len: u8, (lo, hi): (u64, u64)) -> u64 {
        // `hi`'s top two bytes are zero: the length goes there.
        folded_multiply(
            lo ^ self.seeds.0,
            hi ^ self.seeds.1 ^ (u64::from(len) << 56),
        )
    }

    fn long(&self, text: &str) -> u64 {
        use std::hash::BuildHasher;
        self.long.hash_one(text)
    }

    /// A lookup's hash, from the words its probe already holds (no second
    /// pass over a short text).
    #[inline]
    fn probe(&self, probe: &Probe, text: &str) -> u64 {
        match *probe {
            Probe::Short { len, words } => self.short(len, words),
            Probe::Long => self.long(text),
        }
    }

    /// A stored key's hash: the same as its probe's.
    fn key(&self, key: &ScopeText) -> u64 {
        match key {
            ScopeText::Inline { len, bytes } => self.short(*len, words_of(bytes)),
            ScopeText::Shared(text) => self.long(text),
        }
    }
}

/// One instance: its key and its state in one cache line (when `V` is at
/// most 48 bytes).
#[derive(Debug, Clone)]
#[repr(align(64))]
struct Instance<V> {
    key: ScopeText,
    value: V,
}

/// The size of one table entry holding a `V` (a whole number of cache
/// lines; one when `V` is at most 48 bytes).
pub(crate) const fn entry_size<V>() -> usize {
    std::mem::size_of::<Instance<V>>()
}

/// One counter's instances by scope value (hashbrown, foldhash randomly
/// seeded).
#[derive(Clone)]
pub(crate) struct Instances<V> {
    table: hashbrown::HashTable<Instance<V>>,
    hasher: KeyHasher,
}

impl<V> Default for Instances<V> {
    fn default() -> Self {
        Instances {
            table: hashbrown::HashTable::new(),
            hasher: KeyHasher::default(),
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for Instances<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.table.iter().map(|i| (&i.key, &i.value)))
            .finish()
    }
}

/// `a × b` folded to 64 bits (the high and low halves XORed): what
/// foldhash is built on.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl<V> Instances<V> {
    #[inline]
    fn hash_probe(&self, probe: &Probe, scope: &str) -> u64 {
        self.hasher.probe(probe, scope)
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn get(&self, scope: &str) -> Option<&V> {
        let probe = Probe::new(scope);
        self.table
            .find(self.hash_probe(&probe, scope), |i| {
                i.key.matches(&probe, scope)
            })
            .map(|i| &i.value)
    }

    pub(crate) fn get_mut(&mut self, scope: &str) -> Option<&mut V> {
        let probe = Probe::new(scope);
        let hash = self.hash_probe(&probe, scope);
        self.table
            .find_mut(hash, |i| i.key.matches(&probe, scope))
            .map(|i| &mut i.value)
    }

    /// The instance of `scope`, made with `fresh` if there is none; also
    /// its key (to copy into a reservation) and whether it is new.
    pub(crate) fn get_or_insert_with(
        &mut self,
        scope: &str,
        fresh: impl FnOnce() -> V,
    ) -> (&ScopeText, &mut V, bool) {
        let probe = Probe::new(scope);
        let hash = self.hash_probe(&probe, scope);
        let hasher = &self.hasher;
        let entry = self.table.entry(
            hash,
            |i| i.key.matches(&probe, scope),
            |i| hasher.key(&i.key),
        );
        let (instance, created) = match entry {
            hashbrown::hash_table::Entry::Occupied(o) => (o.into_mut(), false),
            hashbrown::hash_table::Entry::Vacant(v) => (
                v.insert(Instance {
                    key: probe.key(scope),
                    value: fresh(),
                })
                .into_mut(),
                true,
            ),
        };
        (&instance.key, &mut instance.value, created)
    }

    /// Every instance's scope value and state, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &V)> {
        self.table.iter().map(|i| (i.key.as_str(), &i.value))
    }

    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.table.iter_mut().map(|i| &mut i.value)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&mut V) -> bool) {
        self.table.retain(|i| keep(&mut i.value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_scope_values_are_distinct_keys() {
        let mut t: Instances<u32> = Instances::default();
        let long = "a-session-id-longer-than-fourteen-bytes";
        for (n, scope) in ["", "s", "fourteen-bytes", long, "fifteen-bytes!!"]
            .into_iter()
            .enumerate()
        {
            let (key, v, created) = t.get_or_insert_with(scope, || n as u32);
            assert!(created);
            assert_eq!(key.as_str(), scope);
            assert_eq!(*v, n as u32);
        }
        assert_eq!(t.len(), 5);
        assert_eq!(t.get(long), Some(&3));
        assert_eq!(t.get("fourteen-bytes"), Some(&2));
        assert_eq!(t.get("fourteen-byte"), None);
        let (_, v, created) = t.get_or_insert_with("s", || 99);
        assert!(!created);
        *v += 10;
        assert_eq!(t.get_mut("s").copied(), Some(11));
        t.retain(|v| *v % 2 == 1);
        assert_eq!(t.len(), 2);
        assert!(matches!(ScopeText::from(long), ScopeText::Shared(_)));
        // Every length's probe is the inline key's words, and its key the
        // value itself.
        let text = "abcdefghijklmnopq";
        for n in 0..=INLINE_SCOPE {
            let value = &text[..n];
            // The inline form built byte by byte, independently of the
            // probe's word loads.
            let mut bytes = [0; INLINE_SCOPE];
            bytes[..n].copy_from_slice(value.as_bytes());
            let probe = Probe::new(value);
            assert!(
                matches!(probe, Probe::Short { len, words } if len as usize == n && words == words_of(&bytes)),
                "{n} bytes"
            );
            assert!(
                matches!(ScopeText::from(value), ScopeText::Inline { len, bytes: b } if len as usize == n && b == bytes),
                "{n} bytes"
            );
            assert_eq!(probe.key(value).as_str(), value);
            // One byte changed anywhere is another key.
            for at in 0..n {
                let mut other = value.as_bytes().to_vec();
                other[at] = b'_';
                let other = std::str::from_utf8(&other).unwrap();
                assert!(!ScopeText::from(value).matches(&Probe::new(other), other));
            }
        }
        assert!(matches!(
            ScopeText::from("fourteen-bytes"),
            ScopeText::Inline { len: 14, .. }
        ));
    }

    /// A stored key hashes as its probe did: every value is found again
    /// after the table has grown (and rehashed its keys) many times over.
    #[test]
    fn keys_are_found_after_the_table_grows() {
        let mut t: Instances<usize> = Instances::default();
        let values: Vec<String> = (0..5000)
            .map(|i| match i % 3 {
                0 => format!("a{i}"),
                1 => format!("session-{i:05}"),
                _ => format!("a-value-longer-than-fourteen-bytes-{i}"),
            })
            .collect();
        for (i, v) in values.iter().enumerate() {
            let (_, _, created) = t.get_or_insert_with(v, || i);
            assert!(created, "{v}");
        }
        for (i, v) in values.iter().enumerate() {
            assert_eq!(t.get(v), Some(&i), "{v}");
            let (_, found, created) = t.get_or_insert_with(v, || usize::MAX);
            assert!(!created && *found == i, "{v}");
        }
        assert_eq!(t.len(), values.len());
    }
}
