//! Where a module's stdout and stderr go in the agent (the journal, one
//! record per line, with the module's name), and the clock a module sees
//! when it was not granted the real one.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// Longest line kept; longer output is split.
const MAX_LINE: usize = 4096;

/// A module's stdout or stderr, logged line by line under the target
/// `ferry::wasm` with fields `module` and `stream`.
#[derive(Clone)]
pub struct JournalStream {
    module: Arc<str>,
    stream: &'static str,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl JournalStream {
    pub fn new(module: &str, stream: &'static str) -> Self {
        JournalStream {
            module: module.into(),
            stream,
            pending: Arc::default(),
        }
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        while !bytes.is_empty() {
            let room = MAX_LINE - pending.len();
            match bytes.iter().take(room).position(|&b| b == b'\n') {
                Some(i) => {
                    pending.extend_from_slice(&bytes[..i]);
                    self.line(&pending);
                    pending.clear();
                    bytes = &bytes[i + 1..];
                }
                None => {
                    let n = room.min(bytes.len());
                    pending.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if pending.len() == MAX_LINE {
                        self.line(&pending);
                        pending.clear();
                    }
                }
            }
        }
    }

    fn line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "ferry::wasm", module = %self.module, stream = self.stream, "{text}");
    }
}

impl std::fmt::Debug for JournalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStream")
            .field("module", &self.module)
            .field("stream", &self.stream)
            .finish()
    }
}

impl Drop for JournalStream {
    fn drop(&mut self) {
        // The last clone flushes an unterminated last line.
        if Arc::strong_count(&self.pending) == 1 {
            let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if !pending.is_empty() {
                self.line(&pending);
            }
        }
    }
}

impl IsTerminal for JournalStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for JournalStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for JournalStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for JournalStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for JournalStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The clock of a module without `capabilities.clocks`: always zero.
#[derive(Debug, Clone, Copy)]
pub struct ZeroClock;

impl HostWallClock for ZeroClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for ZeroClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
