//! `run/pods.json` (`run/workers.json`): the machine-wide allocation table, "the scope lock".
//!
//! Runtime pods lock this very inode with `flock(2)` (insomnia waits forever, yoi workers
//! poll for 10 s and then fail), so podfs follows the same protocol exactly: open without
//! truncating, exclusive BSD lock on the file itself, read-modify-write in place (never
//! rename: others hold the inode), `fdatasync`, unlock. podfs bounds its own wait and holds
//! the lock for the read-modify-write only, which takes milliseconds.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use std::borrow::Cow;
use std::fmt;

use nix::fcntl::{Flock, FlockArg, OFlag};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::generation::Generation;
use crate::scope::{ScopeRule, StoredRule};
use crate::store::{shape_error, to_runtime_json};

/// The table, as the ordered object it was read as.
///
/// Allocations stay as the text they were read as until podfs changes one: a table of
/// thousands of allocations is parsed (and validated) without building a value for each,
/// and written back with the untouched ones byte for byte. Only the name and the parent of
/// each are decoded, because reclaiming needs them for every allocation.
#[derive(Clone)]
pub struct AllocTable {
    /// The top-level fields in file order; the value of `allocations` lives in `list`.
    fields: Vec<(String, Box<RawValue>)>,
    list: Vec<Entry>,
    gen: &'static Generation,
}

#[derive(Clone)]
struct Entry {
    name: Box<str>,
    delegated_from: Option<Box<str>>,
    body: Body,
}

#[derive(Clone)]
enum Body {
    Raw(Box<RawValue>),
    Parsed(Map<String, Value>),
}

impl Entry {
    fn parse(raw: Box<RawValue>, gen: &Generation) -> serde_json::Result<Entry> {
        let head = HeadSeed(gen.name_key)
            .deserialize(&mut serde_json::Deserializer::from_str(raw.get()))?;
        Ok(Entry {
            name: head.name.into(),
            delegated_from: head.delegated_from.map(Into::into),
            body: Body::Raw(raw),
        })
    }

    fn from_map(map: Map<String, Value>, gen: &Generation) -> Entry {
        let get = |k: &str| map.get(k).and_then(Value::as_str).map(Box::<str>::from);
        Entry {
            name: get(gen.name_key).unwrap_or_default(),
            delegated_from: get("delegated_from"),
            body: Body::Parsed(map),
        }
    }

    fn get(&self, key: &str) -> Option<Value> {
        match &self.body {
            Body::Parsed(map) => map.get(key).cloned(),
            Body::Raw(raw) => serde_json::from_str::<Map<String, Value>>(raw.get())
                .ok()?
                .remove(key),
        }
    }

    /// The allocation as a map, parsed on first change. It was only scanned when the table
    /// was read, and JSON that scans may still not fit a value (`1e400` overflows a float):
    /// such an allocation cannot be rewritten, and the change fails instead.
    fn map_mut(&mut self) -> serde_json::Result<&mut Map<String, Value>> {
        if let Body::Raw(raw) = &self.body {
            let map = serde_json::from_str(raw.get())?;
            self.body = Body::Parsed(map);
        }
        match &mut self.body {
            Body::Parsed(map) => Ok(map),
            Body::Raw(_) => Err(shape_error("an allocation could not be parsed")),
        }
    }

    fn set(&mut self, key: &str, value: Value) -> serde_json::Result<()> {
        let delegated_from = (key == "delegated_from").then(|| value.as_str().map(Into::into));
        self.map_mut()?.insert(key.into(), value);
        if let Some(d) = delegated_from {
            self.delegated_from = d;
        }
        Ok(())
    }
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match &self.body {
            Body::Raw(raw) => raw.serialize(s),
            Body::Parsed(map) => map.serialize(s),
        }
    }
}

/// What is decoded of every allocation: its name and its parent. The scope lists are
/// checked for the runtime's shape on the way, without being kept.
struct Head {
    name: String,
    delegated_from: Option<String>,
}

struct HeadSeed<'k>(&'k str);

/// A scope rule's shape, checked without keeping it.
#[derive(Deserialize)]
#[allow(dead_code)]
struct RuleShape<'a> {
    #[serde(borrow)]
    target: Cow<'a, str>,
    #[serde(borrow)]
    permission: Cow<'a, str>,
    #[serde(default)]
    recursive: Option<bool>,
}

impl<'de> DeserializeSeed<'de> for HeadSeed<'_> {
    type Value = Head;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> std::result::Result<Head, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for HeadSeed<'_> {
    type Value = Head;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an allocation object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Head, A::Error> {
        let mut name = None;
        let mut delegated_from = None;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == self.0 {
                name = Some(map.next_value::<String>()?);
            } else if key == "delegated_from" {
                delegated_from = map
                    .next_value::<Option<String>>()
                    .map_err(|_| de::Error::custom("`delegated_from` is not a string or null"))?;
            } else if key == "scope_allow" || key == "scope_deny" {
                map.next_value::<Vec<RuleShape>>()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        let name =
            name.ok_or_else(|| de::Error::custom(format!("missing string field `{}`", self.0)))?;
        Ok(Head {
            name,
            delegated_from,
        })
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> std::result::Result<Head, A::Error> {
        Err(de::Error::custom("an allocation is not an object"))
    }
}

/// The top-level object's fields in order, values unparsed.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Vec<(String, Box<RawValue>)>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut fields: Vec<(String, Box<RawValue>)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
            // A repeated key keeps its first place and its last value, as a JSON map does.
            match fields.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => fields.push((key, value)),
            }
        }
        Ok(fields)
    }
}

struct ListOf<'a>(&'a [Entry]);

impl Serialize for ListOf<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0)
    }
}

impl Serialize for AllocTable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.fields.len()))?;
        for (key, raw) in &self.fields {
            if key == "allocations" {
                map.serialize_entry(key, &ListOf(&self.list))?;
            } else {
                map.serialize_entry(key, raw)?;
            }
        }
        map.end()
    }
}

impl PartialEq for AllocTable {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl fmt::Debug for AllocTable {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("AllocTable")
            .field("names", &self.names())
            .finish()
    }
}

/// What one `reclaim_delegated_scope` did, so callers can log a deny layer that stayed
/// (the runtime compares raw strings; a canonicalised deny never matches a raw rule).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReclaimReport {
    pub denies_removed: usize,
    pub denies_not_found: Vec<String>,
    pub child_allocation_removed: bool,
    pub reparented: Vec<String>,
}

impl ReclaimReport {
    /// Whether the table was changed.
    pub fn changed(&self) -> bool {
        self.denies_removed > 0 || self.child_allocation_removed
    }
}

/// Step 2 of `reclaim_delegated_scope`: one deny layer per write rule, the first equal one.
fn remove_deny_layers(deny: &mut Vec<Value>, rules: &[StoredRule], report: &mut ReclaimReport) {
    for rule in rules.iter().filter(|r| r.is_write()) {
        match deny.iter().position(|d| same_rule(rule, d)) {
            Some(i) => {
                deny.remove(i);
                report.denies_removed += 1;
            }
            None => report.denies_not_found.push(rule.to_string()),
        }
    }
}

/// An allocation to add (reference homes and pods); the runtime's field order.
#[derive(Debug, Clone)]
pub struct Allocation {
    pub name: String,
    pub pid: u32,
    pub socket: String,
    pub scope_allow: Vec<ScopeRule>,
    pub scope_deny: Vec<ScopeRule>,
    pub delegated_from: Option<String>,
    pub segment_id: Option<String>,
}

impl Allocation {
    pub fn to_value(&self, gen: &Generation) -> Value {
        let mut o = Map::new();
        o.insert(gen.name_key.into(), self.name.clone().into());
        o.insert("pid".into(), self.pid.into());
        o.insert("socket".into(), self.socket.clone().into());
        o.insert("scope_allow".into(), to_value(&self.scope_allow));
        o.insert("scope_deny".into(), to_value(&self.scope_deny));
        o.insert("delegated_from".into(), to_value(&self.delegated_from));
        o.insert("segment_id".into(), to_value(&self.segment_id));
        Value::Object(o)
    }
}

fn empty_list() -> Box<RawValue> {
    RawValue::from_string("[]".into()).expect("[] is JSON")
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("plain data serialises")
}

impl AllocTable {
    pub fn empty(gen: &'static Generation) -> Self {
        AllocTable {
            fields: vec![("allocations".into(), empty_list())],
            list: Vec::new(),
            gen,
        }
    }

    /// Empty or whitespace-only content is an empty table, as in the runtime.
    pub fn parse(bytes: &[u8], gen: &'static Generation) -> serde_json::Result<Self> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(AllocTable::empty(gen));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let fields = de.deserialize_map(FieldsVisitor)?;
        de.end()?;
        let list = match fields.iter().find(|(k, _)| k == "allocations") {
            None => Vec::new(),
            Some((_, raw)) => serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())
                .map_err(|_| shape_error("`allocations` is not an array"))?
                .into_iter()
                .map(|raw| Entry::parse(raw, gen))
                .collect::<serde_json::Result<_>>()?,
        };
        Ok(AllocTable { fields, list, gen })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        to_runtime_json(self)
    }

    fn entry(&self, name: &str) -> Option<&Entry> {
        self.list.iter().find(|e| &*e.name == name)
    }

    fn entry_mut(&mut self, name: &str) -> Option<&mut Entry> {
        self.list.iter_mut().find(|e| &*e.name == name)
    }

    /// The list is about to change: make sure the file will have it.
    fn list_mut(&mut self) -> &mut Vec<Entry> {
        if !self.fields.iter().any(|(k, _)| k == "allocations") {
            self.fields.push(("allocations".into(), empty_list()));
        }
        &mut self.list
    }

    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|e| e.name.to_string()).collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entry(name).is_some()
    }

    /// A field of `name`'s allocation (first match).
    pub fn field(&self, name: &str, key: &str) -> Option<Value> {
        self.entry(name)?.get(key)
    }

    /// `name`'s deny layers, in order.
    pub fn deny(&self, name: &str) -> Option<Vec<Value>> {
        match self.field(name, "scope_deny") {
            Some(Value::Array(rules)) => Some(rules),
            Some(_) => None,
            None if self.contains(name) => Some(Vec::new()),
            None => None,
        }
    }

    pub fn push(&mut self, allocation: &Allocation) {
        let Value::Object(map) = allocation.to_value(self.gen) else {
            unreachable!("an allocation is an object")
        };
        let entry = Entry::from_map(map, self.gen);
        self.list_mut().push(entry);
    }

    /// Set a field of `name`'s allocation; false when there is none (or it cannot be
    /// rewritten, see [`Entry::map_mut`]).
    pub fn set_field(&mut self, name: &str, key: &str, value: Value) -> bool {
        self.try_set_field(name, key, value).unwrap_or(false)
    }

    /// [`AllocTable::set_field`], with the reason an allocation cannot be rewritten.
    pub fn try_set_field(
        &mut self,
        name: &str,
        key: &str,
        value: Value,
    ) -> serde_json::Result<bool> {
        match self.entry_mut(name) {
            Some(e) => e.set(key, value).map(|()| true),
            None => Ok(false),
        }
    }

    /// The runtime's `reclaim_delegated_scope(parent, child, rules)`, step for step. Fails
    /// (with the table unchanged) only when an allocation it must rewrite does not fit a
    /// JSON value.
    pub fn reclaim_delegated_scope(
        &mut self,
        parent: &str,
        child: &str,
        rules: &[StoredRule],
    ) -> serde_json::Result<ReclaimReport> {
        let before = self.clone();
        let mut report = ReclaimReport::default();
        let applied = (|| {
            match self.deny(parent) {
                Some(mut deny) => {
                    remove_deny_layers(&mut deny, rules, &mut report);
                    if report.denies_removed > 0 {
                        self.try_set_field(parent, "scope_deny", Value::Array(deny))?;
                    }
                }
                None => remove_deny_layers(&mut Vec::new(), rules, &mut report),
            }
            let (removed, reparented) = self.remove_child_allocation(child)?;
            report.child_allocation_removed = removed;
            report.reparented = reparented;
            Ok(())
        })();
        match applied {
            Ok(()) => Ok(report),
            Err(e) => {
                *self = before;
                Err(e)
            }
        }
    }

    /// Step 3 of `reclaim_delegated_scope` alone: remove `child`'s allocation and move its
    /// children up one level. Idempotent.
    pub fn remove_child_allocation(
        &mut self,
        child: &str,
    ) -> serde_json::Result<(bool, Vec<String>)> {
        let Some(entry) = self.entry(child) else {
            return Ok((false, Vec::new()));
        };
        let from = entry.get("delegated_from").unwrap_or(Value::Null);
        let mut moved = Vec::new();
        for e in self.list.iter_mut() {
            if e.delegated_from.as_deref() == Some(child) {
                moved.push(e.name.to_string());
                e.set("delegated_from", from.clone())?;
            }
        }
        self.list.retain(|e| &*e.name != child);
        Ok((true, moved))
    }

    /// The runtime's `release_pod(name)`: remove it, move its children up one level.
    pub fn release(&mut self, name: &str) -> bool {
        self.remove_child_allocation(name)
            .is_ok_and(|(removed, _)| removed)
    }
}

/// The runtime compares deny layers by exact target, permission and recursion (a missing
/// `recursive` reads as true in this file).
fn same_rule(rule: &StoredRule, deny: &Value) -> bool {
    deny.get("target").and_then(Value::as_str) == Some(rule.target.as_str())
        && deny.get("permission").and_then(Value::as_str) == Some(rule.permission.as_str())
        && deny
            .get("recursive")
            .and_then(Value::as_bool)
            .unwrap_or(true)
            == rule.recursive
}

/// Read without locking, for display and for planning a change (a home podfs made).
pub fn read(path: &Path, gen: &'static Generation) -> Result<AllocTable> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    AllocTable::parse(&bytes, gen).map_err(|e| Error::corrupt(path, e))
}

/// The table, locked by the runtime's protocol, with what it held when locked. Dropping
/// it unlocks.
pub struct Locked {
    file: Flock<File>,
    path: PathBuf,
    bytes: Vec<u8>,
    locked_at: Instant,
}

impl Locked {
    /// The content as read under the lock.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rewrite in place: one positioned write, then cut the tail, then `fdatasync`. The
    /// file is never observed empty by a reader that ignores the lock. A shorter table is
    /// padded with spaces to the old length first, so that a kill between the write and
    /// the cut leaves valid JSON followed by whitespace rather than the new table glued to
    /// the old one's tail. A longer one first reserves its blocks (`fallocate`, keeping
    /// the size), so that a full disk fails the rewrite before its first byte changes
    /// instead of halfway through it.
    pub fn write(&mut self, new: &[u8]) -> Result<()> {
        let ctx = |what: &str| format!("{what} {}", self.path.display());
        if new.len() > self.bytes.len() {
            let len = i64::try_from(new.len()).unwrap_or(i64::MAX);
            match nix::fcntl::fallocate(
                self.file.as_fd(),
                nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                0,
                len,
            ) {
                Ok(()) => {}
                // A filesystem that cannot reserve: the write below is as safe as it gets.
                Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOSYS) => {}
                Err(e) => return Err(Error::io(ctx("reserve room to rewrite"), e.into())),
            }
        }
        let mut padded = new.to_vec();
        if padded.len() < self.bytes.len() {
            padded.resize(self.bytes.len(), b' ');
        }
        self.file
            .write_all_at(&padded, 0)
            .and_then(|()| self.file.set_len(new.len() as u64))
            .and_then(|()| self.file.sync_data())
            .map_err(|e| Error::io(ctx("rewrite"), e))?;
        self.bytes = new.to_vec();
        Ok(())
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        tracing::debug!(
            held_us = self.locked_at.elapsed().as_micros() as u64,
            "allocation table lock released"
        );
    }
}

/// Lock the table `name` in the runtime dir `dir` by the runtime's protocol (created with
/// mode 0600 if missing, owned by the directory's owner), waiting at most `lock_wait`.
/// Never reached through a symlink, never read past the directory's cap. `give_up` is
/// asked while waiting; an error it returns ends the wait.
///
/// The lock is on the inode podfs opened, which the name may no longer lead to by the
/// time the lock is granted (a runtime or another tool replaced the table meanwhile):
/// editing that orphan would lose the edit. So once locked, the file must still be the
/// one the directory names; otherwise the lock is let go and the table opened again.
pub fn lock_in(
    dir: &Dir,
    name: &str,
    lock_wait: Duration,
    give_up: &dyn Fn() -> Result<()>,
) -> Result<Locked> {
    let path = dir.path().join(name);
    let ctx = |what: &str| format!("{what} {}", path.display());
    let deadline = Instant::now() + lock_wait;
    loop {
        let file = loop {
            match dir.open(name, OFlag::O_RDWR, 0) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(ctx("open"), e)),
            }
            match dir.open(name, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL, 0o600) {
                Ok(f) => {
                    if let Ok((uid, gid)) = dir.owner() {
                        crate::confine::give_to(&f, uid, gid);
                    }
                    break f;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(ctx("create"), e)),
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let mut locked = lock_exclusive(file, left, give_up).map_err(|e| match e {
            LockError::TimedOut => Error::LockTimeout(path.clone()),
            LockError::GaveUp(e) => e,
            LockError::Os(errno) => Error::io(ctx("flock"), errno.into()),
        })?;
        let mine =
            nix::sys::stat::fstat(locked.as_fd()).map_err(|e| Error::io(ctx("stat"), e.into()))?;
        let named = dir.stat(name);
        let same = named
            .as_ref()
            .is_ok_and(|n| n.dev == mine.st_dev && n.ino == mine.st_ino);
        if !same || mine.st_nlink == 0 {
            tracing::debug!(
                "the table was replaced while podfs waited for its lock; locking the new one"
            );
            drop(locked);
            if Instant::now() >= deadline {
                return Err(Error::LockTimeout(path));
            }
            continue;
        }
        let locked_at = Instant::now();
        let bytes = crate::confine::read_open(&mut locked, dir.policy().read_cap)
            .map_err(|e| Error::io(ctx("read"), e))?;
        return Ok(Locked {
            file: locked,
            path,
            bytes,
            locked_at,
        });
    }
}

/// Run a read-modify-write of the table at `path` under the runtime's locking protocol,
/// waiting at most `lock_wait` for the lock, in a home podfs made itself (the demo's
/// pods use this; the mount uses [`lock_in`] through the home's opened directories).
/// `change` returns whether it modified the table; the file is rewritten only then. On a
/// parse error nothing is written.
pub fn update<T>(
    path: &Path,
    gen: &'static Generation,
    lock_wait: Duration,
    change: impl FnOnce(&mut AllocTable) -> (bool, T),
) -> Result<T> {
    let (runtime, name) = split(path)?;
    if !runtime.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(runtime)
            .map_err(|e| Error::io(format!("create {}", runtime.display()), e))?;
    }
    let dir =
        Dir::base(runtime).map_err(|e| Error::io(format!("open {}", runtime.display()), e))?;
    let mut locked = lock_in(&dir, name, lock_wait, &|| Ok(()))?;
    let mut table = AllocTable::parse(locked.bytes(), gen).map_err(|e| Error::corrupt(path, e))?;
    let (changed, out) = change(&mut table);
    if changed {
        locked.write(&table.to_bytes())?;
    }
    Ok(out)
}

/// A table path as its directory and file name.
fn split(path: &Path) -> Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => Ok((dir, name)),
        _ => Err(Error::Usage(format!(
            "{}: not a table path",
            path.display()
        ))),
    }
}

enum LockError {
    TimedOut,
    GaveUp(Error),
    Os(nix::errno::Errno),
}

/// A bounded try-lock loop: the runtime's own wait may be unbounded, podfs's must not be.
/// Runs on the worker pool, never on a FUSE request thread.
fn lock_exclusive(
    file: File,
    wait: Duration,
    give_up: &dyn Fn() -> Result<()>,
) -> std::result::Result<Flock<File>, LockError> {
    let deadline = Instant::now() + wait;
    let mut file = file;
    let mut pause = Duration::from_micros(200);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) | Err((f, nix::errno::Errno::EINTR)) => {
                if Instant::now() >= deadline {
                    return Err(LockError::TimedOut);
                }
                give_up().map_err(LockError::GaveUp)?;
                file = f;
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err((_, errno)) => return Err(LockError::Os(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::{INSOMNIA_5472, YOI_WORKER_485918EB};
    use crate::test_fixtures as fixtures;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    const I: &Generation = &INSOMNIA_5472;
    const Y: &Generation = &YOI_WORKER_485918EB;

    fn table(rel: &str, gen: &'static Generation) -> AllocTable {
        AllocTable::parse(fixtures::read(rel, "/h").as_bytes(), gen).unwrap()
    }

    fn child1_rules() -> Vec<StoredRule> {
        vec![
            StoredRule::new("/h/work/sub1", "write", true),
            StoredRule::new("/h/work", "read", true),
        ]
    }

    #[test]
    fn fixtures_round_trip() {
        for (gen, rel) in [
            (I, "insomnia-5472/live/run/pods.json"),
            (I, "insomnia-5472/after-stop/run/pods.json"),
            (I, "insomnia-5472/after-crash-restore/run/pods.json"),
            (Y, "yoi-485918eb/live/run/workers.json"),
            (Y, "yoi-485918eb/after-stop/run/workers.json"),
            (Y, "yoi-485918eb/after-crash-restore/run/workers.json"),
            (Y, "yoi-485918eb/before-external-reclaim/run/workers.json"),
        ] {
            let text = fixtures::read(rel, "/h");
            let t = AllocTable::parse(text.as_bytes(), gen).unwrap();
            assert_eq!(String::from_utf8(t.to_bytes()).unwrap(), text, "{rel}");
        }
    }

    #[test]
    fn reclaim_in_place_matches_the_runtime_after_stop() {
        for (gen, live, after) in [
            (
                I,
                "insomnia-5472/live/run/pods.json",
                "insomnia-5472/after-stop/run/pods.json",
            ),
            (
                Y,
                "yoi-485918eb/live/run/workers.json",
                "yoi-485918eb/after-stop/run/workers.json",
            ),
        ] {
            let dir = crate::test_fixtures::tempdir();
            let path = dir.path().join("table.json");
            std::fs::write(&path, fixtures::read(live, "/h")).unwrap();
            let inode = std::fs::metadata(&path).unwrap().ino();
            let report = update(&path, gen, Duration::from_secs(1), |t| {
                (
                    true,
                    t.reclaim_delegated_scope("parent", "child1", &child1_rules())
                        .unwrap(),
                )
            })
            .unwrap();
            assert!(report.child_allocation_removed);
            // The parent was not restored, so it holds no deny layer to remove.
            assert_eq!(report.denies_not_found, ["write recursive /h/work/sub1"]);
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                fixtures::read(after, "/h")
            );
            assert_eq!(
                std::fs::metadata(&path).unwrap().ino(),
                inode,
                "must not rename"
            );
        }
    }

    #[test]
    fn restored_parent_loses_exactly_one_equal_deny_per_write_rule() {
        let mut t = table("insomnia-5472/after-crash-restore/run/pods.json", I);
        let deny = t.deny("parent").unwrap()[0].clone();
        let mut wider = deny.clone();
        wider["target"] = "/h/work".into();
        let mut layers = t.deny("parent").unwrap();
        layers.push(deny.clone());
        layers.push(wider);
        t.set_field("parent", "scope_deny", Value::Array(layers));
        let rules = vec![
            StoredRule::new("/h/work/sub3", "write", true),
            StoredRule::new("/h/work", "read", true),
        ];
        let report = t
            .reclaim_delegated_scope("parent", "child3", &rules)
            .unwrap();
        assert_eq!(report.denies_removed, 1);
        let left: Vec<_> = t
            .deny("parent")
            .unwrap()
            .iter()
            .map(|d| d["target"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(left, ["/h/work/sub3", "/h/work"]);
        assert!(!t.contains("child3"));
    }

    #[test]
    fn grandchildren_move_up_one_level() {
        let mut t = table("yoi-485918eb/live/run/workers.json", Y);
        t.push(&Allocation {
            name: "g".into(),
            pid: 1,
            socket: "/h/run/g/sock".into(),
            scope_allow: Vec::new(),
            scope_deny: Vec::new(),
            delegated_from: Some("child1".into()),
            segment_id: None,
        });
        let report = t
            .reclaim_delegated_scope("parent", "child1", &child1_rules())
            .unwrap();
        assert_eq!(report.reparented, ["g"]);
        assert_eq!(t.field("g", "delegated_from"), Some(Value::from("parent")));
    }

    #[test]
    fn a_parent_that_left_the_table_keeps_its_children_top_level() {
        // A parent that shut down cleanly released its own allocation; its running
        // children kept theirs with `delegated_from: null`.
        let mut t = table("yoi-485918eb/live/run/workers.json", Y);
        assert!(t.release("parent"));
        assert_eq!(t.field("child1", "delegated_from"), Some(Value::Null));
        let report = t
            .reclaim_delegated_scope("parent", "child1", &child1_rules())
            .unwrap();
        assert!(report.child_allocation_removed);
        assert_eq!(report.denies_removed, 0);
        assert_eq!(t.names(), ["child2", "child3"]);
    }

    #[test]
    fn missing_parent_and_child_change_nothing_but_are_not_errors() {
        let mut t = AllocTable::empty(I);
        let report = t
            .reclaim_delegated_scope("p", "c", &child1_rules())
            .unwrap();
        assert!(!report.child_allocation_removed);
        assert_eq!(report.denies_removed, 0);
        assert_eq!(t, AllocTable::empty(I));
    }

    #[test]
    fn empty_file_is_an_empty_table_and_new_file_is_private() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("run").join("pods.json");
        update(&path, I, Duration::from_secs(1), |_| (false, ())).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dmeta = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dmeta.permissions().mode() & 0o777, 0o700);
        std::fs::write(&path, b"  \n").unwrap();
        assert!(read(&path, I).unwrap().names().is_empty());
    }

    #[test]
    fn corrupt_table_is_left_untouched() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("pods.json");
        for bad in [
            &b"{\"allocations\": ["[..],
            b"{\"allocations\": [{\"pid\": 1}]}",
            b"[]",
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = update(&path, I, Duration::from_secs(1), |_| (true, ())).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }));
            assert_eq!(std::fs::read(&path).unwrap(), bad);
        }
    }

    #[test]
    fn lock_wait_is_bounded() {
        let dir = crate::test_fixtures::tempdir();
        let path = dir.path().join("pods.json");
        std::fs::write(
            &path,
            fixtures::read("insomnia-5472/live/run/pods.json", "/h"),
        )
        .unwrap();
        let holder = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive).unwrap();
        let started = Instant::now();
        let err = update(&path, I, Duration::from_millis(100), |_| (false, ())).unwrap_err();
        assert!(matches!(err, Error::LockTimeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(holder);
        update(&path, I, Duration::from_millis(100), |_| (false, ())).unwrap();
    }

    #[test]
    fn an_allocation_no_value_can_hold_fails_the_reclaim_and_changes_nothing() {
        // A grandchild whose allocation carries a number no float holds: it scans as JSON,
        // but moving it up a level means rewriting it.
        let mut v: Value =
            serde_json::from_str(&fixtures::read("yoi-485918eb/live/run/workers.json", "/h"))
                .unwrap();
        let mut g = v["allocations"][1].clone();
        g["worker_name"] = "g".into();
        g["delegated_from"] = "child1".into();
        v["allocations"].as_array_mut().unwrap().push(g);
        let text = serde_json::to_string_pretty(&v).unwrap().replace(
            "\"worker_name\": \"g\",",
            "\"worker_name\": \"g\", \"weight\": 1e400,",
        );
        let mut t = AllocTable::parse(text.as_bytes(), Y).unwrap();
        let before = t.to_bytes();
        let err = t
            .reclaim_delegated_scope("parent", "child1", &child1_rules())
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert_eq!(t.to_bytes(), before, "a failed reclaim changed the table");
        assert!(
            !t.release("child1"),
            "release of child1 must fail the same way"
        );
    }

    #[test]
    fn unknown_fields_survive_in_place() {
        let mut v: Value =
            serde_json::from_str(&fixtures::read("insomnia-5472/live/run/pods.json", "/h"))
                .unwrap();
        v["version"] = 3.into();
        v["allocations"][0]["host"] = "a".into();
        let mut t = AllocTable::parse(&serde_json::to_vec_pretty(&v).unwrap(), I).unwrap();
        assert!(t.release("child2"));
        let after: Value = serde_json::from_slice(&t.to_bytes()).unwrap();
        assert_eq!(after["version"], 3);
        assert_eq!(after["allocations"][0]["host"], "a");
        assert_eq!(after["allocations"].as_array().unwrap().len(), 3);
    }
}
