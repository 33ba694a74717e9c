//! The control socket of a running agent: one JSON request line, one JSON
//! response line (`ferry_core::control`, docs/control.md). The socket is
//! mode 0600 (root-only on a device).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferry_core::control::{Body, Request, Response};

use crate::shared::{Msg, Shared};

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
        // Each connection is served on its own, bounded in size and time,
        // and only so many at once: one idle or endless client can neither
        // block the others nor grow the agent.
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        while let Ok((conn, _)) = listener.accept().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue; // dropped: too many clients at once
            };
            let (shared, tx) = (shared.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, &shared, &tx)).await;
            });
        }
    });
    Ok(Bound(path.to_path_buf()))
}

/// Most clients served at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest request line.
const MAX_REQUEST_BYTES: u64 = ferry_core::control::MAX_REQUEST_BYTES as u64;
/// Longest answer line a client reads.
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// How long a client may take to send its request and read the answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one request line (at most `MAX_REQUEST_BYTES`) and answers it.
async fn answer(conn: tokio::net::UnixStream, shared: &Mutex<Shared>, tx: &mpsc::Sender<Msg>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (read, mut write) = conn.into_split();
    let mut line = Vec::new();
    let mut limited = tokio::io::BufReader::new(read).take(MAX_REQUEST_BYTES + 1);
    if limited.read_until(b'\n', &mut line).await.is_err() || line.is_empty() {
        return;
    }
    let answer = match ferry_core::control::parse_request(&line) {
        Ok(Request::Status) => {
            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
            Response::status(s.status())
        }
        Ok(Request::Apply) => {
            let sent = tx.send(Msg::Now).is_ok();
            Response::message(sent, "reconcile requested")
        }
        Err(e) => Response::error(e.to_string()),
    };
    let answer = serde_json::to_string(&answer).unwrap_or_default();
    let _ = write.write_all(format!("{answer}\n").as_bytes()).await;
}

/// Sends one request to the agent at `path`; an answer with `ok: false`
/// is an error.
pub fn call(path: &Path, request: Request) -> Result<Response> {
    let mut s = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("no ferry agent answers on {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(ferry_core::control::request_line(request).as_bytes())?;
    let mut line = String::new();
    BufReader::new(s)
        .take(MAX_ANSWER_BYTES)
        .read_line(&mut line)?;
    let answer: Response = serde_json::from_str(&line).context("the agent's answer")?;
    if !answer.ok {
        match &answer.body {
            Body::Error { error } => bail!("the agent refused: {error}"),
            Body::Message { message } => bail!("the agent refused: {message}"),
            Body::Status { .. } => bail!("the agent refused"),
        }
    }
    Ok(answer)
}
