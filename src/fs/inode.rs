//! Inode numbers for the tree root → pod → child → control file, and the table of the
//! numbers the kernel currently holds.
//!
//! A number is a hash of the names it stands for (`pod`, or `pod` and `child`, plus the
//! file's code in the low four bits), so it is the same every time a path is looked up,
//! a listing can report it without storing anything, and a lookup of a name that does not
//! exist allocates nothing. The table maps the numbers the kernel holds back to names and
//! counts the kernel's references: `forget` drops an entry when its count reaches zero, so
//! the table shrinks with the kernel's cache. Two names hashing to the same number (about
//! one chance in 2^58 per pair) get a rehashed number for the later one.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use parking_lot::RwLock;

use crate::fs::files::FileKind;
use crate::name::PodName;

pub const ROOT: u64 = 1;
const CODE_BITS: u32 = 4;
const CODE_MASK: u64 = (1 << CODE_BITS) - 1;
/// Always set, so no number collides with ROOT.
const BASE_BIT: u64 = 1 << 62;
/// Set for pods, clear for children: a pod never collides with a child.
const POD_BIT: u64 = 1 << 61;
const HASH_MASK: u64 = (POD_BIT - 1) & !CODE_MASK;

/// What an inode number names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    Pod(PodName),
    Child(PodName, PodName),
    File(PodName, PodName, FileKind),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    Pod(PodName),
    Child(PodName, PodName),
}

struct Entry {
    base: Base,
    /// The kernel's references: index 0 the directory, then one per file code.
    counts: [u64; 9],
}

fn hash_of(parts: &[&str], salt: u64) -> u64 {
    let mut h = DefaultHasher::new();
    salt.hash(&mut h);
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

fn base_of(b: &Base, salt: u64) -> u64 {
    match b {
        Base::Pod(p) => BASE_BIT | POD_BIT | (hash_of(&[p], salt) & HASH_MASK),
        Base::Child(p, c) => BASE_BIT | (hash_of(&[p, c], salt) & HASH_MASK),
    }
}

/// The number of pod `pod`'s directory.
pub fn pod_ino(pod: &str) -> u64 {
    BASE_BIT | POD_BIT | (hash_of(&[pod], 0) & HASH_MASK)
}

/// The number of child `child`'s directory under `pod`.
pub fn child_ino(pod: &str, child: &str) -> u64 {
    BASE_BIT | (hash_of(&[pod, child], 0) & HASH_MASK)
}

pub fn file_ino(pod: &str, child: &str, kind: FileKind) -> u64 {
    child_ino(pod, child) | kind.code()
}

/// The table entry a node belongs to and the code of the node within it (`None` for the
/// root, which has a fixed number).
fn split(node: &Node) -> Option<(Base, u64)> {
    Some(match node {
        Node::Root => return None,
        Node::Pod(p) => (Base::Pod(p.clone()), 0),
        Node::Child(p, c) => (Base::Child(p.clone(), c.clone()), 0),
        Node::File(p, c, k) => (Base::Child(p.clone(), c.clone()), k.code()),
    })
}

#[derive(Default)]
pub struct Inodes {
    table: RwLock<HashMap<u64, Entry>>,
}

impl Inodes {
    /// The number for `node`, counting one more kernel reference to it (a successful
    /// lookup, or an entry of readdirplus).
    pub fn remember(&self, node: &Node) -> u64 {
        let Some((base, code)) = split(node) else {
            return ROOT;
        };
        let mut table = self.table.write();
        let mut salt = 0;
        loop {
            let ino = base_of(&base, salt);
            match table.get_mut(&ino) {
                Some(e) if e.base == base => {
                    e.counts[code as usize] += 1;
                    return ino | code;
                }
                Some(_) => salt += 1,
                None => {
                    let mut counts = [0; 9];
                    counts[code as usize] = 1;
                    table.insert(ino, Entry { base, counts });
                    return ino | code;
                }
            }
        }
    }

    /// [`Inodes::remember`] for a child directory whose number is already known (from a
    /// listing): no hashing and no copies of the names when the table has it, which is
    /// every entry but the first time a directory is listed.
    pub fn remember_child(&self, ino: u64, pod: &PodName, child: &PodName) -> u64 {
        {
            let mut table = self.table.write();
            if let Some(e) = table.get_mut(&ino) {
                if matches!(&e.base, Base::Child(p, c) if p == pod && c == child) {
                    e.counts[0] += 1;
                    return ino;
                }
            }
        }
        self.remember(&Node::Child(pod.clone(), child.clone()))
    }

    /// The number `node` has, without counting a reference (listings, invalidations).
    pub fn number(&self, node: &Node) -> u64 {
        let Some((base, code)) = split(node) else {
            return ROOT;
        };
        let table = self.table.read();
        let mut salt = 0;
        loop {
            let ino = base_of(&base, salt);
            match table.get(&ino) {
                Some(e) if e.base != base => salt += 1,
                _ => return ino | code,
            }
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut table = self.table.write();
        let base = ino & !CODE_MASK;
        let code = (ino & CODE_MASK) as usize;
        if let Some(e) = table.get_mut(&base) {
            if let Some(count) = e.counts.get_mut(code) {
                *count = count.saturating_sub(n);
            }
            if e.counts.iter().all(|&c| c == 0) {
                table.remove(&base);
            }
        }
    }

    /// What `ino` names, or `None` for a number the kernel does not hold.
    pub fn resolve(&self, ino: u64) -> Option<Node> {
        if ino == ROOT {
            return Some(Node::Root);
        }
        let table = self.table.read();
        let e = table.get(&(ino & !CODE_MASK))?;
        let code = ino & CODE_MASK;
        match (&e.base, code) {
            (Base::Pod(p), 0) => Some(Node::Pod(p.clone())),
            (Base::Pod(_), _) => None,
            (Base::Child(p, c), 0) => Some(Node::Child(p.clone(), c.clone())),
            (Base::Child(p, c), code) => {
                Some(Node::File(p.clone(), c.clone(), FileKind::from_code(code)?))
            }
        }
    }

    /// Entries held (pods and children with any reference).
    pub fn len(&self) -> usize {
        self.table.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> PodName {
        PodName::new(s).unwrap()
    }

    #[test]
    fn numbers_are_stable_distinct_and_counted() {
        let inodes = Inodes::default();
        let p = inodes.remember(&Node::Pod(n("parent")));
        let c1 = inodes.remember(&Node::Child(n("parent"), n("child1")));
        let c2 = inodes.remember(&Node::Child(n("parent"), n("child2")));
        let other = inodes.remember(&Node::Child(n("other"), n("child1")));
        assert_eq!(p, pod_ino("parent"));
        assert_eq!(c1, child_ino("parent", "child1"));
        let all = [ROOT, p, c1, c2, other];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let f = inodes.remember(&Node::File(n("parent"), n("child1"), FileKind::Cursor));
        assert_eq!(f, file_ino("parent", "child1", FileKind::Cursor));
        assert_eq!(
            inodes.resolve(f),
            Some(Node::File(n("parent"), n("child1"), FileKind::Cursor))
        );
        assert_eq!(inodes.resolve(p | 3), None, "pods have no files");
        assert_eq!(inodes.resolve(1 << 40), None);
        assert_eq!(inodes.resolve(0), None);
        // The directory entry stays while its file is held, and goes with the last one.
        inodes.forget(c1, 1);
        assert!(inodes.resolve(f).is_some());
        inodes.forget(f, 1);
        assert_eq!(inodes.resolve(f), None);
        assert_eq!(inodes.resolve(c1), None);
        // Looked up again: the same number.
        assert_eq!(inodes.remember(&Node::Child(n("parent"), n("child1"))), c1);
    }

    #[test]
    fn the_table_shrinks_with_forget() {
        let inodes = Inodes::default();
        let inos: Vec<u64> = (0..1000)
            .map(|i| inodes.remember(&Node::Child(n("p"), n(&format!("c{i}")))))
            .collect();
        assert_eq!(inodes.len(), 1000);
        for ino in inos {
            inodes.forget(ino, 1);
        }
        assert_eq!(inodes.len(), 0);
    }
}
