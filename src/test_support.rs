//! Helpers shared by the crate's unit tests.

/// A small deterministic generator (xorshift64): each call returns a value
/// in `0..n`. Keeps randomized unit tests reproducible without extra crates.
pub(crate) fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed;
    move |n| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    }
}
