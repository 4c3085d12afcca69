//! The activation cache: hook-point values keyed by (model instance, input content,
//! hook point), and the memo of interpretation results keyed by everything that
//! determines them, sharing one memory budget and evicting the least recently used.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// A model instance (reloading a name gives a new instance).
    pub model: u64,
    /// Hash of the input's values (bit patterns).
    pub input: u64,
    /// Layer index of the hook point, or `MEMO` for an interpretation result.
    pub hook: usize,
}

/// The `hook` of a memo entry, whose `input` hashes the whole interpretation.
pub const MEMO: usize = usize::MAX;

/// The `hook` of kept forward passes, whose `input` hashes the inputs they ran on.
pub const TAPES: usize = usize::MAX - 1;

#[derive(Clone)]
enum Stored {
    Values(Arc<Vec<f32>>),
    Relation(polars::prelude::DataFrame),
    Tapes(Arc<crate::ops::KeptTapes>),
}

struct Entry {
    stored: Stored,
    bytes: usize,
    last_used: u64,
}

pub struct ActivationCache {
    entries: HashMap<Key, Entry>,
    budget_bytes: usize,
    bytes: usize,
    tick: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// A content hash of one input: equal values give equal keys, whatever dataset they are in.
pub fn input_hash(values: &[f32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    values.len().hash(&mut h);
    // The bytes in one write: a write per value made hashing a visible share of a query.
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
    h.write(&bytes);
    h.finish()
}

impl ActivationCache {
    pub fn new(budget_bytes: usize) -> Self {
        ActivationCache {
            entries: HashMap::new(),
            budget_bytes,
            bytes: 0,
            tick: 0,
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    fn lookup(&mut self, key: &Key) -> Option<Stored> {
        self.tick += 1;
        match self.entries.get_mut(key) {
            Some(e) => {
                e.last_used = self.tick;
                self.hits += 1;
                Some(e.stored.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    pub fn get(&mut self, key: &Key) -> Option<Arc<Vec<f32>>> {
        match self.lookup(key)? {
            Stored::Values(v) => Some(v),
            _ => None,
        }
    }

    /// A memoised interpretation result.
    pub fn get_relation(&mut self, key: &Key) -> Option<polars::prelude::DataFrame> {
        match self.lookup(key)? {
            Stored::Relation(df) => Some(df),
            _ => None,
        }
    }

    /// Forward passes kept for a drill-down on the same inputs.
    pub fn get_tapes(&mut self, key: &Key) -> Option<Arc<crate::ops::KeptTapes>> {
        match self.lookup(key)? {
            Stored::Tapes(t) => Some(t),
            _ => None,
        }
    }

    /// Whether an entry is present, without counting a hit or a miss (for PLAN).
    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    pub fn put(&mut self, key: Key, values: Vec<f32>) {
        let bytes = entry_bytes(&values);
        self.store(key, Stored::Values(Arc::new(values)), bytes);
    }

    pub fn put_tapes(&mut self, key: Key, tapes: crate::ops::KeptTapes) {
        let bytes = tapes.bytes() + 64;
        self.store(key, Stored::Tapes(Arc::new(tapes)), bytes);
    }

    pub fn put_relation(&mut self, key: Key, df: polars::prelude::DataFrame) {
        let bytes = df.estimated_size() + 64;
        self.store(key, Stored::Relation(df), bytes);
    }

    fn store(&mut self, key: Key, stored: Stored, bytes: usize) {
        if bytes > self.budget_bytes {
            return;
        }
        self.tick += 1;
        let entry = Entry {
            stored,
            bytes,
            last_used: self.tick,
        };
        if let Some(old) = self.entries.insert(key, entry) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        self.evict_to(self.budget_bytes);
    }

    /// (activation entries, memoised results, kept forward passes).
    pub fn counts(&self) -> (usize, usize, usize) {
        let memo = self.entries.keys().filter(|k| k.hook == MEMO).count();
        let tapes = self.entries.keys().filter(|k| k.hook == TAPES).count();
        (self.entries.len() - memo - tapes, memo, tapes)
    }

    fn evict_to(&mut self, budget: usize) {
        while self.bytes > budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.bytes -= e.bytes;
                self.evictions += 1;
            }
        }
    }

    pub fn set_budget(&mut self, bytes: usize) {
        self.budget_bytes = bytes;
        self.evict_to(bytes);
    }

    /// Drops every entry of a model instance (it was replaced or unloaded).
    pub fn forget_model(&mut self, model: u64) {
        let before = self.entries.len();
        self.entries.retain(|k, _| k.model != model);
        self.bytes = self.entries.values().map(|e| e.bytes).sum();
        self.evictions += (before - self.entries.len()) as u64;
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    pub fn budget(&self) -> usize {
        self.budget_bytes
    }
}

fn entry_bytes(values: &[f32]) -> usize {
    values.len() * 4 + 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        Key {
            model: 1,
            input: i,
            hook: 0,
        }
    }

    #[test]
    fn evicts_least_recently_used() {
        let mut c = ActivationCache::new(3 * (40 + 64));
        for i in 0..3 {
            c.put(key(i), vec![0.0; 10]);
        }
        assert!(c.get(&key(0)).is_some()); // 0 is now the most recent
        c.put(key(3), vec![0.0; 10]);
        assert!(c.get(&key(1)).is_none(), "1 was the least recently used");
        assert!(c.get(&key(0)).is_some());
        assert_eq!(c.len(), 3);
        assert_eq!(c.evictions, 1);
        c.set_budget(0);
        assert!(c.is_empty());
    }
}
