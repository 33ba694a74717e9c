//! The control socket of a running agent: one JSON request line, one JSON
//! answer line. `{"cmd":"status"}` → the agent's view; `{"cmd":"apply"}` →
//! reconcile now. The socket is mode 0600 (root-only on a device).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::daemon::{Msg, Shared};

/// Removes the socket file when the agent stops.
#[derive(Debug)]
pub struct Bound(std::path::PathBuf);

impl Drop for Bound {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub async fn serve(
    path: &Path,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::Sender<Msg>,
) -> Result<Bound> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by an agent that died; a live one answers and is kept.
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another ferry agent is running (its socket {} answers)",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        while let Ok((conn, _)) = listener.accept().await {
            let (read, mut write) = conn.into_split();
            let mut lines = tokio::io::BufReader::new(read).lines();
            let Ok(Some(line)) = lines.next_line().await else {
                continue;
            };
            let answer = match serde_json::from_str::<Value>(&line) {
                Ok(req) => match req["cmd"].as_str() {
                    Some("status") => {
                        let s = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        json!({"ok": true, "agent": s})
                    }
                    Some("apply") => {
                        let sent = tx.send(Msg::Now).is_ok();
                        json!({"ok": sent, "message": "reconcile requested"})
                    }
                    other => json!({"ok": false, "error": format!("unknown command {other:?}")}),
                },
                Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
            };
            let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
        }
    });
    Ok(Bound(path.to_path_buf()))
}

/// Sends one request to the agent at `path`.
pub fn call(path: &Path, req: &Value) -> Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("no ferry agent answers on {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{req}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("the agent's answer")?;
    if v["ok"] != true {
        bail!("the agent refused: {}", v["error"]);
    }
    Ok(v)
}
