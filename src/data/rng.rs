//! A small counter-based random source for the data pipeline. Every random choice for a sample
//! (crop offset, flip, PCA colour noise) is drawn from a generator seeded by (seed, epoch, sample
//! index) alone, so batches are identical whatever the number of decoding threads.

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, statistically fine for augmentation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of one sample in one epoch.
    pub fn for_sample(seed: u64, epoch: u64, index: u64) -> Rng {
        Rng(mix(mix(seed ^ 0x5851_f42d_4c95_7f2d)
            ^ mix(epoch.wrapping_add(1))
            ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// The seed of stream `stream` of a run seeded `seed`: distinct (seed, stream) pairs give
    /// unrelated seeds (plain `seed ^ stream` would make seed 0's stream 1 seed 1's stream 0).
    pub fn stream_seed(seed: u64, stream: u64) -> u64 {
        mix(mix(seed) ^ stream)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n <= 1 {
            0
        } else {
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded Fisher-Yates permutation of 0..n.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(mix(seed ^ 0xd1b5_4a32_d192_ed03));
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}
