//! A small xorshift generator for picks and jitter: no dependency, seeded
//! per thread from the standard library's random hasher keys.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}

/// A uniformly distributed 64-bit value (xorshift64*).
pub(crate) fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A value in `0..n` (`n > 0`), without modulo bias worth measuring.
pub(crate) fn below(n: usize) -> usize {
    ((u128::from(next_u64()) * n as u128) >> 64) as usize
}

/// `d` scaled by a random factor in `[1 - frac, 1 + frac]`.
pub(crate) fn jitter(d: Duration, frac: f64) -> Duration {
    let unit = next_u64() as f64 / u64::MAX as f64; // 0..=1
    d.mul_f64(1.0 - frac + 2.0 * frac * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_covers_the_range_and_stays_in_it() {
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            seen[below(7)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 700), "{seen:?}");
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let d = Duration::from_millis(1000);
        for _ in 0..1000 {
            let j = jitter(d, 0.2);
            assert!(j >= Duration::from_millis(800) && j <= Duration::from_millis(1200));
        }
    }
}
