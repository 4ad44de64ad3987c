//! A keyed table of the replicated state: a `BTreeMap` that remembers which keys changed since
//! they were last persisted, so the state machine store writes only those records (issue 12:
//! the whole state was one record rewritten every 200 ms, a cost that grew with the state).
//!
//! It reads like the map it wraps (`Deref`); every way to change it goes through a method here,
//! which marks the keys it touches. It serializes as the bare map (snapshot bodies and
//! checkpoint digests are unchanged) and compares by the map only.
//!
//! The map is an `imbl::OrdMap` (a persistent B-tree): a clone shares every node and costs O(1),
//! and a change afterwards copies only the path to the key. A checkpoint is such a copy, taken
//! while applying and encoded elsewhere (a copy of a million records used to hold the state
//! machine for the seconds a `BTreeMap` took to encode).

use imbl::ordmap::Entry;
use imbl::OrdMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Deref;

/// A key as stored: fixed-width big-endian integers and raw bytes keep the store's order equal
/// to the map's.
pub trait TableKey: Ord + Clone {
    /// The stored bytes.
    fn to_key_bytes(&self) -> Vec<u8>;
    /// Back from [`TableKey::to_key_bytes`].
    fn from_key_bytes(bytes: &[u8]) -> Result<Self, String>;
}

impl TableKey for u64 {
    fn to_key_bytes(&self) -> Vec<u8> {
        self.to_be_bytes().to_vec()
    }
    fn from_key_bytes(bytes: &[u8]) -> Result<Self, String> {
        <[u8; 8]>::try_from(bytes)
            .map(u64::from_be_bytes)
            .map_err(|_| format!("a u64 key of {} bytes", bytes.len()))
    }
}

impl TableKey for super::Bytes32 {
    fn to_key_bytes(&self) -> Vec<u8> {
        self.0.to_vec()
    }
    fn from_key_bytes(bytes: &[u8]) -> Result<Self, String> {
        <[u8; 32]>::try_from(bytes)
            .map(super::Bytes32)
            .map_err(|_| format!("a 32-byte key of {} bytes", bytes.len()))
    }
}

impl TableKey for String {
    fn to_key_bytes(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_key_bytes(bytes: &[u8]) -> Result<Self, String> {
        String::from_utf8(bytes.to_vec()).map_err(|_| "a text key that is not UTF-8".into())
    }
}

/// One record to write: key bytes and the value's JSON, or `None` to delete it.
pub type RecordChange = (Vec<u8>, Option<Vec<u8>>);
/// One stored record: key bytes and the value's JSON.
pub type StoredRecord = (Vec<u8>, Vec<u8>);

/// A map that tracks its changed keys (see the module documentation).
#[derive(Clone)]
pub struct Table<K: TableKey, V: Clone> {
    map: OrdMap<K, V>,
    dirty: BTreeSet<K>,
}

impl<K: TableKey, V: Clone> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            map: OrdMap::new(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<K: TableKey, V: Clone> Deref for Table<K, V> {
    type Target = OrdMap<K, V>;
    fn deref(&self) -> &OrdMap<K, V> {
        &self.map
    }
}

impl<K: TableKey + fmt::Debug, V: Clone + fmt::Debug> fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

impl<K: TableKey, V: Clone + PartialEq> PartialEq for Table<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: TableKey, V: Clone + Eq> Eq for Table<K, V> {}

impl<K: TableKey + Serialize, V: Clone + Serialize> Serialize for Table<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.map.iter())
    }
}

impl<'de, K: TableKey + Deserialize<'de>, V: Clone + Deserialize<'de>> Deserialize<'de>
    for Table<K, V>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(Table::from)
    }
}

/// A table whose every record is unwritten (built from a map, as a deserialized one is).
impl<K: TableKey, V: Clone> From<BTreeMap<K, V>> for Table<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        Table {
            map: map.into_iter().collect(),
            dirty: BTreeSet::new(),
        }
    }
}

impl<K: TableKey, V: Clone> FromIterator<(K, V)> for Table<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut t = Table::default();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

impl<K: TableKey, V: Clone> Table<K, V> {
    /// Inserts or replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.dirty.insert(key.clone());
        self.map.insert(key, value)
    }

    /// Removes.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.dirty.insert(key.clone());
        }
        old
    }

    /// The value to change in place (marked changed whether or not it is).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let v = self.map.get_mut(key)?;
        self.dirty.insert(key.clone());
        Some(v)
    }

    /// The map's entry for `key` (marked changed).
    pub fn entry(&mut self, key: K) -> Entry<'_, K, V, imbl::shared_ptr::DefaultSharedPtr> {
        self.dirty.insert(key.clone());
        self.map.entry(key)
    }

    /// Changes every value in place with `f` (all marked changed: for small tables).
    pub fn update_all(&mut self, mut f: impl FnMut(&mut V)) {
        let keys: Vec<K> = self.map.keys().cloned().collect();
        for k in keys {
            if let Some(v) = self.map.get_mut(&k) {
                f(v);
            }
            self.dirty.insert(k);
        }
    }

    /// Keeps the records `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<K> = self
            .map
            .iter()
            .filter(|(k, v)| !keep(k, v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.map.remove(&k);
            self.dirty.insert(k);
        }
    }

    /// Removes every record.
    pub fn clear(&mut self) {
        self.dirty.extend(self.map.keys().cloned());
        self.map.clear();
    }

    /// Whether any record changed since [`Table::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The records changed since the last call, encoded, and forgets them.
    pub fn take_changes(&mut self) -> Vec<RecordChange>
    where
        V: Serialize,
    {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let v = self.map.get(&k).map(encode_value);
                (k.to_key_bytes(), v)
            })
            .collect()
    }

    /// A copy for a full rewrite (cheap: the map is persistent), and forgets the changes.
    pub fn take_all(&mut self) -> Table<K, V> {
        self.dirty.clear();
        Table {
            map: self.map.clone(),
            dirty: BTreeSet::new(),
        }
    }

    /// Calls `f` with every record, encoded, at most `chunk` at a time (a full rewrite of a
    /// large table without all of it encoded at once).
    pub fn for_each_chunk<E>(
        &self,
        chunk: usize,
        mut f: impl FnMut(Vec<StoredRecord>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        V: Serialize,
    {
        let mut out = Vec::with_capacity(chunk.min(self.map.len()));
        for (k, v) in self.map.iter() {
            out.push((k.to_key_bytes(), encode_value(v)));
            if out.len() >= chunk {
                f(std::mem::take(&mut out))?;
            }
        }
        if !out.is_empty() {
            f(out)?;
        }
        Ok(())
    }

    /// Adds a stored record (loading; not marked changed).
    pub fn load(&mut self, key: &[u8], value: &[u8]) -> Result<(), String>
    where
        V: serde::de::DeserializeOwned,
    {
        let k = K::from_key_bytes(key)?;
        let v = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        self.map.insert(k, v);
        Ok(())
    }
}

fn encode_value<V: Serialize>(v: &V) -> Vec<u8> {
    serde_json::to_vec(v).expect("state records serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_remembered_once_and_reads_do_not_count() {
        let mut t: Table<u64, String> = Table::default();
        t.insert(2, "b".into());
        t.insert(1, "a".into());
        t.insert(3, "c".into());
        assert_eq!(t.take_changes().len(), 3);
        assert!(!t.has_changes());
        // Reads.
        assert_eq!(t.get(&1).map(String::as_str), Some("a"));
        assert_eq!(t.len(), 3);
        assert!(!t.has_changes());
        // A removal of a missing key changes nothing.
        assert_eq!(t.remove(&9), None);
        assert!(!t.has_changes());
        t.get_mut(&1).unwrap().push('!');
        t.remove(&2);
        t.entry(4).or_insert_with(|| "d".into());
        t.retain(|k, _| *k != 3);
        let changes = t.take_changes();
        assert_eq!(
            changes,
            vec![
                (1u64.to_be_bytes().to_vec(), Some(b"\"a!\"".to_vec())),
                (2u64.to_be_bytes().to_vec(), None),
                (3u64.to_be_bytes().to_vec(), None),
                (4u64.to_be_bytes().to_vec(), Some(b"\"d\"".to_vec())),
            ]
        );
        // Loading the records written gives the same table.
        let mut back: Table<u64, String> = Table::default();
        let mut chunks = 0;
        t.take_all()
            .for_each_chunk(1, |records| {
                chunks += 1;
                assert_eq!(records.len(), 1);
                records.iter().try_for_each(|(k, v)| back.load(k, v))
            })
            .unwrap();
        assert_eq!(chunks, t.len());
        assert_eq!(back, t);
        assert!(!back.has_changes());
        assert!(!t.has_changes(), "take_all forgets the changes");
    }

    #[test]
    fn it_serializes_as_the_bare_map_and_keys_keep_their_order() {
        let t: Table<String, u64> = [("b".to_string(), 2), ("a".to_string(), 1)]
            .into_iter()
            .collect();
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"a":1,"b":2}"#);
        let back: Table<String, u64> = serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap();
        assert_eq!(back, t);
        assert!(!back.has_changes(), "a loaded table has nothing to write");
        let mut ks: Vec<u64> = vec![300, 2, 1 << 40];
        let mut bytes: Vec<Vec<u8>> = ks.iter().map(TableKey::to_key_bytes).collect();
        ks.sort();
        bytes.sort();
        let back: Vec<u64> = bytes
            .iter()
            .map(|b| u64::from_key_bytes(b).unwrap())
            .collect();
        assert_eq!(back, ks);
        assert!(u64::from_key_bytes(&[1, 2]).is_err());
        assert!(super::super::Bytes32::from_key_bytes(&[0; 31]).is_err());
    }
}
