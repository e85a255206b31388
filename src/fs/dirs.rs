//! Directories: a listing is taken at `opendir`, so that one split over several
//! `readdir` calls is consistent, and fed to the kernel from any offset.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::name::PodName;
use crate::parents::ParentView;

use super::files::FileKind;
use super::inode::{self, Node};
use super::{dir_attr, Attr, Caller, DirEntry, PodFs};

/// What an open directory handle holds: the directory as of `opendir`, so that a listing
/// split over several `readdir` calls is consistent.
pub(super) enum Listing {
    /// A pod's children, straight from the registry view: no per-entry copies, which
    /// matters for a parent with ten thousand children.
    Pod {
        pod: PodName,
        view: Arc<ParentView>,
        inos: Arc<Vec<u64>>,
    },
    Root {
        pods: Arc<Vec<PodName>>,
    },
    Child {
        pod: PodName,
        child: PodName,
    },
}

impl PodFs {
    /// The inode numbers of `view`'s children, cached while the view is current.
    fn inos_of(&self, pod: &PodName, view: &Arc<ParentView>) -> Arc<Vec<u64>> {
        if let Some((cached, inos)) = self.child_inos.lock().get(pod) {
            if Arc::ptr_eq(cached, view) {
                return inos.clone();
            }
        }
        let inos: Arc<Vec<u64>> = Arc::new(
            view.names()
                .map(|c| self.inodes.number(&Node::Child(pod.clone(), c.clone())))
                .collect(),
        );
        self.child_inos
            .lock()
            .insert(pod.clone(), (view.clone(), inos.clone()));
        inos
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let listing = match self.node(ino)? {
            Node::Root => Listing::Root {
                pods: self.parents.parents()?,
            },
            Node::Pod(pod) => {
                let view = self.parents.parent(&pod)?;
                let inos = self.inos_of(&pod, &view);
                Listing::Pod { pod, view, inos }
            }
            Node::Child(pod, child) => {
                let view = self.parents.child_view(&pod, &child)?;
                // Start watching now: a listing with attributes will need the sizes.
                if let Some(record) = view.child(&child) {
                    let _ = self.files.watch_of(record);
                }
                Listing::Child { pod, child }
            }
            Node::File(..) => return Err(Error::NotDir),
        };
        let fh = self.fh();
        self.dirs.lock().insert(fh, Arc::new(listing));
        Ok(fh)
    }

    /// Feed the entries of an open directory from position `offset` on (`.` and `..`
    /// first) to `emit`, with the offset of the entry after each, until `emit` says the
    /// reply is full. With `plus`, entries carry attributes and each one emitted counts a
    /// kernel reference.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut emit: impl FnMut(u64, DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let listing = self
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("directory handle {fh}")))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let (ino, parent_ino, len) = match &*listing {
            Listing::Root { pods } => (inode::ROOT, inode::ROOT, pods.len()),
            Listing::Pod { pod, view, .. } => (
                self.inodes.number(&Node::Pod(pod.clone())),
                inode::ROOT,
                view.len(),
            ),
            Listing::Child { pod, child } => (
                self.inodes.number(&Node::Child(pod.clone(), child.clone())),
                self.inodes.number(&Node::Pod(pod.clone())),
                FileKind::ALL.len(),
            ),
        };
        // Never waits (the directory is locked meanwhile): live sizes not known yet are
        // provisional and not cached by the kernel.
        let mut file_attrs: HashMap<FileKind, Attr> = HashMap::new();
        if let (true, Listing::Child { pod, child }) = (plus, &*listing) {
            for kind in FileKind::ALL {
                if let Ok(a) = self
                    .file_attr(pod, child, kind, &Caller::INTERNAL, true)
                    .into_result()
                {
                    file_attrs.insert(kind, a);
                }
            }
        }
        for k in start..len + 2 {
            // The kernel takes no reference for `.` and `..`; their attributes are a formality.
            let dot = |name: &'static str, ino| DirEntry {
                ino,
                is_dir: true,
                name,
                attr: plus.then(|| dir_attr(ino, 0o755, 0, self.started)),
            };
            let (entry, node) = match (k, &*listing) {
                (0, _) => (dot(".", ino), None),
                (1, _) => (dot("..", parent_ino), None),
                (k, Listing::Root { pods }) => {
                    let pod = &pods[k - 2];
                    let node = Node::Pod(pod.clone());
                    let attr = if plus {
                        match self.pod_attr(pod) {
                            Ok(a) => Some(a),
                            // Vanished since opendir: skip rather than fail the listing.
                            Err(_) => continue,
                        }
                    } else {
                        None
                    };
                    let entry = DirEntry {
                        ino: self.inodes.number(&node),
                        is_dir: true,
                        name: pod,
                        attr,
                    };
                    (entry, Some(node))
                }
                (k, Listing::Pod { pod, view, inos }) => {
                    let (name, _) = view.child_at(k - 2);
                    let child_ino = inos[k - 2];
                    let entry = DirEntry {
                        ino: child_ino,
                        is_dir: true,
                        name,
                        attr: plus.then(|| dir_attr(child_ino, 0o755, 0, view.mtime())),
                    };
                    if emit(k as u64 + 1, entry) {
                        break;
                    }
                    if plus {
                        self.inodes.remember_child(child_ino, pod, name);
                    }
                    continue;
                }
                (k, Listing::Child { pod, child }) => {
                    let kind = FileKind::ALL[k - 2];
                    let attr = if plus {
                        match file_attrs.get(&kind) {
                            Some(a) => Some(a.clone()),
                            None => continue,
                        }
                    } else {
                        None
                    };
                    let node = Node::File(pod.clone(), child.clone(), kind);
                    let entry = DirEntry {
                        ino: self.inodes.number(&node),
                        is_dir: false,
                        name: kind.name(),
                        attr,
                    };
                    (entry, Some(node))
                }
            };
            if emit(k as u64 + 1, entry) {
                break;
            }
            if let (true, Some(node)) = (plus, node) {
                self.inodes.remember(&node);
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }
}
