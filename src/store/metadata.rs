//! `<store>/<pod>/metadata.json`: the durable registry of a pod's children.
//!
//! The runtime rewrites this file with a plain truncating write and no lock, so a reader can
//! catch it empty or half-written. Two shapes are read here: a lean, read-only
//! [`RegistryFile`] for serving (a parent may have 100,000 children), and the whole
//! [`Metadata`] object for the rare rewrite, kept in its original key order so that nothing
//! podfs does not model is lost or moved. podfs only writes this file while the owner is not
//! live, and then atomically.

use std::fmt;
use std::path::Path;
use std::thread;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::scope::{Rule, StoredRule};
use crate::store::{atomic, insert_after, required_str, shape_error, to_runtime_json};

/// How often and how long a blocking caller retries a read that does not parse (the
/// runtime's torn writes last microseconds). Never used on a FUSE request thread.
pub const PARSE_RETRIES: u32 = 3;
pub const PARSE_RETRY_DELAY: Duration = Duration::from_millis(20);

/// The runtime creates the file with the default umask; a new file gets this mode.
const DEFAULT_MODE: u32 = 0o644;

// ---------------------------------------------------------------------------------------
// The lean view

/// A child as podfs serves it: the four fields of a registry entry, stored compactly.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildRecord {
    pub name: Box<str>,
    pub socket_path: Box<str>,
    pub scope_delegated: Box<[Rule]>,
    pub callback_address: Box<str>,
}

impl ChildRecord {
    /// The rules in the shape the runtime's files use, for reclaiming them.
    pub fn stored_rules(&self) -> Vec<StoredRule> {
        self.scope_delegated.iter().map(Rule::to_stored).collect()
    }
}

/// What podfs serves from a `metadata.json`: the children in registry order, and the names
/// in the append-only reclaimed list (which may repeat).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegistryFile {
    pub spawned: Vec<ChildRecord>,
    pub reclaimed: Vec<Box<str>>,
    /// Entries of either list that do not have the runtime's shape: skipped, so that one
    /// bad entry does not hide its siblings (the caller warns).
    pub malformed: usize,
}

/// Parse the lean view. The name key is the generation's; every other field is skipped
/// without building a value.
pub fn parse_registry(bytes: &[u8], gen: &Generation) -> serde_json::Result<RegistryFile> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let file = RegistrySeed(gen.name_key).deserialize(&mut de)?;
    de.end()?;
    Ok(file)
}

/// Matches a map key against a list of field names without allocating.
struct KeySeed<'a>(&'a [&'a str]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

struct RegistrySeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for RegistrySeed<'_> {
    type Value = RegistryFile;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RegistrySeed<'_> {
    type Value = RegistryFile;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a metadata.json object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let fields = [self.0, "spawned_children", "reclaimed_children"];
        let mut file = RegistryFile::default();
        let mut named = false;
        while let Some(key) = map.next_key_seed(KeySeed(&fields))? {
            match key {
                Some(0) => {
                    let _: String = map.next_value()?;
                    named = true;
                }
                Some(1) => {
                    let raws: Vec<&'de RawValue> = map.next_value()?;
                    file.spawned.reserve(raws.len());
                    for raw in raws {
                        match each(raw, ChildSeed(self.0)) {
                            Some(child) => file.spawned.push(child),
                            None => file.malformed += 1,
                        }
                    }
                }
                Some(2) => {
                    let raws: Vec<&'de RawValue> = map.next_value()?;
                    for raw in raws {
                        match each(raw, NameSeed(self.0)) {
                            Some(name) => file.reclaimed.push(name),
                            None => file.malformed += 1,
                        }
                    }
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !named {
            return Err(de::Error::missing_field("name"));
        }
        Ok(file)
    }
}

/// One list entry read with `seed`; `None` when it does not have the expected shape.
fn each<'de, S: DeserializeSeed<'de>>(raw: &'de RawValue, seed: S) -> Option<S::Value> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    seed.deserialize(&mut de).ok()
}

#[derive(Clone, Copy)]
struct ChildSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for ChildSeed<'_> {
    type Value = ChildRecord;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ChildSeed<'_> {
    type Value = ChildRecord;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a spawned child")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let fields = [self.0, "socket_path", "scope_delegated", "callback_address"];
        let (mut name, mut socket, mut scope, mut callback) = (None, None, None, None);
        while let Some(key) = map.next_key_seed(KeySeed(&fields))? {
            match key {
                Some(0) => name = Some(map.next_value::<String>()?.into_boxed_str()),
                Some(1) => socket = Some(map.next_value::<String>()?.into_boxed_str()),
                Some(2) => scope = Some(map.next_value::<Vec<Rule>>()?.into_boxed_slice()),
                Some(3) => callback = Some(map.next_value::<String>()?.into_boxed_str()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(ChildRecord {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            socket_path: socket.ok_or_else(|| de::Error::missing_field("socket_path"))?,
            scope_delegated: scope.ok_or_else(|| de::Error::missing_field("scope_delegated"))?,
            callback_address: callback
                .ok_or_else(|| de::Error::missing_field("callback_address"))?,
        })
    }
}

/// Only the name of a reclaimed entry.
#[derive(Clone, Copy)]
struct NameSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = Box<str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_> {
    type Value = Box<str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reclaimed child")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let fields = [self.0];
        let mut name = None;
        while let Some(key) = map.next_key_seed(KeySeed(&fields))? {
            match key {
                Some(0) => name = Some(map.next_value::<String>()?.into_boxed_str()),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        name.ok_or_else(|| de::Error::missing_field("name"))
    }
}

// ---------------------------------------------------------------------------------------
// The whole file, for rewrites

/// A registry entry as the runtime writes it (for building homes and the reference pods).
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnedChild {
    pub name: String,
    pub socket_path: String,
    pub scope_delegated: Vec<StoredRule>,
    pub callback_address: String,
}

impl SpawnedChild {
    /// The JSON object, keys in the runtime's order.
    pub fn to_value(&self, gen: &Generation) -> Value {
        let mut o = Map::new();
        o.insert(gen.name_key.into(), Value::String(self.name.clone()));
        o.insert("socket_path".into(), self.socket_path.clone().into());
        o.insert(
            "scope_delegated".into(),
            serde_json::to_value(&self.scope_delegated).expect("rules serialise"),
        );
        o.insert(
            "callback_address".into(),
            self.callback_address.clone().into(),
        );
        Value::Object(o)
    }

    pub fn from_value(value: &Value, gen: &Generation) -> serde_json::Result<SpawnedChild> {
        let o = value
            .as_object()
            .ok_or_else(|| shape_error("a spawned child is not an object"))?;
        let rules = o
            .get("scope_delegated")
            .ok_or_else(|| shape_error("missing field `scope_delegated`"))?;
        Ok(SpawnedChild {
            name: required_str(o, gen.name_key)?.to_string(),
            socket_path: required_str(o, "socket_path")?.to_string(),
            scope_delegated: serde_json::from_value(rules.clone())?,
            callback_address: required_str(o, "callback_address")?.to_string(),
        })
    }
}

/// A whole `metadata.json`, in its original key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    fields: Map<String, Value>,
    gen: &'static Generation,
}

/// The runtime's declared order around the two lists, so a list that was omitted while
/// empty reappears in its place.
const BEFORE_SPAWNED: &[&str] = &[
    "pod_name",
    "worker_name",
    "active",
    "workspace_root",
    "workspace_id",
    "peers",
];

impl Metadata {
    /// `{"<name_key>": name}`, the file the runtime starts from.
    pub fn new(name: &str, gen: &'static Generation) -> Self {
        let mut fields = Map::new();
        fields.insert(gen.name_key.into(), Value::String(name.into()));
        Metadata { fields, gen }
    }

    /// Parse, checking the shape a rewrite relies on: the name, and both lists as arrays.
    /// Entries are not checked one by one: a malformed entry of another child survives a
    /// rewrite untouched rather than blocking every change to the file.
    pub fn parse(bytes: &[u8], gen: &'static Generation) -> serde_json::Result<Self> {
        let fields: Map<String, Value> = serde_json::from_slice(bytes)?;
        let meta = Metadata { fields, gen };
        required_str(&meta.fields, gen.name_key)?;
        for list in ["spawned_children", "reclaimed_children"] {
            if meta.fields.get(list).is_some_and(|v| !v.is_array()) {
                return Err(shape_error(format!("`{list}` is not an array")));
            }
        }
        Ok(meta)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        to_runtime_json(&self.fields)
    }

    pub fn name(&self) -> &str {
        self.fields
            .get(self.gen.name_key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// A field podfs does not model (for tests and the reference pods).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    pub fn set(&mut self, key: &str, value: Value) {
        match self.fields.get_mut(key) {
            Some(slot) => *slot = value,
            None => insert_after(&mut self.fields, BEFORE_SPAWNED, key, value),
        }
    }

    fn list(&self, key: &str) -> &[Value] {
        self.fields
            .get(key)
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    fn entry_name<'v>(&self, entry: &'v Value) -> Option<&'v str> {
        entry.get(self.gen.name_key).and_then(Value::as_str)
    }

    pub fn children(&self) -> serde_json::Result<Vec<SpawnedChild>> {
        self.list("spawned_children")
            .iter()
            .map(|c| SpawnedChild::from_value(c, self.gen))
            .collect()
    }

    /// The runtime keys children by name and takes the first match; so does podfs.
    pub fn child(&self, name: &str) -> Option<SpawnedChild> {
        let entry = self
            .list("spawned_children")
            .iter()
            .find(|c| self.entry_name(c) == Some(name))?;
        SpawnedChild::from_value(entry, self.gen).ok()
    }

    /// How often `name` appears in the (append-only, never pruned) reclaimed list.
    pub fn times_reclaimed(&self, name: &str) -> usize {
        self.list("reclaimed_children")
            .iter()
            .filter(|c| self.entry_name(c) == Some(name))
            .count()
    }

    /// The runtime's `set_spawned_children`: replace the list wholesale (omitted when empty).
    pub fn set_children(&mut self, children: &[SpawnedChild]) {
        let list: Vec<Value> = children.iter().map(|c| c.to_value(self.gen)).collect();
        self.set_list("spawned_children", list);
    }

    fn set_list(&mut self, key: &str, list: Vec<Value>) {
        if list.is_empty() {
            self.fields.shift_remove(key);
            return;
        }
        match self.fields.get_mut(key) {
            Some(slot) => *slot = Value::Array(list),
            None => {
                let mut after = BEFORE_SPAWNED.to_vec();
                after.push("spawned_children");
                insert_after(&mut self.fields, &after, key, Value::Array(list));
            }
        }
    }

    /// The runtime's `reclaim_spawned_children` for one child: drop **every** spawned entry
    /// with that name, then append one reclaimed entry (name and rules of the first entry).
    /// Returns whether anything changed (the child was listed).
    pub fn reclaim_child(&mut self, name: &str) -> bool {
        let key = self.gen.name_key;
        let named = |c: &Value| c.get(key).and_then(Value::as_str) == Some(name);
        // In place: a parent may have thousands of children, and this runs per `rm -r`.
        let Some(Value::Array(spawned)) = self.fields.get_mut("spawned_children") else {
            return false;
        };
        let Some(first) = spawned.iter().position(named) else {
            return false;
        };
        let rules = spawned[first]
            .get_mut("scope_delegated")
            .map(Value::take)
            .unwrap_or(Value::Array(Vec::new()));
        spawned.retain(|c| !named(c));
        if spawned.is_empty() {
            self.fields.shift_remove("spawned_children");
        }
        self.push_reclaimed_value(name, rules);
        true
    }

    /// Append a `{name, scope_delegated}` entry to `reclaimed_children`, as the runtime
    /// does for a child its registry already dropped.
    pub fn push_reclaimed(&mut self, name: &str, rules: &[StoredRule]) {
        let rules = serde_json::to_value(rules).expect("rules serialise");
        self.push_reclaimed_value(name, rules);
    }

    fn push_reclaimed_value(&mut self, name: &str, rules: Value) {
        let mut reclaimed = Map::new();
        reclaimed.insert(self.gen.name_key.into(), Value::String(name.into()));
        reclaimed.insert("scope_delegated".into(), rules);
        match self.fields.get_mut("reclaimed_children") {
            Some(Value::Array(list)) => list.push(Value::Object(reclaimed)),
            _ => self.set_list("reclaimed_children", vec![Value::Object(reclaimed)]),
        }
    }
}

/// One read of the file. `NotFound` when it is missing, `Corrupt` when it does not parse.
pub fn read(path: &Path, gen: &'static Generation) -> Result<Metadata> {
    let bytes = read_bytes(path)?;
    Metadata::parse(&bytes, gen).map_err(|e| Error::corrupt(path, e))
}

pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::NotFound(path.display().to_string()))
        }
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// [`read`], retried briefly when the file does not parse, because the runtime writes it in
/// place. Sleeps: only for blocking contexts (a removal on the worker pool, a demo pod).
pub fn read_settled(path: &Path, gen: &'static Generation) -> Result<Metadata> {
    let mut attempt = 0;
    loop {
        match read(path, gen) {
            Err(Error::Corrupt { .. }) if attempt < PARSE_RETRIES => {
                attempt += 1;
                thread::sleep(PARSE_RETRY_DELAY);
            }
            other => return other,
        }
    }
}

/// Atomic rewrite (temp file, fsync, rename), keeping the file's mode. Only call this while
/// the owning pod is not live: a live owner would overwrite the change from memory.
pub fn write(path: &Path, meta: &Metadata) -> Result<()> {
    atomic::replace_file(path, &meta.to_bytes(), DEFAULT_MODE)
}

/// The file name in a pod's directory.
pub const FILE: &str = "metadata.json";

/// One read of the `metadata.json` in the pod directory `dir` (never through a symlink).
pub fn read_in(dir: &Dir, gen: &'static Generation) -> Result<Metadata> {
    let path = dir.path().join(FILE);
    match dir.read(FILE) {
        Ok((bytes, _)) => Metadata::parse(&bytes, gen).map_err(|e| Error::corrupt(&path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::NotFound(path.display().to_string()))
        }
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// [`write`] into the pod directory `dir`; the new file keeps the old one's mode and
/// owner.
pub fn write_in(dir: &Dir, meta: &Metadata) -> Result<()> {
    dir.replace(FILE, &meta.to_bytes(), DEFAULT_MODE)
        .map_err(|e| Error::io(format!("replace {}", dir.path().join(FILE).display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{INSOMNIA_5472, YOI_WORKER_485918EB};
    use crate::test_fixtures as fixtures;

    #[test]
    fn fixtures_round_trip_byte_for_byte() {
        for (gen, rels) in [
            (
                &INSOMNIA_5472,
                &[
                    "insomnia-5472/live/pods/parent/metadata.json",
                    "insomnia-5472/live/pods/child1/metadata.json",
                    "insomnia-5472/after-stop/pods/parent/metadata.json",
                    "insomnia-5472/after-crash-restore/pods/parent/metadata.json",
                ][..],
            ),
            (
                &YOI_WORKER_485918EB,
                &[
                    "yoi-485918eb/live/workers/parent/metadata.json",
                    "yoi-485918eb/live/workers/child1/metadata.json",
                    "yoi-485918eb/after-stop/workers/parent/metadata.json",
                    "yoi-485918eb/after-crash-restore/workers/parent/metadata.json",
                    "yoi-485918eb/after-external-reclaim/workers/parent/metadata.json",
                ][..],
            ),
        ] {
            for rel in rels {
                let text = fixtures::read(rel, "/home/t");
                let meta = Metadata::parse(text.as_bytes(), gen).unwrap();
                assert_eq!(String::from_utf8(meta.to_bytes()).unwrap(), text, "{rel}");
            }
        }
    }

    #[test]
    fn the_lean_view_agrees_with_the_whole_file() {
        for (gen, rel) in [
            (
                &INSOMNIA_5472,
                "insomnia-5472/after-crash-restore/pods/parent/metadata.json",
            ),
            (
                &YOI_WORKER_485918EB,
                "yoi-485918eb/after-stop/workers/parent/metadata.json",
            ),
        ] {
            let text = fixtures::read(rel, "/h");
            let lean = parse_registry(text.as_bytes(), gen).unwrap();
            let whole = Metadata::parse(text.as_bytes(), gen).unwrap();
            let children = whole.children().unwrap();
            assert_eq!(lean.spawned.len(), children.len());
            for (a, b) in lean.spawned.iter().zip(&children) {
                assert_eq!(&*a.name, b.name);
                assert_eq!(&*a.socket_path, b.socket_path);
                assert_eq!(&*a.callback_address, b.callback_address);
                assert_eq!(a.stored_rules(), b.scope_delegated);
            }
            for r in &lean.reclaimed {
                assert!(whole.times_reclaimed(r) > 0);
            }
            // The other generation's name key is not this one's.
            let other = if gen == &INSOMNIA_5472 {
                &YOI_WORKER_485918EB
            } else {
                &INSOMNIA_5472
            };
            assert!(parse_registry(text.as_bytes(), other).is_err());
        }
    }

    #[test]
    fn reclaim_matches_the_runtime_after_stop_in_both_generations() {
        for (gen, live, after) in [
            (
                &INSOMNIA_5472,
                "insomnia-5472/live/pods/parent/metadata.json",
                "insomnia-5472/after-stop/pods/parent/metadata.json",
            ),
            (
                &YOI_WORKER_485918EB,
                "yoi-485918eb/live/workers/parent/metadata.json",
                "yoi-485918eb/after-stop/workers/parent/metadata.json",
            ),
        ] {
            let mut meta = Metadata::parse(fixtures::read(live, "/h").as_bytes(), gen).unwrap();
            assert!(meta.reclaim_child("child1"));
            assert_eq!(
                String::from_utf8(meta.to_bytes()).unwrap(),
                fixtures::read(after, "/h"),
                "{live}"
            );
            assert!(
                !meta.reclaim_child("child1"),
                "second reclaim must be a no-op"
            );
        }
    }

    #[test]
    fn reclaim_drops_every_duplicate_and_appends_once() {
        let mut meta = Metadata::new("p", &INSOMNIA_5472);
        let child = SpawnedChild {
            name: "c".into(),
            socket_path: "/r/c/sock".into(),
            scope_delegated: vec![StoredRule::new("/w", "write", true)],
            callback_address: String::new(),
        };
        meta.set_children(&[child.clone(), child]);
        assert!(meta.reclaim_child("c"));
        assert!(meta.children().unwrap().is_empty());
        assert_eq!(meta.times_reclaimed("c"), 1);
        let text = String::from_utf8(meta.to_bytes()).unwrap();
        assert!(
            !text.contains("spawned_children"),
            "empty list must be omitted"
        );
    }

    #[test]
    fn unknown_fields_survive_in_place() {
        let mut value: Value = serde_json::from_str(&fixtures::read(
            "insomnia-5472/live/pods/parent/metadata.json",
            "/h",
        ))
        .unwrap();
        value["future_field"] = serde_json::json!({"keep": [1, 2.5, 3]});
        value["spawned_children"][1]["note"] = serde_json::json!("kept too");
        let bytes = serde_json::to_vec_pretty(&value).unwrap();
        let mut meta = Metadata::parse(&bytes, &INSOMNIA_5472).unwrap();
        assert!(meta.reclaim_child("child1"));
        let after: Value = serde_json::from_slice(&meta.to_bytes()).unwrap();
        assert_eq!(after["future_field"], value["future_field"]);
        assert_eq!(after["active"], value["active"]);
        assert_eq!(after["spawned_children"][0]["note"], "kept too");
        assert_eq!(after["reclaimed_children"][0]["pod_name"], "child1");
        let keys: Vec<&String> = after.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "pod_name",
                "active",
                "spawned_children",
                "reclaimed_children",
                "future_field"
            ]
        );
    }

    #[test]
    fn shapes_the_runtime_refuses_do_not_parse() {
        let gen = &INSOMNIA_5472;
        assert!(Metadata::parse(br#"{"pod_name":"x"}"#, gen).is_ok());
        assert!(parse_registry(br#"{"pod_name":"x"}"#, gen)
            .unwrap()
            .spawned
            .is_empty());
        for bad in [
            &br#"{}"#[..],
            br#"{"pod_name": 3}"#,
            br#"[]"#,
            br#"{"pod_name":"x","spawned_children":{}}"#,
            br#"{"pod_name":"x"} trailing"#,
        ] {
            assert!(
                Metadata::parse(bad, gen).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                parse_registry(bad, gen).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_malformed_entry_is_skipped_and_its_siblings_are_served() {
        let gen = &INSOMNIA_5472;
        let good =
            r#"{"pod_name":"ok","socket_path":"/s","callback_address":"","scope_delegated":[]}"#;
        for bad in [
            r#"{"pod_name":"c"}"#,
            r#"{"pod_name":"c","socket_path":"/s","callback_address":"","scope_delegated":[{"target":"/a","permission":"read"}]}"#,
            r#"3"#,
            r#"{"pod_name":7,"socket_path":"/s","callback_address":"","scope_delegated":[]}"#,
        ] {
            let text = format!(
                r#"{{"pod_name":"x","spawned_children":[{bad},{good}],"reclaimed_children":[{{"nope":1}},{{"pod_name":"r","scope_delegated":[]}}]}}"#
            );
            let file = parse_registry(text.as_bytes(), gen).unwrap();
            let names: Vec<&str> = file.spawned.iter().map(|c| &*c.name).collect();
            assert_eq!(names, ["ok"], "{bad}");
            assert_eq!(file.reclaimed, vec![Box::from("r")]);
            assert_eq!(file.malformed, 2, "{bad}");
            // A rewrite keeps the bad entry as it was.
            let mut meta = Metadata::parse(text.as_bytes(), gen).unwrap();
            assert!(meta.reclaim_child("ok"));
            let after: Value = serde_json::from_slice(&meta.to_bytes()).unwrap();
            assert_eq!(
                after["spawned_children"][0],
                serde_json::from_str::<Value>(bad).unwrap()
            );
        }
    }

    #[test]
    fn missing_file_is_not_found_and_torn_file_is_corrupt() {
        let err = read(Path::new("/nonexistent/metadata.json"), &INSOMNIA_5472).unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("metadata.json");
        std::fs::write(&path, b"{\"pod_name\": \"x\", \"spawned_chi").unwrap();
        let err = read_settled(&path, &INSOMNIA_5472).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_settled_read_outlasts_a_torn_write() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("metadata.json");
        std::fs::write(&path, b"").unwrap();
        let writer_path = path.clone();
        let writer = thread::spawn(move || {
            thread::sleep(PARSE_RETRY_DELAY / 2);
            std::fs::write(writer_path, br#"{"pod_name":"x"}"#).unwrap();
        });
        let meta = read_settled(&path, &INSOMNIA_5472).unwrap();
        writer.join().unwrap();
        assert_eq!(meta.name(), "x");
    }
}
