//! `socket`: the path of the child's control socket, as the registry records it.

use crate::fs::body;
use crate::store::metadata::ChildRecord;

use super::registry::{Registry, RegistryValue};

pub(super) struct SocketPath;

impl RegistryValue for SocketPath {
    const NAME: &'static str = "socket";

    fn body(record: &ChildRecord) -> Vec<u8> {
        body::line(&record.socket_path)
    }
}

pub(super) const SOCKET: Registry<SocketPath> = Registry::FILE;
