//! The filesystem logic: the tree, attributes, open handles, and what each read, write,
//! unlink and rmdir means. Free of `fuser` types so it can be driven without a mount; the
//! adapter in [`adapter`] only translates.

pub mod adapter;
pub mod files;
pub mod inode;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use tracing::warn;

use crate::error::{Error, Result};
use crate::follow::{Feed, Followers};
use crate::paths::validate_pod_name;
use crate::protocol::history::{self, as_file_text};
use crate::protocol::ops;
use crate::protocol::wire::PodStatus;
use crate::reclaim;
use crate::registry::ChildRecord;
use crate::registry::{ParentView, Registry};
use crate::scope::render_scope;

use files::FileKind;
use inode::{Inodes, Node};

/// Attributes in a form the adapter can translate.
#[derive(Debug, Clone, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub is_dir: bool,
    pub size: u64,
    pub perm: u16,
    pub nlink: u32,
    pub mtime: SystemTime,
}

/// One directory entry, borrowed from an open directory's listing.
#[derive(Debug, Clone, PartialEq)]
pub struct DirEntry<'a> {
    pub ino: u64,
    pub is_dir: bool,
    pub name: &'a str,
    /// Attributes known when listing (so readdirplus needs no second lookup per entry).
    pub attr: Option<Attr>,
}

/// What an open file handle holds.
enum Content {
    /// A value fixed at open (sysfs-like): re-reading the descriptor gives the same bytes.
    Bytes(Arc<Vec<u8>>),
    /// A live feed: `log` grows while it is open.
    Log(PathBuf, Arc<Feed>),
    /// An `input` handle: the writes up to `close()` form one message.
    Input(Arc<Mutex<Vec<u8>>>),
    /// A write-only `cursor` handle: closing it without a write is an empty write, refused
    /// at close, because the kernel never forwards a zero-length write.
    CursorWrite(std::sync::atomic::AtomicBool),
}

/// What an open directory handle holds: the directory as of `opendir`, so that a listing
/// split over several `readdir` calls is consistent.
enum Listing {
    /// A pod's children, straight from the registry view: no per-entry copies, which
    /// matters for a parent with ten thousand children.
    Pod {
        ino: u64,
        view: Arc<ParentView>,
        inos: Arc<Vec<u64>>,
    },
    /// The root and child directories: a handful of entries.
    Small {
        ino: u64,
        parent: u64,
        entries: Vec<(u64, bool, String, Option<Attr>)>,
    },
}

/// A registry view and its children's inode numbers, in listing order.
type ChildInos = (Arc<ParentView>, Arc<Vec<u64>>);

pub struct PodFs {
    pub reg: Arc<Registry>,
    inodes: Inodes,
    files: Mutex<HashMap<u64, Content>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    /// Children's inode numbers per pod, computed once per version of its registry.
    child_inos: Mutex<HashMap<u64, ChildInos>>,
    next_fh: AtomicU64,
    followers: Followers,
    started: SystemTime,
}

impl PodFs {
    pub fn new(reg: Arc<Registry>) -> Self {
        PodFs {
            reg,
            inodes: Inodes::default(),
            files: Mutex::default(),
            dirs: Mutex::default(),
            child_inos: Mutex::default(),
            next_fh: AtomicU64::new(1),
            followers: Followers::default(),
            started: SystemTime::now(),
        }
    }

    fn node(&self, ino: u64) -> Result<Node> {
        self.inodes
            .resolve(ino)
            .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    fn dir_attr(&self, ino: u64, perm: u16, subdirs: usize, mtime: SystemTime) -> Attr {
        Attr {
            ino,
            is_dir: true,
            size: 0,
            perm,
            nlink: 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2),
            mtime,
        }
    }

    fn root_attr(&self) -> Result<Attr> {
        let pods = self.reg.pods()?;
        Ok(self.dir_attr(inode::ROOT, 0o555, pods.len(), self.started))
    }

    fn pod_attr(&self, pod: &str) -> Result<Attr> {
        let view = self.reg.parent(pod)?;
        Ok(self.dir_attr(self.inodes.pod(pod), 0o755, view.len(), view.mtime))
    }

    fn child_attr(&self, pod: &str, child: &str) -> Result<Attr> {
        let view = self.reg.child_view(pod, child)?;
        Ok(self.dir_attr(self.inodes.child(pod, child), 0o755, 0, view.mtime))
    }

    fn file_attr(&self, pod: &str, child: &str, kind: FileKind) -> Result<Attr> {
        let view = self.reg.child_view(pod, child)?;
        let record = view.child(child).expect("checked by child_view");
        let mut mtime = view.mtime;
        let size = match kind {
            FileKind::Socket | FileKind::Scope | FileKind::Callback | FileKind::Cursor => {
                self.value(pod, record, kind).len() as u64
            }
            FileKind::Status => self
                .reg
                .child_socket(record)
                .ok()
                .and_then(|s| self.reg.cached_status(&s))
                .map_or(0, |s| s.as_str().len() as u64 + 1),
            FileKind::Log => match self.reg.child_socket(record) {
                Ok(socket) => match self.followers.peek(&socket) {
                    Some(log) => {
                        mtime = log.mtime;
                        log.text.len() as u64
                    }
                    None => 0,
                },
                Err(_) => 0,
            },
            // Depends on the child's history at the moment of open; direct I/O lets every
            // reader see the whole text whatever size stat shows.
            FileKind::Output | FileKind::Input => 0,
        };
        Ok(Attr {
            ino: self.inodes.file(pod, child, kind),
            is_dir: false,
            size,
            perm: kind.perm(),
            nlink: 1,
            mtime,
        })
    }

    /// The bytes of a cheap value file (no socket I/O).
    fn value(&self, pod: &str, record: &ChildRecord, kind: FileKind) -> Vec<u8> {
        let text = match kind {
            FileKind::Socket => format!("{}\n", record.socket_path),
            FileKind::Scope => render_scope(&record.scope_delegated),
            FileKind::Callback if record.callback_address.is_empty() => String::new(),
            FileKind::Callback => format!("{}\n", record.callback_address),
            FileKind::Cursor => format!("{}\n", self.reg.cursor(pod, &record.pod_name)),
            _ => unreachable!("not a value file: {kind:?}"),
        };
        text.into_bytes()
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        match self.node(ino)? {
            Node::Root => self.root_attr(),
            Node::Pod(pod) => self.pod_attr(&pod),
            Node::Child(pod, child) => self.child_attr(&pod, &child),
            Node::File(pod, child, kind) => self.file_attr(&pod, &child, kind),
        }
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr> {
        match self.node(parent)? {
            Node::Root => {
                validate_pod_name(name)?;
                self.pod_attr(name)
            }
            Node::Pod(pod) => {
                validate_pod_name(name)?;
                self.child_attr(&pod, name)
            }
            Node::Child(pod, child) => {
                let kind = FileKind::from_name(name)
                    .ok_or_else(|| Error::NotFound(format!("{pod}/{child}/{name}")))?;
                self.file_attr(&pod, &child, kind)
            }
            Node::File(..) => Err(Error::NotDir),
        }
    }

    /// The inode numbers of `view`'s children, cached while the view is current.
    fn inos_of(&self, pod_ino: u64, view: &Arc<ParentView>) -> Arc<Vec<u64>> {
        if let Some((cached, inos)) = self.child_inos.lock().get(&pod_ino) {
            if Arc::ptr_eq(cached, view) {
                return inos.clone();
            }
        }
        let inos: Arc<Vec<u64>> = Arc::new(
            view.children()
                .map(|c| self.inodes.child_of(pod_ino, &c.pod_name))
                .collect(),
        );
        self.child_inos
            .lock()
            .insert(pod_ino, (view.clone(), inos.clone()));
        inos
    }

    fn listing_of(&self, ino: u64) -> Result<Listing> {
        let small = |parent, entries| Listing::Small {
            ino,
            parent,
            entries,
        };
        Ok(match self.node(ino)? {
            Node::Root => {
                let pods = self.reg.pods()?;
                let entries = pods
                    .iter()
                    .map(|pod| (self.inodes.pod(pod), true, pod.clone(), None))
                    .collect();
                small(inode::ROOT, entries)
            }
            Node::Pod(pod) => {
                let view = self.reg.parent(&pod)?;
                let inos = self.inos_of(ino, &view);
                Listing::Pod { ino, view, inos }
            }
            Node::Child(pod, child) => {
                self.reg.child_view(&pod, &child)?;
                let entries = FileKind::ALL
                    .iter()
                    .map(|&k| {
                        let attr = self.file_attr(&pod, &child, k).ok();
                        let ino = self.inodes.file(&pod, &child, k);
                        (ino, false, k.name().to_string(), attr)
                    })
                    .collect();
                small(self.inodes.pod(&pod), entries)
            }
            Node::File(..) => return Err(Error::NotDir),
        })
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let listing = Arc::new(self.listing_of(ino)?);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, listing);
        Ok(fh)
    }

    /// Feed the entries of an open directory from position `offset` on (`.` and `..` first)
    /// to `emit`, with the offset of the entry after each, until `emit` says the reply is
    /// full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut emit: impl FnMut(u64, DirEntry<'_>) -> bool,
    ) -> Result<()> {
        let listing = self
            .dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("directory handle {fh}")))?;
        let (ino, parent, len) = match &*listing {
            Listing::Pod { ino, view, .. } => (*ino, inode::ROOT, view.len()),
            Listing::Small {
                ino,
                parent,
                entries,
            } => (*ino, *parent, entries.len()),
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        for k in start..len + 2 {
            let entry = match (k, &*listing) {
                (0, _) => DirEntry {
                    ino,
                    is_dir: true,
                    name: ".",
                    attr: None,
                },
                (1, _) => DirEntry {
                    ino: parent,
                    is_dir: true,
                    name: "..",
                    attr: None,
                },
                (k, Listing::Pod { view, inos, .. }) => {
                    let child_ino = inos[k - 2];
                    DirEntry {
                        ino: child_ino,
                        is_dir: true,
                        name: &view.child_at(k - 2).pod_name,
                        attr: Some(self.dir_attr(child_ino, 0o755, 0, view.mtime)),
                    }
                }
                (k, Listing::Small { entries, .. }) => {
                    let (ino, is_dir, name, attr) = &entries[k - 2];
                    DirEntry {
                        ino: *ino,
                        is_dir: *is_dir,
                        name,
                        attr: attr.clone(),
                    }
                }
            };
            if emit(k as u64 + 1, entry) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// Whether opening `ino` may talk to a socket, so the adapter must run it on a worker.
    pub fn open_blocks(&self, ino: u64) -> bool {
        match self.inodes.resolve(ino) {
            Some(Node::File(pod, child, FileKind::Status)) => {
                let Ok(view) = self.reg.child_view(&pod, &child) else {
                    return false;
                };
                let record = view.child(&child).expect("checked by child_view");
                self.reg
                    .child_socket(record)
                    .is_ok_and(|s| self.reg.cached_status(&s).is_none())
            }
            Some(Node::File(_, _, kind)) => matches!(kind, FileKind::Output | FileKind::Log),
            _ => false,
        }
    }

    /// Open a file. `read`/`write` say which access the caller asked for.
    pub fn open(&self, ino: u64, read: bool, write: bool) -> Result<u64> {
        let Node::File(pod, child, kind) = self.node(ino)? else {
            return Err(Error::IsDir);
        };
        if (read && !kind.readable()) || (write && !kind.writable()) {
            return Err(Error::ReadOnly);
        }
        let view = self.reg.child_view(&pod, &child)?;
        let record = view.child(&child).expect("checked by child_view");
        let content = match kind {
            FileKind::Input => Content::Input(Arc::default()),
            FileKind::Cursor if !read => Content::CursorWrite(Default::default()),
            FileKind::Socket | FileKind::Scope | FileKind::Callback | FileKind::Cursor => {
                Content::Bytes(Arc::new(self.value(&pod, record, kind)))
            }
            FileKind::Status => {
                let word = self.reg.status(record);
                Content::Bytes(Arc::new(format!("{word}\n").into_bytes()))
            }
            FileKind::Output => Content::Bytes(Arc::new(self.take_output(&pod, record))),
            FileKind::Log => self.open_log(record),
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().insert(fh, content);
        Ok(fh)
    }

    /// ReadPodOutput with the mount's cursor: one snapshot of the new text per open.
    fn take_output(&self, pod: &str, record: &ChildRecord) -> Vec<u8> {
        let child = &*record.pod_name;
        let Ok(socket) = self.reg.child_socket(record) else {
            return Vec::new();
        };
        let snapshot = match ops::snapshot(&socket, &self.reg.timeouts) {
            Ok(s) => s,
            // Unreachable: an empty read, and the cursor stays where it was.
            Err(_) => return Vec::new(),
        };
        let cursor = self.reg.cursor(pod, child);
        let len = snapshot.entries.len();
        let range = history::window(len, cursor);
        if range.start == 0 && cursor > len as u64 {
            warn!(
                pod,
                child, cursor, len, "history shrank below the cursor; starting over"
            );
        }
        let extraction = history::extract(&snapshot.entries[range]);
        if extraction.malformed > 0 {
            warn!(
                pod,
                child,
                malformed = extraction.malformed,
                "history entries did not parse; output may be incomplete"
            );
        }
        self.reg.set_cursor(pod, child, len as u64);
        as_file_text(extraction.text).into_bytes()
    }

    fn open_log(&self, record: &ChildRecord) -> Content {
        let Ok(socket) = self.reg.child_socket(record) else {
            return Content::Bytes(Arc::new(Vec::new()));
        };
        let first = ops::snapshot(&socket, &self.reg.timeouts).ok();
        let feed = self
            .followers
            .subscribe(&socket, first.as_ref(), &self.reg.timeouts);
        Content::Log(socket, feed)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let slice = |bytes: &[u8]| {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start.saturating_add(size as usize).min(bytes.len());
            bytes[start..end].to_vec()
        };
        match self.files.lock().get(&fh) {
            Some(Content::Bytes(bytes)) => Ok(slice(bytes)),
            Some(Content::Log(_, feed)) => Ok(slice(feed.current().text.as_bytes())),
            Some(Content::Input(_)) | Some(Content::CursorWrite(_)) => Err(Error::ReadOnly),
            None => Err(Error::NotFound(format!("file handle {fh}"))),
        }
    }

    /// Whether a write to `ino` talks to a socket (input does).
    pub fn write_blocks(&self, ino: u64) -> bool {
        matches!(
            self.inodes.resolve(ino),
            Some(Node::File(_, _, FileKind::Input))
        )
    }

    pub fn write(&self, ino: u64, fh: u64, data: &[u8]) -> Result<usize> {
        let Node::File(pod, child, kind) = self.node(ino)? else {
            return Err(Error::IsDir);
        };
        match kind {
            FileKind::Cursor => {
                let value = files::parse_cursor(data)?;
                self.reg.child_view(&pod, &child)?;
                self.reg.set_cursor(&pod, &child, value);
                if let Some(Content::CursorWrite(wrote)) = self.files.lock().get(&fh) {
                    wrote.store(true, Ordering::Relaxed);
                }
                Ok(data.len())
            }
            FileKind::Input => {
                let buf = match self.files.lock().get(&fh) {
                    Some(Content::Input(buf)) => buf.clone(),
                    _ => return Err(Error::ReadOnly),
                };
                let pending = buf.lock().len();
                if pending + data.len() > files::INPUT_LIMIT {
                    return Err(Error::TooBig {
                        size: pending + data.len(),
                        limit: files::INPUT_LIMIT,
                    });
                }
                // The message is sent at close, but shells ignore errors from close(), so
                // a child that cannot take it is refused at the first write, where `printf`
                // sees it (later writes of the same message need not ask again).
                if pending == 0 {
                    let socket = self.input_socket(&pod, &child)?;
                    let snapshot = ops::probe(&socket, &self.reg.timeouts)?;
                    if snapshot.status() == PodStatus::Running {
                        return Err(Error::Busy(format!("{child} is already running a turn")));
                    }
                }
                buf.lock().extend_from_slice(data);
                Ok(data.len())
            }
            _ => Err(Error::ReadOnly),
        }
    }

    /// `O_TRUNC` on the writable files is accepted; every other attribute change is not.
    pub fn truncate(&self, ino: u64, size: u64) -> Result<Attr> {
        match self.node(ino)? {
            Node::File(_, _, kind) if kind.writable() && size == 0 => self.getattr(ino),
            Node::File(..) => Err(Error::ReadOnly),
            _ => Err(Error::IsDir),
        }
    }

    fn input_socket(&self, pod: &str, child: &str) -> Result<PathBuf> {
        let (_, record) = self.reg.child(pod, child)?;
        self.reg
            .child_socket(&record)
            .map_err(|_| Error::Unreachable(format!("{child}: socket outside the runtime dir")))
    }

    /// Whether `flush(fh)` talks to a socket (closing an `input` handle sends the message).
    pub fn flush_blocks(&self, fh: u64) -> bool {
        matches!(self.files.lock().get(&fh), Some(Content::Input(_)))
    }

    /// `close()`: an `input` handle sends what was written as one run; a write-only
    /// `cursor` handle that received no write was an empty write.
    pub fn flush(&self, ino: u64, fh: u64) -> Result<()> {
        let buf = match self.files.lock().get(&fh) {
            Some(Content::CursorWrite(wrote)) if !wrote.load(Ordering::Relaxed) => {
                return Err(Error::InvalidValue(
                    "empty write to cursor; the cursor is unchanged".into(),
                ))
            }
            Some(Content::Input(buf)) => buf.clone(),
            _ => return Ok(()),
        };
        // Taken, not copied: a descriptor closed twice (dup) sends the message once.
        let data = std::mem::take(&mut *buf.lock());
        if data.is_empty() {
            return Ok(());
        }
        let Node::File(pod, child, _) = self.node(ino)? else {
            return Err(Error::IsDir);
        };
        let text = files::parse_input(&data)?;
        let socket = self.input_socket(&pod, &child)?;
        ops::send_run(&socket, &text, &self.reg.timeouts)?;
        self.reg.note_status(&socket, PodStatus::Running);
        Ok(())
    }

    pub fn release(&self, fh: u64) {
        if let Some(Content::Log(socket, feed)) = self.files.lock().remove(&fh) {
            self.followers.unsubscribe(&socket, &feed);
        }
    }

    /// Unlinking a control file succeeds and changes nothing: `rm -r` removes the files
    /// before the directory, and only `rmdir` stops and reclaims.
    pub fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        match self.node(parent)? {
            Node::Child(pod, child) => {
                FileKind::from_name(name)
                    .ok_or_else(|| Error::NotFound(format!("{pod}/{child}/{name}")))?;
                self.reg.child_view(&pod, &child)?;
                Ok(())
            }
            Node::Pod(_) | Node::Root => {
                validate_pod_name(name)?;
                Err(Error::IsDir)
            }
            Node::File(..) => Err(Error::NotDir),
        }
    }

    /// `rmdir <parent>/<child>`: stop and reclaim. Blocking; run it on a worker.
    pub fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        match self.node(parent)? {
            Node::Pod(pod) => {
                validate_pod_name(name)?;
                reclaim::remove_child(&self.reg, &pod, name).map(|_| ())
            }
            Node::Root => {
                validate_pod_name(name)?;
                Err(Error::NotPermitted(
                    "pods themselves cannot be removed".into(),
                ))
            }
            Node::Child(..) => Err(Error::NotDir),
            Node::File(..) => Err(Error::NotDir),
        }
    }
}

impl PodFs {
    /// `access(2)` against the honest modes, so `test -w socket` is false even on a private
    /// mount where the kernel does not check modes itself.
    pub fn access(&self, ino: u64, read: bool, write: bool) -> Result<()> {
        let attr = self.getattr(ino)?;
        let denied = (read && attr.perm & 0o444 == 0) || (write && attr.perm & 0o222 == 0);
        if denied {
            Err(Error::ReadOnly)
        } else {
            Ok(())
        }
    }
}
