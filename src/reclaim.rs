//! `rmdir <parent>/<child>`: stop the child, then reclaim its delegated scope, with the
//! parent live (let it do its own bookkeeping) or not (edit its durable files exactly as
//! the runtime's `remove` would).
//!
//! Ordering is what makes this safe: nothing is reclaimed while the child still accepts
//! connections (the runtime's StopPod does, and leaves two writers), nothing is edited
//! behind a live parent's back (it would overwrite the edit from memory), and the offline
//! path writes `pods.json` first so that a crash in between leaves the child listed and a
//! repeated `rm -r` finishes the job.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, info, info_span, warn};

use crate::error::{Error, Result};
use crate::paths::validate_pod_name;
use crate::protocol::{client, ops};
use crate::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::registry::ChildRecord;
use crate::scope::ScopeRule;
use crate::store::metadata;
use crate::store::{atomic, pods_table, spawned};

/// How a removal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removed {
    /// The live parent removed the child itself (confirmed in its `metadata.json`).
    ByParent,
    /// podfs edited the files of a parent that is not running.
    Offline,
}

/// Stop `child` and reclaim its scope from `parent`. Blocking: run it off the FUSE threads.
pub fn remove_child(reg: &Registry, parent: &str, child: &str) -> Result<Removed> {
    validate_pod_name(parent)?;
    validate_pod_name(child)?;
    let _span = info_span!("rmdir", parent, child).entered();
    let started = Instant::now();
    let slot = reg.slot(parent);
    // One mutation path per parent: a second `rm -r` of the same child waits here and then
    // finds the child gone (ENOENT) instead of reclaiming twice.
    let _serialised = slot.mutation.lock();
    let view = reg.parent_fresh(parent)?;
    clear_stale_journal(reg, parent, &view);
    let record = view
        .child(child)
        .cloned()
        .ok_or_else(|| Error::NotFound(format!("{parent}/{child}")))?;
    refuse_if_it_has_children(reg, child)?;

    let socket = stop_socket(reg, &record);
    stop(reg, child, &socket)?;
    debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "child stopped"
    );

    let before = view.times_reclaimed(child);
    let outcome = if reg.pod_is_live(parent) {
        reclaim_through_live_parent(reg, parent, child, before)?;
        Removed::ByParent
    } else {
        reclaim_offline(reg, parent, &record)?;
        Removed::Offline
    };
    reg.invalidate(parent);
    reg.forget_child(parent, child, Some(&socket));
    info!(
        ?outcome,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "child removed"
    );
    Ok(outcome)
}

/// Grandchildren are not reclaimed implicitly: the child's own registry must be empty
/// first, so that no scope is handed back while a descendant may still write with it.
fn refuse_if_it_has_children(reg: &Registry, child: &str) -> Result<()> {
    match reg.parent_fresh(child) {
        Ok(own) if !own.is_empty() => {
            let names: Vec<&str> = own.children().map(|c| &*c.pod_name).collect();
            Err(Error::NotEmpty(format!(
                "{child} still has children ({}); remove them first",
                names.join(", ")
            )))
        }
        Ok(_) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The socket to stop: the registry's, unless it lies outside the runtime dir, in which
/// case podfs uses the path the runtime itself would predict and never the foreign one.
fn stop_socket(reg: &Registry, record: &ChildRecord) -> PathBuf {
    reg.child_socket(record)
        .unwrap_or_else(|_| reg.paths.socket(&record.pod_name))
}

fn stop(reg: &Registry, child: &str, socket: &std::path::Path) -> Result<()> {
    let t = &reg.timeouts;
    if client::refuses_connections(socket, t.connect) {
        debug!("child already gone");
        return Ok(());
    }
    if let Err(e) = ops::request_shutdown(socket, t) {
        debug!(error = %e, "shutdown request failed; waiting for the socket anyway");
    }
    if ops::wait_gone(socket, t.stop_wait) {
        return Ok(());
    }
    warn!(
        child,
        "child still accepts connections after shutdown; nothing reclaimed"
    );
    Err(Error::Busy(format!(
        "{child} did not stop within {:?}; its scope was not reclaimed",
        t.stop_wait
    )))
}

fn reclaimed(reg: &Registry, parent: &str, child: &str, before: usize) -> Result<bool> {
    let view = reg.parent_fresh(parent)?;
    Ok(view.child(child).is_none() && view.times_reclaimed(child) > before)
}

fn poll_reclaimed(
    reg: &Registry,
    parent: &str,
    child: &str,
    before: usize,
    wait: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + wait;
    loop {
        if reclaimed(reg, parent, child, before)? {
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
    reg: &Registry,
    parent: &str,
    child: &str,
    before: usize,
) -> Result<()> {
    let t = &reg.timeouts;
    let grace = t.confirm_wait.min(Duration::from_millis(500));
    if poll_reclaimed(reg, parent, child, before, grace)? {
        debug!("parent reclaimed on the child's own report");
        return Ok(());
    }
    if reg.parent_fresh(parent)?.child(child).is_some() {
        ops::send_shut_down(&reg.paths.socket(parent), child, t)?;
        debug!("shut_down event sent to the parent");
    }
    if poll_reclaimed(reg, parent, child, before, t.confirm_wait)? {
        return Ok(());
    }
    let left = reg.parent_fresh(parent)?;
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
/// Removing a deny layer from `pods.json` is the one step that is not idempotent: a restored
/// parent may hold two identical layers, and a repeat after a crash would remove both. So
/// before `pods.json` is rewritten with a layer removed, the journal records what the
/// parent's deny list becomes; a repeat that finds the list already in that state skips the
/// removal. Written only when a layer is removed, so the common case costs nothing.
const JOURNAL: &str = "podfs-reclaim.json";

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    child: String,
    parent_deny_after: Vec<ScopeRule>,
}

fn journal_path(reg: &Registry, parent: &str) -> PathBuf {
    reg.paths.pods_dir().join(parent).join(JOURNAL)
}

/// A journal whose child is no longer listed is left from a crash after the metadata step:
/// that reclaim is complete, so the journal must not steer a later one.
fn clear_stale_journal(reg: &Registry, parent: &str, view: &crate::registry::ParentView) {
    let path = journal_path(reg, parent);
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
            warn!(path = %path.display(), error = %e, "ignoring unreadable reclaim journal");
            None
        }
    }
}

/// The runtime's `remove` effects, applied to the files of a parent that is not running:
/// `pods.json` first (so a crash leaves the child listed and a repeat finishes the job),
/// then `metadata.json`, then `spawned_pods.json`.
fn reclaim_offline(reg: &Registry, parent: &str, record: &ChildRecord) -> Result<()> {
    let child = &*record.pod_name;
    // The parent could have been restored since the probe; a live owner rewrites its
    // metadata from memory, so re-check as late as possible.
    if reg.pod_is_live(parent) {
        return Err(Error::Busy(format!(
            "{parent} came up during the removal; retry"
        )));
    }
    let rules = record.stored_rules();
    let journal = journal_path(reg, parent);
    let pending = read_journal(&journal).filter(|j| j.child == child);
    let outcome = pods_table::update(&reg.paths.pods_json(), reg.timeouts.lock_wait, |table| {
        if let Some(j) = &pending {
            if table.get(parent).map(|a| &a.scope_deny) == Some(&j.parent_deny_after) {
                info!("resuming a reclaim interrupted after its pods.json step");
                let (removed, _) = table.remove_child_allocation(child);
                return (removed, Ok(None));
            }
        }
        let report = table.reclaim_delegated_scope(parent, child, &rules);
        let denies_left = table.get(parent).is_some_and(|a| !a.scope_deny.is_empty());
        if report.denies_removed > 0 {
            let entry = Journal {
                child: child.to_string(),
                parent_deny_after: table
                    .get(parent)
                    .map(|a| a.scope_deny.clone())
                    .unwrap_or_default(),
            };
            let bytes = serde_json::to_vec(&entry).expect("journal serialises");
            if let Err(e) = atomic::replace_file(&journal, &bytes, 0o600) {
                return (false, Err(e));
            }
        }
        (true, Ok(Some((report, denies_left))))
    })??;
    if let Some((report, denies_left)) = &outcome {
        debug!(?report, "pods.json reclaimed");
        // The runtime compares deny layers as raw strings while a restored parent's are
        // canonical: a rule that found no equal layer may have left one behind.
        if *denies_left && !report.denies_not_found.is_empty() {
            warn!(rules = ?report.denies_not_found, "no exactly-equal deny layer for these rules; a layer may remain");
        }
    }

    let path = reg.paths.metadata(parent);
    let mut meta = metadata::read(&path)?;
    if meta.reclaim_child(child).is_some() {
        metadata::write(&path, &meta)?;
    }
    spawned::remove_child(&reg.paths.spawned_pods(parent), child)?;
    if let Err(e) = std::fs::remove_file(&journal) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(error = %e, "cannot remove the reclaim journal");
        }
    }
    Ok(())
}
