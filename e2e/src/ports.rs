//! Free TCP ports on 127.0.0.1.

use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

/// Ports this process already handed out: never hand one out twice (tests run in parallel).
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(Mutex::default)
}

/// A port on 127.0.0.1 that was free a moment ago: bound to `:0`, then released.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        drop(listener);
        let mut ports = handed_out().lock().unwrap_or_else(|e| e.into_inner());
        if ports.insert(port) {
            return Ok(port);
        }
    }
    bail!("could not find a free port on 127.0.0.1 that was not handed out already")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}
