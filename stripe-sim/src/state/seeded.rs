//! The one seeded generator behind every id and every fault decision: a run replays
//! exactly under the same seed and the same sequence of requests.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Seeded {
    seed: u64,
    rng: StdRng,
}

impl Seeded {
    pub fn new(seed: u64) -> Seeded {
        Seeded {
            seed,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Stripe-shaped ids (`pi_3Q...`).
    pub fn id(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        let tail: String = (0..24)
            .map(|_| ALPHABET[self.rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        format!("{prefix}_{tail}")
    }

    /// A fresh `whsec_...` webhook secret.
    pub fn webhook_secret(&mut self) -> String {
        format!("whsec_{}", &self.id("x")[2..])
    }

    /// A rate of 0 draws nothing, so turning a fault off does not shift later draws.
    pub fn roll(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.gen_bool(rate.clamp(0.0, 1.0))
    }

    /// Uniform in `[0, max]`; draws nothing for 0.
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max > 0 {
            self.rng.gen_range(0..=max)
        } else {
            0
        }
    }
}
