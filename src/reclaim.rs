//! `rmdir <parent>/<child>`: stop the child, then reclaim its delegated scope, with the
//! parent live (let it do its own bookkeeping) or not (edit its durable files exactly as
//! the runtime's `remove` would). Blocking: runs on the worker pool.
//!
//! Ordering is what makes this safe: nothing is reclaimed while the child still accepts
//! connections (the runtime's own stop does, and leaves two writers), nothing is edited
//! behind a live parent's back (it would overwrite the edit from memory), and the offline
//! path writes the allocation table first so that a crash in between leaves the child
//! listed and a repeated `rm -r` finishes the job.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, info_span, warn};

use crate::error::{Error, Result};
use crate::name::PodName;
use crate::parents::{ParentCache, ParentView};
use crate::pod_client::PodClient;
use crate::store::metadata::{self, ChildRecord};
use crate::store::{alloc, atomic, mirror};

/// How a removal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The live parent removed the child itself (confirmed in its `metadata.json`).
    ByParent,
    /// podfs edited the files of a parent that is not running.
    Offline,
}

/// Stop `child` and reclaim its scope from `parent`.
pub fn remove_child(
    parents: &ParentCache,
    client: &PodClient,
    parent: &PodName,
    child: &PodName,
) -> Result<Removed> {
    let _span = info_span!("remove", %parent, %child).entered();
    let started = Instant::now();
    let slot = parents.mutation_lock(parent);
    // One mutation path per parent: a second `rm -r` of the same child waits here and then
    // finds the child gone (ENOENT) instead of reclaiming twice.
    let _serialised = slot.mutation.lock();
    let view = parents.refresh(parent)?;
    clear_stale_journal(parents, parent, &view);
    let record = view
        .child(child)
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("{parent}/{child}")))?;
    refuse_if_it_has_children(parents, child)?;

    // A registry socket outside the runtime dir is never connected to; the path the
    // runtime itself would give the child is.
    let socket = client
        .socket(&record.socket_path)
        .unwrap_or_else(|_| client.own_socket(child));
    if !client.stop(&socket) {
        warn!("child still accepts connections; nothing reclaimed");
        return Err(Error::Busy(format!(
            "{child} did not stop within {:?}; its scope was not reclaimed",
            client.timeouts.stop_wait
        )));
    }
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "child stopped"
    );

    let before = view.incarnation(child);
    let outcome = if client.is_live(&client.own_socket(parent)) {
        reclaim_through_live_parent(parents, client, parent, child, before)?;
        Removed::ByParent
    } else {
        reclaim_offline(parents, client, parent, &record)?;
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

fn poll_reclaimed(
    parents: &ParentCache,
    parent: &PodName,
    child: &str,
    before: u64,
    wait: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        if reclaimed(parents, parent, child, before)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(20));
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
) -> Result<()> {
    let t = &client.timeouts;
    let grace = t.confirm_wait.min(Duration::from_millis(500));
    if poll_reclaimed(parents, parent, child, before, grace)? {
        debug!("parent reclaimed on the child's own report");
        return Ok(());
    }
    if parents.refresh(parent)?.child(child).is_some() {
        client.send_shut_down(&client.own_socket(parent), child)?;
        debug!("shut_down event sent to the parent");
    }
    if poll_reclaimed(parents, parent, child, before, t.confirm_wait)? {
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
/// a restored parent may hold two identical layers, and a repeat after a crash would remove
/// both. So before the table is rewritten with a layer removed, the journal records what
/// the parent's deny list becomes; a repeat that finds the list already in that state skips
/// the removal. It is written (and synced) while the table's lock is not held, because
/// runtime pods wait on that lock; and only when a layer is removed, so the common case
/// costs nothing.
const JOURNAL: &str = "podfs-reclaim.json";

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    child: String,
    parent_deny_after: Vec<Value>,
}

fn journal_path(parents: &ParentCache, parent: &PodName) -> PathBuf {
    parents.paths.pod_dir(parent).join(JOURNAL)
}

/// A journal whose child is no longer listed is left from a crash after the metadata step:
/// that reclaim is complete, so the journal must not steer a later one.
fn clear_stale_journal(parents: &ParentCache, parent: &PodName, view: &ParentView) {
    let path = journal_path(parents, parent);
    if let Some(j) = read_journal(&path) {
        if view.child(&j.child).is_none() {
            debug!(child = %j.child, "removing the journal of a completed reclaim");
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn read_journal(path: &std::path::Path) -> Option<Journal> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(j) => Some(j),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "ignoring an unreadable reclaim journal");
            None
        }
    }
}

/// What the locked step of an offline reclaim found.
enum Step {
    /// Done; whether a deny layer of the child's rules may remain in the parent's list.
    Done(Option<alloc::ReclaimReport>, bool),
    /// A deny layer is to be removed: the journal must record the result first, and is
    /// written outside the lock.
    NeedsJournal(Prepared),
}

/// A table change worked out under the lock but not written: applied in the next round
/// if the table is still exactly `before`.
struct Prepared {
    before: Vec<u8>,
    after: Vec<u8>,
    deny_after: Vec<Value>,
    report: alloc::ReclaimReport,
    denies_left: bool,
}

/// The runtime's `remove` effects, applied to the files of a parent that is not running:
/// the allocation table first (so a crash leaves the child listed and a repeat finishes the
/// job), then `metadata.json`, then the mirror.
///
/// The table step plans under the lock (one read of the table) and applies at once in the
/// common case. When a deny layer is to be removed it releases the lock with the new table
/// prepared, writes the journal, and locks again to write the prepared table if the file
/// is byte for byte the one it was prepared from (otherwise it plans again).
fn reclaim_offline(
    parents: &ParentCache,
    client: &PodClient,
    parent: &PodName,
    record: &ChildRecord,
) -> Result<()> {
    let paths = &parents.paths;
    let gen = paths.generation;
    let child = &*record.name;
    // The parent could have been restored since the probe; a live owner rewrites its
    // metadata from memory, so re-check as late as possible.
    if client.is_live(&client.own_socket(parent)) {
        return Err(Error::Busy(format!(
            "{parent} came up during the removal; retry"
        )));
    }
    let rules = record.stored_rules();
    let table_path = paths.alloc_table();
    let journal = journal_path(parents, parent);
    let pending = read_journal(&journal).filter(|j| j.child == child);
    let mut prepared: Option<Prepared> = None;
    let mut outcome = None;
    for _ in 0..5 {
        let ready = prepared.take();
        let step = alloc::update_bytes(&table_path, client.timeouts.lock_wait, |bytes| {
            if let Some(p) = ready.filter(|p| p.before == bytes) {
                return Ok((Some(p.after), Step::Done(Some(p.report), p.denies_left)));
            }
            let mut t =
                alloc::AllocTable::parse(bytes, gen).map_err(|e| Error::corrupt(&table_path, e))?;
            if let Some(j) = &pending {
                if t.deny(parent).as_ref() == Some(&j.parent_deny_after) {
                    info!("resuming a reclaim interrupted after its allocation-table step");
                    let (removed, _) = t.remove_child_allocation(child);
                    return Ok((removed.then(|| t.to_bytes()), Step::Done(None, false)));
                }
            }
            let report = t.reclaim_delegated_scope(parent, child, &rules);
            let deny_after = t.deny(parent).unwrap_or_default();
            let denies_left = !deny_after.is_empty();
            // A table podfs just created (empty) gets the runtime's shape either way.
            let blank = bytes.iter().all(u8::is_ascii_whitespace);
            let after = (report.changed() || blank).then(|| t.to_bytes());
            if report.denies_removed == 0 {
                return Ok((after, Step::Done(Some(report), denies_left)));
            }
            Ok((
                None,
                Step::NeedsJournal(Prepared {
                    before: bytes.to_vec(),
                    after: after.unwrap_or_default(),
                    deny_after,
                    report,
                    denies_left,
                }),
            ))
        })?;
        match step {
            Step::Done(report, left) => {
                outcome = Some((report, left));
                break;
            }
            Step::NeedsJournal(p) => {
                let entry = Journal {
                    child: child.to_string(),
                    parent_deny_after: p.deny_after.clone(),
                };
                let bytes = serde_json::to_vec(&entry).expect("journal serialises");
                atomic::replace_file(&journal, &bytes, 0o600)?;
                prepared = Some(p);
            }
        }
    }
    let Some((report, denies_left)) = outcome else {
        return Err(Error::Busy(format!(
            "{} kept changing under the removal; retry",
            table_path.display()
        )));
    };
    if let Some(report) = report {
        debug!(?report, "allocation table reclaimed");
        // The runtime compares deny layers as raw strings while a restored parent's are
        // canonical: a rule that found no equal layer may have left one behind.
        if denies_left && !report.denies_not_found.is_empty() {
            warn!(rules = ?report.denies_not_found, "no exactly-equal deny layer for these rules; a layer may remain");
        }
    }

    let path = paths.metadata(parent);
    let mut meta = metadata::read_settled(&path, gen)?;
    if meta.reclaim_child(child) {
        metadata::write(&path, &meta)?;
    }
    mirror::remove_child(&paths.mirror(parent), child, gen)?;
    if let Err(e) = std::fs::remove_file(&journal) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(error = %e, "cannot remove the reclaim journal");
        }
    }
    Ok(())
}
