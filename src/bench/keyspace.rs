//! Key choice (uniform or scrambled zipfian), key and value bytes, and a
//! small fast PRNG (splitmix64) so every session draws independently.

use std::io::Write as _;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    Uniform,
    Zipfian,
}

/// Draws key indexes in `0..n`.
#[derive(Clone)]
pub enum KeyChooser {
    Uniform {
        n: u64,
    },
    /// YCSB's zipfian generator (Gray et al.), ranks scrambled by FNV so the
    /// hot keys spread over every shard.
    Zipfian {
        n: u64,
        theta: f64,
        alpha: f64,
        zetan: f64,
        eta: f64,
    },
}

impl KeyChooser {
    pub fn new(dist: Dist, n: u64, theta: f64) -> KeyChooser {
        let n = n.max(1);
        match dist {
            Dist::Uniform => KeyChooser::Uniform { n },
            Dist::Zipfian => {
                let zeta = |count: u64| (1..=count).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
                let zetan = zeta(n);
                let zeta2 = zeta(2.min(n));
                let alpha = 1.0 / (1.0 - theta);
                let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
                KeyChooser::Zipfian { n, theta, alpha, zetan, eta }
            }
        }
    }

    pub fn next(&self, rng: &mut Rng) -> u64 {
        match *self {
            KeyChooser::Uniform { n } => rng.below(n),
            KeyChooser::Zipfian { n, theta, alpha, zetan, eta } => {
                let u = rng.f64();
                let uz = u * zetan;
                let rank = if uz < 1.0 {
                    0
                } else if uz < 1.0 + 0.5f64.powf(theta) {
                    1
                } else {
                    ((n as f64) * (eta * u - eta + 1.0).powf(alpha)) as u64
                };
                fnv1a(rank.min(n - 1)) % n
            }
        }
    }
}

fn fnv1a(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Writes key `i` as exactly `size` bytes (`k` then zero-padded digits;
/// longer when `size` is too small for the number) into `out`.
pub fn key_into(out: &mut Vec<u8>, prefix: &str, i: u64, size: usize) {
    out.clear();
    out.extend_from_slice(prefix.as_bytes());
    let width = size.saturating_sub(prefix.len());
    let _ = write!(out, "{i:0width$}");
}

/// A value of `size` URL-, JSON- and RESP-safe bytes.
pub fn value_bytes(size: usize, seed: u64) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = Rng::new(seed);
    (0..size).map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size() {
        let mut k = Vec::new();
        key_into(&mut k, "k", 42, 16);
        assert_eq!(k, b"k000000000000042");
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let z = KeyChooser::new(Dist::Zipfian, 1000, 0.99);
        let mut rng = Rng::new(1);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.next(&mut rng) as usize] += 1;
        }
        counts.sort_unstable();
        let top: u32 = counts.iter().rev().take(10).sum();
        assert!(top > 20_000, "the 10 hottest keys take a large share: {top}");
    }
}
