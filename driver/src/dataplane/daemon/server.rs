//! The API socket: accepts connections and answers one JSON line per
//! request line, a thread per connection (a node has few clients: the CSI
//! server and an operator's shell).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use super::api::{RequestError, Response, MAX_REQUEST_BYTES};
use super::error::DaemonError;
use super::Daemon;

/// Binds `path` (replacing a stale socket: the serve lock says no other
/// process serves) and answers from a thread.
pub(super) fn listen(daemon: Arc<Daemon>, path: &Path) -> Result<(), DaemonError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(DaemonError::io("remove the stale API socket", path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(DaemonError::io("bind the API socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(DaemonError::io("restrict the API socket", path))?;
    tracing::info!(socket = %path.display(), "API listening");
    std::thread::Builder::new()
        .name("floe-api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        let d = Arc::clone(&daemon);
                        let spawned = std::thread::Builder::new()
                            .name("floe-api-conn".into())
                            .spawn(move || serve_connection(&d, s));
                        if let Err(e) = spawned {
                            tracing::error!(error = %e, "start an API connection thread");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "accept an API connection"),
                }
            }
        })
        .map_err(DaemonError::io("start the API thread", path))?;
    Ok(())
}

fn serve_connection(daemon: &Daemon, stream: UnixStream) {
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "clone an API connection");
            return;
        }
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = match reader.by_ref().take(MAX_REQUEST_BYTES as u64 + 1).read_line(&mut line) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "read an API request");
                return;
            }
        };
        let too_long = n > MAX_REQUEST_BYTES && !line.ends_with('\n');
        let response = if too_long {
            Response::Error(DaemonError::from(RequestError::TooLong).to_wire())
        } else if line.trim().is_empty() {
            continue;
        } else {
            daemon.handle_line(line.trim_end())
        };
        let mut out = serde_json::to_vec(&response).expect("responses always encode");
        out.push(b'\n');
        if let Err(e) = writer.write_all(&out) {
            tracing::debug!(error = %e, "write an API response");
            return;
        }
        if too_long {
            return;
        }
    }
}
