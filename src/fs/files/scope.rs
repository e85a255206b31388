//! `scope`: the write scope the parent delegated to the child, one rule per line (see
//! [`crate::scope`] for the form, and how a target with odd characters is escaped).

use crate::fs::body;
use crate::store::metadata::ChildRecord;

use super::registry::{Registry, RegistryValue};

pub(super) struct Delegated;

impl RegistryValue for Delegated {
    const NAME: &'static str = "scope";

    fn body(record: &ChildRecord) -> Vec<u8> {
        body::lines(&record.scope_delegated)
    }
}

pub(super) const SCOPE: Registry<Delegated> = Registry::FILE;
