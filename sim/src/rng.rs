//! Seeded random streams.
//!
//! One seed decides a whole run; it is split into named streams (`net`, `disk.n2`,
//! `client.1`, ...) so that drawing more or fewer numbers from one stream does not reshuffle
//! the others. The generator is SplitMix64, written out here so that a seed means the same
//! schedule whatever crate versions the lock file moves to.

/// FNV-1a 64 of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// The stream called `name` of run `seed`.
    pub fn stream(seed: u64, name: &str) -> Rng {
        Rng {
            state: mix(seed ^ mix(fnv1a(name.as_bytes()))),
        }
    }

    /// A 64-bit seed for another generator (tokio's, openraft's), named like a stream.
    pub fn seed_for(seed: u64, name: &str) -> u64 {
        Rng::stream(seed, name).next_u64()
    }

    /// The next 64 uniform bits: one SplitMix64 step.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "between({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    /// An exponentially distributed duration with the given mean, in the same unit.
    pub fn exp(&mut self, mean: u64) -> u64 {
        let u = 1.0 - self.unit(); // (0, 1]
        ((-u.ln()) * mean as f64).min(mean as f64 * 20.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_stable_and_independent() {
        let a: Vec<u64> = (0..3).map(|_| Rng::stream(1, "net").next_u64()).collect();
        assert_eq!(a[0], a[1]);
        let mut n = Rng::stream(1, "net");
        let mut d = Rng::stream(1, "disk");
        assert_ne!(n.next_u64(), d.next_u64());
        let mut r = Rng::stream(9, "x");
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let v = r.between(3, 5);
            assert!((3..=5).contains(&v));
        }
    }
}
