//! `rmdir <parent>/<child>`: stop the child, then reclaim its delegated scope, with the
//! parent live (let it do its own bookkeeping) or proven gone (edit its durable files
//! exactly as the runtime's `remove` would). Blocking: runs on the worker pool.
//!
//! Ordering is what makes this safe: nothing is reclaimed while the child may still run
//! (the runtime's own stop does, and leaves two writers); nothing is edited behind a parent
//! that is not proven gone (it would overwrite the edit from memory): a parent that
//! accepts connections but does not answer is running, and the removal fails with nothing
//! changed. Proof is a type ([`Gone`]): the offline edit cannot be called without one.
//!
//! **Invariant: one removal per parent at a time, across every mount of the home.** The
//! whole removal, live or offline, runs under an exclusive `flock` on the parent's own
//! directory in the store (a lock each mount takes on the inode, so two mounts, or two
//! `rm -r` in one, see each other), and the registry is read again once it is held: the
//! second of two removals of one child finds it gone (`ENOENT`), so a live parent is never
//! told twice and no deny layer goes twice. Within the offline edit the allocation table
//! is written first, so that a crash in between leaves the child listed and a repeated
//! `rm -r` finishes the job.

use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, info_span, warn};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::home::Socket;
use crate::name::PodName;
use crate::parents::ParentCache;
use crate::pod_client::{Gone, PodClient, Presence};
use crate::process::Requester;
use crate::store::metadata::{self, ChildRecord};
use crate::store::{alloc, mirror};

/// How a removal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The live parent removed the child itself (confirmed in its `metadata.json`).
    ByParent,
    /// podfs edited the files of a parent that is proven not to run.
    Offline,
}

/// How often a removal that waits looks for a signal to its caller.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

/// The removal lock of `parent`: an exclusive `flock` on its store directory, waited for
/// at most as long as another removal can take, and given up when `who` gets a signal.
fn lock_parent(dir: &Dir, wait: Duration, who: Requester) -> Result<Flock<std::os::fd::OwnedFd>> {
    let deadline = Instant::now() + wait;
    let fd = dir
        .fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io("lock the parent for a removal", e))?;
    let mut fd = fd;
    loop {
        match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => return Ok(locked),
            Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) => {
                if Instant::now() >= deadline {
                    return Err(Error::Busy(format!(
                        "another removal of a child of {} has not ended within {wait:?}",
                        dir.path().display()
                    )));
                }
                who.check()?;
                fd = f;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, e)) => return Err(Error::io("lock the parent for a removal", e.into())),
        }
    }
}

/// The parent's own socket, as its records name it: the callback its direct child
/// reports to, else the socket the runtime makes beside the child's (one runtime dir
/// holds a spawner's socket and its children's).
fn parent_socket(
    client: &PodClient,
    record: &ChildRecord,
    child: &Socket,
    parent: &PodName,
) -> Socket {
    match client.place(&record.callback_address) {
        Ok(s) if s.pod() == parent => s,
        _ => child.sibling(parent),
    }
}

/// Stop `child` and reclaim its scope from `parent`, on behalf of `who` (whose signal
/// ends the waits before the files are touched).
pub fn remove_child(
    parents: &ParentCache,
    client: &PodClient,
    parent: &PodName,
    child: &PodName,
    who: Requester,
) -> Result<Removed> {
    let _span = info_span!("remove", %parent, %child).entered();
    let started = Instant::now();
    let t = client.timeouts();
    let home = client.home();
    let pod_dir = home.pod_dir(parent).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotFound(format!("{parent}/{child}")),
        _ => Error::io(format!("open the directory of {parent}"), e),
    })?;
    // As long as one removal can take: its stop, its confirmation, its lock and a probe.
    let wait = t.stop_wait + t.confirm_wait * 2 + t.lock_wait + t.io * 3 + t.connect * 4;
    let _serialised = lock_parent(&pod_dir, wait, who)?;
    crate::failpoint::point("remove");
    let view = parents.refresh(parent)?;
    let record = view
        .child(child)
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("{parent}/{child}")))?;
    refuse_if_it_has_children(parents, child)?;
    // A socket outside the home's runtime dirs is never connected to, and never taken
    // for a child that is gone: EACCES, nothing changed.
    let child_socket = client.place(&record.socket_path)?;
    let parent_socket = parent_socket(client, &record, &child_socket, parent);

    // A parent that is there but silent may be running: nothing is stopped and nothing
    // is edited. Only a refusal at its recorded socket proves it gone.
    let live = match client.presence(&parent_socket) {
        Presence::Live => true,
        Presence::Gone(proof) => {
            debug!(proof = proof.proof(), "parent is not running");
            false
        }
        Presence::Silent => return Err(silent(parent)),
        Presence::Unknown(e) => return Err(not_proven(parent, e)),
    };
    who.check()?;

    let Some(stopped) = client.stop(&child_socket, who)? else {
        warn!("child still runs; nothing reclaimed");
        return Err(Error::Busy(format!(
            "{child} did not stop within {:?}; its scope was not reclaimed",
            t.stop_wait
        )));
    };
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        proof = stopped.proof(),
        "child stopped"
    );

    let before = view.incarnation(child);
    let outcome = if live {
        reclaim_through_live_parent(parents, client, parent, child, before, who, &parent_socket)?;
        Removed::ByParent
    } else {
        let Some(gone) = client.still_gone(&parent_socket) else {
            return Err(Error::Busy(format!(
                "{parent} came up during the removal; nothing was edited, retry"
            )));
        };
        reclaim_offline(
            client,
            &pod_dir,
            parent,
            child,
            &child_socket,
            &parent_socket,
            &gone,
            who,
        )?;
        Removed::Offline
    };
    let _ = parents.refresh(parent);
    info!(
        ?outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "child removed"
    );
    Ok(outcome)
}

fn silent(parent: &PodName) -> Error {
    warn!("parent accepts connections but sent no Snapshot; nothing changed");
    Error::Busy(format!(
        "{parent} accepts connections but does not answer; it may be running, so its files \
         were not edited and nothing was stopped"
    ))
}

/// A parent podfs could not prove gone, for a reason of podfs's own: that reason where
/// podfs may not reach the parent (`EACCES`), else `EBUSY`, nothing changed either way.
fn not_proven(parent: &PodName, e: Error) -> Error {
    warn!(error = %e, "parent not proven gone; nothing changed");
    match e.errno() {
        libc::EACCES | libc::EPERM | libc::ELOOP => e,
        _ => Error::Busy(format!(
            "{parent} is not proven gone ({e}); its files were not edited and nothing was \
             stopped"
        )),
    }
}

/// Grandchildren are not reclaimed implicitly: the child's own registry must be empty
/// first, so that no scope is handed back while a descendant may still write with it.
fn refuse_if_it_has_children(parents: &ParentCache, child: &PodName) -> Result<()> {
    match parents.refresh(child) {
        Ok(own) if !own.is_empty() => {
            let names: Vec<&str> = own.names().map(|c| c.as_str()).collect();
            Err(Error::NotEmpty(format!(
                "{child} still has children ({}); remove them first",
                names.join(", ")
            )))
        }
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn reclaimed(parents: &ParentCache, parent: &PodName, child: &str, before: u64) -> Result<bool> {
    let view = parents.refresh(parent)?;
    Ok(view.child(child).is_none() && view.incarnation(child) > before)
}

/// Wait until the parent's registry shows `child` reclaimed, for at most `wait`: woken by
/// the registry's change notification (inotify), re-checking at least every
/// [`SIGNAL_CHECK`] so that `who`'s signal ends the wait.
fn wait_reclaimed(
    parents: &ParentCache,
    parent: &PodName,
    child: &str,
    before: u64,
    wait: Duration,
    who: Requester,
) -> Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        let seen = parents.changes();
        if reclaimed(parents, parent, child, before)? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        who.check()?;
        parents.wait_for_change(parent, seen, deadline.min(now + SIGNAL_CHECK));
    }
}

/// A direct child's own shutdown normally tells the parent already; podfs sends the
/// `shut_down` event only if that has not taken effect (the event is unauthenticated and
/// always shown to the parent's LLM, so it is sent only while the child is still listed).
fn reclaim_through_live_parent(
    parents: &ParentCache,
    client: &PodClient,
    parent: &PodName,
    child: &PodName,
    before: u64,
    who: Requester,
    parent_socket: &Socket,
) -> Result<()> {
    let t = client.timeouts();
    let grace = t.confirm_wait.min(Duration::from_millis(500));
    if wait_reclaimed(parents, parent, child, before, grace, who)? {
        debug!("parent reclaimed on the child's own report");
        return Ok(());
    }
    if parents.refresh(parent)?.child(child).is_some() {
        client.send_shut_down(parent_socket, child)?;
        debug!("shut_down event sent to the parent");
    }
    if wait_reclaimed(parents, parent, child, before, t.confirm_wait, who)? {
        return Ok(());
    }
    let left = parents.refresh(parent)?;
    warn!(
        still_listed = left.child(child).is_some(),
        "live parent did not confirm the reclaim; its files were not edited"
    );
    Err(Error::NotConfirmed(format!(
        "{parent} is running but did not record {child} as reclaimed within {:?}",
        t.confirm_wait
    )))
}

/// podfs's own journal of a reclaim in progress, next to the parent's `metadata.json`
/// (the runtime lists pods by `metadata.json` and never reads this file).
///
/// Removing a deny layer from the allocation table is the one step that is not idempotent:
/// a restored parent may hold two identical layers, and a repeat after a crash between the
/// table and `metadata.json` would remove both. So before the table is rewritten with a
/// layer removed, the journal records what the parent's deny list becomes; a repeat that
/// finds the list already in that state skips the removal. Written only when a layer is
/// removed, so the common case costs nothing.
const JOURNAL: &str = "podfs-reclaim.json";

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    child: String,
    parent_deny_after: Vec<Value>,
}

fn read_journal(dir: &Dir) -> Option<Journal> {
    let (bytes, _) = dir.read(JOURNAL).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(j) => Some(j),
        Err(e) => {
            warn!(path = %dir.path().join(JOURNAL).display(), error = %e,
                  "ignoring an unreadable reclaim journal");
            None
        }
    }
}

/// The runtime's `remove` effects, applied to the files of a parent proven not to run
/// (`_gone`: no proof, no edit), with the parent's removal lock held: the allocation
/// table first (under its own lock, which the runtime takes for every change it makes),
/// then `metadata.json` (atomically), then the mirror. The runtime dir is the one the
/// child's recorded socket lies in: the spawner's, which holds its allocation table.
#[allow(clippy::too_many_arguments)]
fn reclaim_offline(
    client: &PodClient,
    pod_dir: &Dir,
    parent: &PodName,
    child: &PodName,
    child_socket: &Socket,
    parent_socket: &Socket,
    _gone: &Gone,
    who: Requester,
) -> Result<()> {
    let home = client.home();
    let gen = home.generation();
    let absent =
        |e: &std::io::Error| matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR));
    // Every directory is opened before anything is written: one that is a symlink (or
    // otherwise cannot be opened) fails the removal with nothing changed. A runtime dir
    // that is not there holds no allocation to reclaim.
    let run_dir = match home.pod_runtime_dir(parent_socket) {
        Ok(dir) => Some(dir),
        Err(e) if absent(&e) => None,
        Err(e) => return Err(Error::io(format!("open the runtime dir of {parent}"), e)),
    };
    let runtime = match home.runtime(child_socket.runtime()) {
        Ok(dir) => Some(dir),
        Err(e) if absent(&e) => None,
        Err(e) => return Err(Error::io("open the runtime dir", e)),
    };
    let mut table = match &runtime {
        Some(dir) => Some(alloc::lock_in(
            dir,
            gen.alloc_file,
            client.timeouts().lock_wait,
            &|| who.check(),
        )?),
        None => None,
    };
    // From here on the edit runs to its end: a signal no longer interrupts it.
    let mut meta = metadata::read_in(pod_dir, gen)?;
    let Some(entry) = meta.child(child) else {
        // Reclaimed by someone else since it was listed; a journal naming it is left from
        // a completed reclaim.
        if read_journal(pod_dir).is_some_and(|j| j.child == child.as_str()) {
            let _ = pod_dir.remove(JOURNAL);
        }
        return Err(Error::NotFound(format!("{parent}/{child}")));
    };
    if client.still_gone(parent_socket).is_none() {
        return Err(Error::Busy(format!(
            "{parent} came up during the removal; nothing was edited, retry"
        )));
    }
    if let Some(table) = table.as_mut() {
        reclaim_in_table(table, pod_dir, parent, child, &entry.scope_delegated, gen)?;
    } else {
        debug!("no runtime dir: no allocation table to reclaim from");
    }
    crate::failpoint::point("reclaim-between-table-and-metadata");
    meta.reclaim_child(child);
    metadata::write_in(pod_dir, &meta)?;
    if let Some(run) = &run_dir {
        mirror::remove_child_in(run, gen.mirror_file, child, gen)?;
    }
    if let Err(e) = pod_dir.remove(JOURNAL) {
        warn!(error = %e, "cannot remove the reclaim journal");
    }
    drop(table);
    Ok(())
}

/// The allocation table's part of the reclaim, with the journal that makes a repeat after
/// a crash remove a deny layer exactly once.
fn reclaim_in_table(
    table: &mut alloc::Locked,
    pod_dir: &Dir,
    parent: &PodName,
    child: &PodName,
    rules: &[crate::scope::StoredRule],
    gen: &'static crate::generation::Generation,
) -> Result<()> {
    let table_path = table.path().to_path_buf();
    let mut t =
        alloc::AllocTable::parse(table.bytes(), gen).map_err(|e| Error::corrupt(&table_path, e))?;
    let journal = read_journal(pod_dir).filter(|j| j.child == child.as_str());
    let resumed = journal
        .as_ref()
        .is_some_and(|j| t.deny(parent).as_ref() == Some(&j.parent_deny_after));
    let blank = table.bytes().iter().all(u8::is_ascii_whitespace);
    if resumed {
        info!("resuming a reclaim interrupted after its allocation-table step");
        let (removed, _) = t
            .remove_child_allocation(child)
            .map_err(|e| Error::corrupt(&table_path, e))?;
        if removed || blank {
            table.write(&t.to_bytes())?;
        }
        return Ok(());
    }
    let report = t
        .reclaim_delegated_scope(parent, child, rules)
        .map_err(|e| Error::corrupt(&table_path, e))?;
    if report.denies_removed > 0 {
        let entry = Journal {
            child: child.to_string(),
            parent_deny_after: t.deny(parent).unwrap_or_default(),
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| Error::io("encode the reclaim journal", e.into()))?;
        pod_dir
            .replace(JOURNAL, &bytes, 0o600)
            .map_err(|e| Error::io("write the reclaim journal", e))?;
    }
    // A table podfs just created (empty) gets the runtime's shape either way.
    if report.changed() || blank {
        table.write(&t.to_bytes())?;
    }
    debug!(?report, "allocation table reclaimed");
    // The runtime compares deny layers as raw strings while a restored parent's are
    // canonical: a rule that found no equal layer may have left one behind.
    let denies_left = t.deny(parent).is_some_and(|d| !d.is_empty());
    if denies_left && !report.denies_not_found.is_empty() {
        warn!(rules = ?report.denies_not_found,
              "no exactly-equal deny layer for these rules; a layer may remain");
    }
    Ok(())
}
