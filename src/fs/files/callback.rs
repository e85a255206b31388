//! `callback`: the address the child reports back to, empty when it has none (the yoi
//! worker generation records one; insomnia 5472 does not).

use crate::fs::body;
use crate::store::metadata::ChildRecord;

use super::registry::{Registry, RegistryValue};

pub(super) struct Address;

impl RegistryValue for Address {
    const NAME: &'static str = "callback";

    fn body(record: &ChildRecord) -> Vec<u8> {
        if record.callback_address.is_empty() {
            Vec::new()
        } else {
            body::line(&record.callback_address)
        }
    }
}

pub(super) const CALLBACK: Registry<Address> = Registry::FILE;
