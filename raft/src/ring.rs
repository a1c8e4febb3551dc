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

/// The slot table: which data group owns each slot, and the epoch each slot was last moved in.
///
/// It is data, kept in the meta group (row `s`) once a slot has moved: rendezvous hashing
/// over the serving groups only proposes where slots should be ([`SlotTable::target`]), and
/// the slot mover moves them there in fenced batches. A cluster whose slots never moved has
/// no row; its table is the rendezvous table of the groups it was created with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotTable {
    /// The owner of each slot, by slot.
    owner: Vec<u64>,
    /// The move that last gave each slot its owner (0: none since the cluster was created).
    epoch: Vec<u64>,
    /// The last move id handed out (moves are numbered from 1).
    pub moves: u64,
}

impl SlotTable {
    /// The table of a cluster created with data groups `1..=groups` (at least 1).
    pub fn new(groups: u64) -> SlotTable {
        assert!(groups >= 1, "a cluster has at least one data group");
        let all: Vec<u64> = (1..=groups).collect();
        SlotTable {
            owner: (0..SLOTS).map(|slot| target(slot, &all)).collect(),
            epoch: vec![0; SLOTS as usize],
            moves: 0,
        }
    }

    pub fn group_of_slot(&self, slot: u32) -> u64 {
        self.owner[slot as usize]
    }

    /// The move that last gave `slot` its owner (0: it never moved).
    pub fn epoch_of_slot(&self, slot: u32) -> u64 {
        self.epoch[slot as usize]
    }

    /// The data group that owns workflow `id`.
    pub fn group_of(&self, id: &str) -> u64 {
        self.group_of_slot(slot_of(id))
    }

    /// How many slots each group owns (groups that own none are absent).
    pub fn slots_per_group(&self) -> std::collections::BTreeMap<u64, u32> {
        let mut counts = std::collections::BTreeMap::new();
        for g in &self.owner {
            *counts.entry(*g).or_insert(0) += 1;
        }
        counts
    }

    /// Records that move `epoch` gave `slots` to `group`.
    pub fn assign(&mut self, slots: &[u32], group: u64, epoch: u64) {
        for s in slots {
            self.owner[*s as usize] = group;
            self.epoch[*s as usize] = epoch;
        }
    }

    /// The next batch to move so that every slot ends where rendezvous hashing over
    /// `serving` puts it: up to `max` slots that all go from one group to one other, lowest
    /// slots first. `None` when every slot is where it should be (or `serving` is empty).
    pub fn next_batch(&self, serving: &[u64], max: usize) -> Option<(u64, u64, Vec<u32>)> {
        if serving.is_empty() {
            return None;
        }
        let mut batch: Option<(u64, u64, Vec<u32>)> = None;
        for slot in 0..SLOTS {
            let (from, to) = (self.group_of_slot(slot), target(slot, serving));
            if from == to {
                continue;
            }
            match &mut batch {
                None => batch = Some((from, to, vec![slot])),
                Some((f, t, slots)) if *f == from && *t == to => slots.push(slot),
                Some(_) => {}
            }
            if batch.as_ref().is_some_and(|(_, _, s)| s.len() >= max) {
                break;
            }
        }
        batch
    }
}

/// Where rendezvous hashing puts `slot` among `groups` (not empty): the group of the highest
/// weight. Adding a group moves a slot only if the new group wins it; removing one moves only
/// its own slots.
pub fn target(slot: u32, groups: &[u64]) -> u64 {
    *groups
        .iter()
        .max_by_key(|g| weight(slot, **g))
        .expect("at least one group")
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

    /// Drives `next_batch` to the end, as the slot mover does, and returns the batches.
    fn settle(table: &mut SlotTable, serving: &[u64]) -> Vec<(u64, u64, usize)> {
        let mut batches = Vec::new();
        while let Some((from, to, slots)) = table.next_batch(serving, 128) {
            assert!(slots.len() <= 128);
            table.moves += 1;
            let epoch = table.moves;
            table.assign(&slots, to, epoch);
            batches.push((from, to, slots.len()));
            assert!(batches.len() < 1000, "the plan does not converge");
        }
        batches
    }

    #[test]
    fn a_new_group_takes_its_share_from_every_group_and_nothing_else_moves() {
        let mut table = SlotTable::new(8);
        let before = table.clone();
        let batches = settle(&mut table, &(1..=9).collect::<Vec<_>>());
        assert!(batches.iter().all(|(_, to, _)| *to == 9), "{batches:?}");
        let moved: usize = batches.iter().map(|b| b.2).sum();
        let share = SLOTS as f64 / 9.0;
        assert!((moved as f64 - share).abs() / share < 0.1, "{moved} moved");
        assert_eq!(table, {
            let mut t = SlotTable::new(9);
            t.moves = table.moves;
            for s in 0..SLOTS {
                t.epoch[s as usize] = table.epoch_of_slot(s);
            }
            t
        });
        for s in 0..SLOTS {
            let moved = before.group_of_slot(s) != table.group_of_slot(s);
            assert_eq!(moved, table.epoch_of_slot(s) > 0);
        }
    }

    #[test]
    fn a_retired_group_gives_its_slots_to_the_others_and_nothing_else_moves() {
        let mut table = SlotTable::new(8);
        let before = table.clone();
        let serving: Vec<u64> = (1..=8).filter(|g| *g != 3).collect();
        let batches = settle(&mut table, &serving);
        assert!(batches.iter().all(|(from, _, _)| *from == 3), "{batches:?}");
        assert!(!table.slots_per_group().contains_key(&3));
        for s in 0..SLOTS {
            if before.group_of_slot(s) != 3 {
                assert_eq!(before.group_of_slot(s), table.group_of_slot(s));
            }
        }
        assert!(table.next_batch(&serving, 128).is_none());
    }
}
