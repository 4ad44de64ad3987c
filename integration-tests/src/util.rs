//! Small shared pieces: the harness's time bounds, the benchmarks' environment settings, a poison-tolerant mutex lock, TOML string
//! quoting and a minimal HTTP GET (for `/metrics` and other plain-HTTP endpoints).

use std::io::{Read, Write as _};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Default bound for every wait in the harness (leader election, catch-up, convergence). Generous:
/// tests run on a loaded 2-core CI machine against debug builds that fsync.
pub const WAIT: Duration = Duration::from_secs(30);
/// Default bound for one `gatekeeper admin` invocation.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound for `admin join`, which waits until the new node has caught up (possibly by snapshot).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(90);
/// Poll interval of [`Cluster::wait_for`](crate::Cluster::wait_for).
pub const POLL: Duration = Duration::from_millis(50);

/// The value of environment variable `name` parsed as a `T`, or `default` when it is unset or
/// does not parse (the benchmarks' settings).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn toml_str(s: &str) -> String {
    // A JSON string is a valid TOML basic string for everything a path or address contains.
    serde_json::to_string(s).expect("string serialises")
}

/// A plain HTTP/1.1 GET; the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    match http_status(addr, path)? {
        (200, body) => Ok(body),
        (code, body) => Err(format!("GET {path} from {addr}: HTTP {code}: {body}")),
    }
}

/// `GET path` from `addr` over plain HTTP/1.1: the status code and the body, whatever the code.
pub fn http_status(addr: &str, path: &str) -> Result<(u16, String), String> {
    use std::net::TcpStream;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP answer: {buf:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_string()))
}
