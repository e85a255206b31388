//! How the reference pods and the demo talk to pods of a home they made themselves: by the
//! socket's path, as the runtime's own clients do. (podfs's mount never does: it reaches
//! sockets only through the home it opened at start, see [`crate::pod_client`].)

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::protocol::client::Connection;

/// The runtime's own bound on every step of a conversation.
const STEP: Duration = Duration::from_secs(5);
/// Longest protocol line read here (the reference pods' histories are small).
const MAX_LINE: usize = 64 << 20;

fn open(sock: &Path) -> Result<Connection> {
    let stream = UnixStream::connect(sock)
        .map_err(|e| Error::io(format!("connect {}", sock.display()), e))?;
    let (conn, _) = Connection::open(stream, sock.display().to_string(), STEP, MAX_LINE)?;
    Ok(conn)
}

/// Whether the pod answers now (a connection and a Snapshot).
pub fn is_live(sock: &Path) -> bool {
    open(sock).is_ok()
}

/// Write one method the careful way: prelude first, and a short linger after, so that
/// the server has read it before the connection closes.
pub fn report(sock: &Path, method: &Value) -> Result<()> {
    let mut conn = open(sock)?;
    conn.send(method, STEP)?;
    let until = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(_)) = conn.next_event(until) {}
    Ok(())
}
