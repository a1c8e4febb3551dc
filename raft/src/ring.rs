//! Placement: a stable hash maps a workflow id to one of [`SLOTS`] slots, and rendezvous
//! (highest-random-weight) hashing maps each slot to a data group.
//!
//! Rendezvous hashing is consistent: when a group is added, a slot moves only if the new group
//! wins it, which happens for about 1/(G+1) of the slots, and every moved slot moves to the new
//! group. The hash is FNV-1a finished with a SplitMix64 mix: stable across builds, platforms and
//! Rust versions (unlike `DefaultHasher`).

/// Number of slots. Fixed for the life of a cluster: ids hash to slots, slots move between groups.
pub const SLOTS: u32 = 16384;

/// FNV-1a over any number of byte strings, finished with a SplitMix64 mix.
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        StableHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl StableHasher {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// The stable 64-bit hash of `bytes`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::default();
    h.write(bytes);
    h.finish()
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The slot of a workflow id.
pub fn slot_of(id: &str) -> u32 {
    (stable_hash(id.as_bytes()) % u64::from(SLOTS)) as u32
}

/// The slot table: which data group owns each slot. Data groups are numbered `1..=groups`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotTable {
    groups: u64,
    owner: Vec<u64>,
}

impl SlotTable {
    /// The table for `groups` data groups (at least 1).
    pub fn new(groups: u64) -> SlotTable {
        assert!(groups >= 1, "a cluster has at least one data group");
        let owner = (0..SLOTS)
            .map(|slot| {
                (1..=groups)
                    .max_by_key(|g| weight(slot, *g))
                    .expect("at least one group")
            })
            .collect();
        SlotTable { groups, owner }
    }

    pub fn groups(&self) -> u64 {
        self.groups
    }

    pub fn group_of_slot(&self, slot: u32) -> u64 {
        self.owner[slot as usize]
    }

    /// The data group that owns workflow `id`.
    pub fn group_of(&self, id: &str) -> u64 {
        self.group_of_slot(slot_of(id))
    }

    /// How many slots each group owns, indexed by group - 1.
    pub fn slots_per_group(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.groups as usize];
        for g in &self.owner {
            counts[(*g - 1) as usize] += 1;
        }
        counts
    }
}

fn weight(slot: u32, group: u64) -> u64 {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&slot.to_be_bytes());
    key[4..].copy_from_slice(&group.to_be_bytes());
    stable_hash(&key)
}

#[cfg(test)]
mod tests {
    use rand::{distributions::Alphanumeric, Rng, SeedableRng};

    use super::*;

    fn random_ids(n: usize, seed: u64) -> Vec<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let len = rng.gen_range(4..40);
                (&mut rng)
                    .sample_iter(&Alphanumeric)
                    .take(len)
                    .map(char::from)
                    .collect()
            })
            .collect()
    }

    const GOLDEN_ORDER_17: u64 = 11_723_221_612_129_849_438;

    #[test]
    fn hash_is_stable_across_builds() {
        // Changing these values re-homes every workflow of every existing cluster.
        assert_eq!(stable_hash(b"order-17"), GOLDEN_ORDER_17);
        assert_eq!(
            slot_of("order-17"),
            (GOLDEN_ORDER_17 % u64::from(SLOTS)) as u32
        );
    }

    #[test]
    fn every_group_gets_its_share_within_ten_percent() {
        for groups in [3u64, 8, 16] {
            let table = SlotTable::new(groups);
            let ids = random_ids(100_000, groups);
            let mut counts = vec![0usize; groups as usize];
            for id in &ids {
                counts[(table.group_of(id) - 1) as usize] += 1;
            }
            let share = ids.len() as f64 / groups as f64;
            for (g, c) in counts.iter().enumerate() {
                let dev = (*c as f64 - share).abs() / share;
                assert!(
                    dev <= 0.10,
                    "G={groups}: group {} holds {c} ids, {:.1}% off its share {share}",
                    g + 1,
                    dev * 100.0
                );
            }
        }
    }

    #[test]
    fn adding_a_group_moves_at_most_its_share_and_only_to_it() {
        for groups in [3u64, 8, 16] {
            let before = SlotTable::new(groups);
            let after = SlotTable::new(groups + 1);
            let ids = random_ids(100_000, 100 + groups);
            let mut moved = 0usize;
            for id in &ids {
                let (a, b) = (before.group_of(id), after.group_of(id));
                if a != b {
                    assert_eq!(b, groups + 1, "an id moved between two old groups");
                    moved += 1;
                }
            }
            let fraction = moved as f64 / ids.len() as f64;
            let bound = 1.0 / (groups + 1) as f64 + 0.02;
            assert!(
                fraction <= bound,
                "G={groups}: {:.2}% moved, bound {:.2}%",
                fraction * 100.0,
                bound * 100.0
            );
            assert!(fraction > 0.0);
        }
    }
}
