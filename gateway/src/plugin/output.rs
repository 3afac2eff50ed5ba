//! What a plugin writes to its standard output and error (a Rust panic
//! message, a Python traceback, a JavaScript exception), kept in memory,
//! bounded, per call, so that its faults can say what went wrong. Nothing
//! reaches the gateway's own output, and a plugin that writes too much
//! loses the oldest part, never a write.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::WasmBacktrace;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// How much of a call's output is kept: the last this many octets.
pub const MAX_OUTPUT: usize = 8 * 1024;
/// How many frames of a fault's backtrace are shown.
const MAX_FRAMES: usize = 16;

/// A plugin instance's stdout and stderr, shared by both.
#[derive(Clone, Debug, Default)]
pub struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    /// Forgets what was written (a new call starts).
    pub fn clear(&self) {
        self.buffer().clear();
    }

    /// What was written since the last `clear`, as one line of text.
    pub fn text(&self) -> String {
        let buffer = self.buffer();
        String::from_utf8_lossy(&buffer)
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn append(&self, bytes: &[u8]) {
        let mut buffer = self.buffer();
        buffer.extend_from_slice(bytes);
        if buffer.len() > MAX_OUTPUT {
            let excess = buffer.len() - MAX_OUTPUT;
            buffer.drain(..excess);
        }
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for Output {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        self.append(bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The wasm backtrace of a failed call, innermost frame first, with the
/// function names the module's name section gives; `None` when there is
/// none.
pub fn backtrace(error: &wasmtime::Error) -> Option<String> {
    let trace = error.downcast_ref::<WasmBacktrace>()?;
    let frames: Vec<String> = trace
        .frames()
        .iter()
        .take(MAX_FRAMES)
        .enumerate()
        .map(|(n, frame)| {
            let name = frame
                .func_name()
                .map_or_else(|| format!("<function {}>", frame.func_index()), |name| name.to_owned());
            format!("#{n} {name}")
        })
        .collect();
    (!frames.is_empty()).then(|| frames.join(" | "))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn keeps_the_last_octets_and_never_fails_a_write() {
        let output = Output::default();
        let mut stream = Box::into_pin(output.async_stream());
        stream.write_all(b"first line\n").await.unwrap();
        stream.write_all(&vec![b'x'; MAX_OUTPUT]).await.unwrap();
        stream
            .write_all(b"\npanicked at src/lib.rs:3:5:\nboom\n")
            .await
            .unwrap();
        let text = output.text();
        assert!(!text.contains("first line"));
        assert!(text.ends_with("| panicked at src/lib.rs:3:5: | boom"), "{text}");
        output.clear();
        assert_eq!(output.text(), "");
    }
}
