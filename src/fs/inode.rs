//! Stable inode numbers for the tree root → pod → child → control file.
//!
//! Every pod and every (pod, child) pair gets a slot the first time it is seen and keeps it
//! for the life of the mount, so an inode number always names the same (parent, child,
//! file) triple: `ino = (slot + 1) << 4 | file code`, with code 0 for the directory itself.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::fs::files::FileKind;

pub const ROOT: u64 = 1;
const SHIFT: u32 = 4;

/// What an inode number names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Root,
    Pod(Arc<str>),
    Child(Arc<str>, Arc<str>),
    File(Arc<str>, Arc<str>, FileKind),
}

enum Slot {
    Pod(Arc<str>),
    Child(u32, Arc<str>),
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    pods: HashMap<Arc<str>, u32>,
    children: HashMap<u32, HashMap<Arc<str>, u32>>,
}

#[derive(Default)]
pub struct Inodes {
    table: RwLock<Table>,
}

fn ino_of(slot: u32, code: u64) -> u64 {
    ((slot as u64 + 1) << SHIFT) | code
}

impl Inodes {
    pub fn pod(&self, name: &str) -> u64 {
        if let Some(&slot) = self.table.read().pods.get(name) {
            return ino_of(slot, 0);
        }
        let mut t = self.table.write();
        if let Some(&slot) = t.pods.get(name) {
            return ino_of(slot, 0);
        }
        let slot = t.slots.len() as u32;
        let name: Arc<str> = Arc::from(name);
        t.slots.push(Slot::Pod(name.clone()));
        t.pods.insert(name, slot);
        ino_of(slot, 0)
    }

    pub fn child(&self, pod: &str, child: &str) -> u64 {
        self.child_of(self.pod(pod), child)
    }

    /// The child's number given its pod's directory inode (saves a lookup per entry when
    /// listing a pod with thousands of children).
    pub fn child_of(&self, pod_ino: u64, child: &str) -> u64 {
        let pod_slot = ((pod_ino >> SHIFT) - 1) as u32;
        if let Some(&slot) = self
            .table
            .read()
            .children
            .get(&pod_slot)
            .and_then(|m| m.get(child))
        {
            return ino_of(slot, 0);
        }
        let mut t = self.table.write();
        if let Some(&slot) = t.children.get(&pod_slot).and_then(|m| m.get(child)) {
            return ino_of(slot, 0);
        }
        let slot = t.slots.len() as u32;
        let name: Arc<str> = Arc::from(child);
        t.slots.push(Slot::Child(pod_slot, name.clone()));
        t.children.entry(pod_slot).or_default().insert(name, slot);
        ino_of(slot, 0)
    }

    pub fn file(&self, pod: &str, child: &str, kind: FileKind) -> u64 {
        self.child(pod, child) | kind.code()
    }

    /// What `ino` names, or `None` for a number this mount never handed out.
    pub fn resolve(&self, ino: u64) -> Option<Node> {
        if ino == ROOT {
            return Some(Node::Root);
        }
        let code = ino & ((1 << SHIFT) - 1);
        let slot = usize::try_from((ino >> SHIFT).checked_sub(1)?).ok()?;
        let t = self.table.read();
        match (t.slots.get(slot)?, code) {
            (Slot::Pod(name), 0) => Some(Node::Pod(name.clone())),
            (Slot::Pod(_), _) => None,
            (Slot::Child(pod_slot, name), code) => {
                let Slot::Pod(pod) = &t.slots[*pod_slot as usize] else {
                    return None;
                };
                if code == 0 {
                    Some(Node::Child(pod.clone(), name.clone()))
                } else {
                    let kind = FileKind::from_code(code)?;
                    Some(Node::File(pod.clone(), name.clone(), kind))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_stable_and_distinct() {
        let inodes = Inodes::default();
        let p = inodes.pod("parent");
        let c1 = inodes.child("parent", "child1");
        let c2 = inodes.child("parent", "child2");
        let other = inodes.child("other", "child1");
        assert_eq!(inodes.pod("parent"), p);
        assert_eq!(inodes.child("parent", "child1"), c1);
        let all = [ROOT, p, c1, c2, other];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        let f = inodes.file("parent", "child1", FileKind::Cursor);
        assert_eq!(
            inodes.resolve(f),
            Some(Node::File(
                "parent".into(),
                "child1".into(),
                FileKind::Cursor
            ))
        );
        assert_eq!(
            inodes.resolve(c2),
            Some(Node::Child("parent".into(), "child2".into()))
        );
        assert_eq!(inodes.resolve(p), Some(Node::Pod("parent".into())));
        assert_eq!(inodes.resolve(ROOT), Some(Node::Root));
        assert_eq!(inodes.resolve(p | 3), None, "pods have no files");
        assert_eq!(inodes.resolve(1 << 40), None);
        assert_eq!(inodes.resolve(0), None);
    }
}
