//! `rmdir <parent>/<child>`: stop the child, then reclaim its delegated scope, with the
//! parent live (let it do its own bookkeeping) or proven gone (edit its durable files
//! exactly as the runtime's `remove` would). Blocking: runs on the worker pool.
//!
//! Ordering is what makes this safe: nothing is reclaimed while the child still accepts
//! connections (the runtime's own stop does, and leaves two writers); nothing is edited
//! behind a parent that may be running (it would overwrite the edit from memory): a parent
//! that accepts connections but does not answer is running, and the removal fails with
//! nothing changed; and the offline edit is one critical section under the allocation
//! table's own lock, which re-reads the registry inside it, so two mounts of one home (or
//! two `rm -r`) cannot both reclaim a child. Within it, the allocation table is written
//! first, so that a crash in between leaves the child listed and a repeated `rm -r`
//! finishes the job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, info_span, warn};

use crate::confine::Dir;
use crate::error::{Error, Result};
use crate::name::PodName;
use crate::parents::ParentCache;
use crate::pod_client::{PodClient, Presence};
use crate::process::Requester;
use crate::store::metadata;
use crate::store::{alloc, mirror};

/// How a removal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The live parent removed the child itself (confirmed in its `metadata.json`).
    ByParent,
    /// podfs edited the files of a parent that is proven not to run.
    Offline,
}

/// The removals of one mount: one at a time per parent. (Across processes, the offline
/// edit is serialised by the allocation table's lock; this keeps two `rm -r` in one mount
/// from even stopping the same child twice.)
#[derive(Default)]
pub struct Removals {
    parents: Mutex<HashMap<PodName, Arc<Mutex<()>>>>,
}

impl Removals {
    fn lock_of(&self, parent: &PodName) -> Arc<Mutex<()>> {
        self.parents
            .lock()
            .entry(parent.clone())
            .or_default()
            .clone()
    }

    /// Stop `child` and reclaim its scope from `parent`, on behalf of `who` (whose signal
    /// ends the waits before the files are touched).
    pub fn remove_child(
        &self,
        parents: &ParentCache,
        client: &PodClient,
        parent: &PodName,
        child: &PodName,
        who: Requester,
    ) -> Result<Removed> {
        let _span = info_span!("remove", %parent, %child).entered();
        let started = Instant::now();
        let lock = self.lock_of(parent);
        let _serialised = lock.lock();
        crate::failpoint::point("remove");
        let view = parents.refresh(parent)?;
        let record = view
            .child(child)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{parent}/{child}")))?;
        refuse_if_it_has_children(parents, child)?;

        // A parent that is there but silent may be running: nothing is stopped and nothing
        // is edited. Only a refused connection or a dead pid proves it gone.
        let live = match client.presence(parent) {
            Presence::Live => true,
            Presence::Gone(proof) => {
                debug!(proof, "parent is not running");
                false
            }
            Presence::Silent => return Err(silent(parent)),
            Presence::Unknown(e) => return Err(e),
        };
        who.check()?;

        // A registry socket outside the runtime dir is never connected to; the path the
        // runtime itself would give the child is.
        let socket = client
            .socket(&record.socket_path)
            .unwrap_or_else(|_| client.own_socket(child));
        if !client.stop(&socket, who)? {
            warn!("child still accepts connections; nothing reclaimed");
            return Err(Error::Busy(format!(
                "{child} did not stop within {:?}; its scope was not reclaimed",
                client.timeouts().stop_wait
            )));
        }
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "child stopped"
        );

        let before = view.incarnation(child);
        let outcome = if live {
            reclaim_through_live_parent(parents, client, parent, child, before, who)?;
            Removed::ByParent
        } else {
            if !client.still_gone(parent) {
                return Err(Error::Busy(format!(
                    "{parent} came up during the removal; nothing was edited, retry"
                )));
            }
            reclaim_offline(parents, client, parent, child, who)?;
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
}

fn silent(parent: &PodName) -> Error {
    warn!("parent accepts connections but sent no Snapshot; nothing changed");
    Error::Busy(format!(
        "{parent} accepts connections but does not answer; it may be running, so its files \
         were not edited and nothing was stopped"
    ))
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

/// How often a removal waiting on the parent looks for a signal to its caller.
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

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
) -> Result<()> {
    let t = client.timeouts();
    let grace = t.confirm_wait.min(Duration::from_millis(500));
    if wait_reclaimed(parents, parent, child, before, grace, who)? {
        debug!("parent reclaimed on the child's own report");
        return Ok(());
    }
    if parents.refresh(parent)?.child(child).is_some() {
        client.send_shut_down(&client.own_socket(parent), child)?;
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

/// The runtime's `remove` effects, applied to the files of a parent that is proven not to
/// run, all under the allocation table's lock (the runtime locks that very inode for every
/// change it makes, and so does every other podfs): the registry is re-read inside it, so
/// a child another mount reclaimed meanwhile is `ENOENT` here and no deny layer goes
/// twice. The table is written first (a crash leaves the child listed and a repeat
/// finishes the job), then `metadata.json` (atomically), then the mirror.
fn reclaim_offline(
    parents: &ParentCache,
    client: &PodClient,
    parent: &PodName,
    child: &PodName,
    who: Requester,
) -> Result<()> {
    let paths = parents.paths();
    let gen = paths.generation;
    // Every directory is opened before anything is written: one that is a symlink (or
    // otherwise cannot be opened) fails the removal with nothing changed.
    let pod_dir = paths
        .open_pod_dir(parent)
        .map_err(|e| Error::io(format!("open the directory of {parent}"), e))?;
    let run_dir = match paths.open_pod_runtime_dir(parent) {
        Ok(dir) => Some(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("open the runtime dir of {parent}"), e)),
    };
    let mut table = alloc::lock(
        &paths.runtime,
        gen.alloc_file,
        client.timeouts().lock_wait,
        &|| who.check(),
    )?;
    // From here on the edit runs to its end: a signal no longer interrupts it.
    let mut meta = metadata::read_in(&pod_dir, gen)?;
    let Some(entry) = meta.child(child) else {
        // Reclaimed by someone else (another mount, another `rm -r`) since it was listed;
        // a journal naming it is left from a completed reclaim.
        if read_journal(&pod_dir).is_some_and(|j| j.child == child.as_str()) {
            let _ = pod_dir.remove(JOURNAL);
        }
        return Err(Error::NotFound(format!("{parent}/{child}")));
    };
    if !client.still_gone(parent) {
        return Err(Error::Busy(format!(
            "{parent} came up during the removal; nothing was edited, retry"
        )));
    }
    let rules = entry.scope_delegated;
    let table_path = table.path().to_path_buf();
    let mut t =
        alloc::AllocTable::parse(table.bytes(), gen).map_err(|e| Error::corrupt(&table_path, e))?;
    let journal = read_journal(&pod_dir).filter(|j| j.child == child.as_str());
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
    } else {
        let report = t
            .reclaim_delegated_scope(parent, child, &rules)
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
    }
    crate::failpoint::point("reclaim-between-table-and-metadata");
    meta.reclaim_child(child);
    metadata::write_in(&pod_dir, &meta)?;
    if let Some(run) = &run_dir {
        mirror::remove_child_in(run, gen.mirror_file, child, gen)?;
    }
    if let Err(e) = pod_dir.remove(JOURNAL) {
        warn!(error = %e, "cannot remove the reclaim journal");
    }
    drop(table);
    Ok(())
}
