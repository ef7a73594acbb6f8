//! Counter-based randomness. Every random draw of a render is a pure function of
//! (seed, frame index, purpose, counter), so a segment that starts at frame k needs no RNG state
//! from the segment before it, and the hand-off state stays small and exact.

/// SplitMix64 finaliser: a bijective avalanche mix, good enough to decorrelate counters.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a random stream is used for; distinct purposes never share draws.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Purpose {
    InitNoise = 1,
    Roll = 2,
    Network = 3,
    Jitter = 4,
    /// The sliced Wasserstein loss's projection directions.
    Directions = 5,
    /// The style feature vectors the sliced Wasserstein loss keeps.
    Samples = 6,
    /// Noise that seeds the pixels a camera zooming out or turning brings into view.
    Incoming = 7,
}

/// A deterministic stream keyed by (seed, frame, purpose).
#[derive(Debug, Clone)]
pub struct Stream {
    key: u64,
    counter: u64,
}

impl Stream {
    pub fn new(seed: u64, frame: u64, purpose: Purpose) -> Self {
        let key = mix(mix(mix(seed) ^ frame.wrapping_mul(0xd6e8_feb8_6659_fd93)) ^ purpose as u64);
        Self { key, counter: 0 }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.counter += 1;
        mix(self.key ^ mix(self.counter))
    }

    /// Uniform in [0, 1) with 24 bits, exactly representable as f32.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in [0, n) (n > 0); the modulo bias is below 2^-40 for image sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Standard normal via Box-Muller, for random network weights.
    pub fn next_normal(&mut self) -> f32 {
        let u1 = (self.next_f32() as f64).max(1e-12);
        let u2 = self.next_f32() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// The normals `next_normal` would draw from this point on after skipping `skip` of them,
    /// written into `out`. Each normal is a pure function of its counter, so a long run can be
    /// drawn in pieces, on several threads, and come out the same as drawn in one go.
    pub fn normals_after(&self, skip: u64, out: &mut [f32]) {
        let mut s = Self { key: self.key, counter: self.counter + 2 * skip };
        out.iter_mut().for_each(|v| *v = s.next_normal());
    }

    /// Moves the stream past `n` normals, as `n` calls of `next_normal` would.
    pub fn skip_normals(&mut self, n: u64) {
        self.counter += 2 * n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Normals drawn in pieces (as `Vgg::random` draws a network on several threads) are the
    /// normals drawn one after another, bit for bit, and the stream goes on where it would.
    #[test]
    fn normals_drawn_in_pieces_are_the_ones_drawn_in_a_row() {
        let mut one = Stream::new(5, 0, Purpose::Network);
        let _ = one.next_normal();
        let row: Vec<f32> = (0..1000).map(|_| one.next_normal()).collect();
        let mut pieces = Stream::new(5, 0, Purpose::Network);
        pieces.skip_normals(1);
        let mut drawn = vec![0f32; 1000];
        let (a, b) = drawn.split_at_mut(337);
        pieces.normals_after(0, a);
        pieces.normals_after(337, b);
        assert!(row.iter().zip(&drawn).all(|(x, y)| x.to_bits() == y.to_bits()));
        pieces.skip_normals(1000);
        assert_eq!(pieces.next_normal().to_bits(), one.next_normal().to_bits());
    }

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| 0).scan(Stream::new(7, 3, Purpose::Roll), |s, _| Some(s.next_u64())).collect();
        let b: Vec<u64> = (0..4).map(|_| 0).scan(Stream::new(7, 3, Purpose::Roll), |s, _| Some(s.next_u64())).collect();
        let c: Vec<u64> = (0..4).map(|_| 0).scan(Stream::new(7, 4, Purpose::Roll), |s, _| Some(s.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut s = Stream::new(1, 0, Purpose::InitNoise);
        let mean = (0..10_000).map(|_| s.next_f32() as f64).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
