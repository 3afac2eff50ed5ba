//! The host side of the plugin world's imports. Each method converts and
//! delegates; a missing resource is a trap.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::Resource;

use super::bindings::mailgate::plugin::{clock, log, types};
use super::message::MessageHandle;
use super::state::State;

/// Longest log line a plugin may write.
const MAX_LOG_LINE: usize = 4096;

impl types::Host for State {}

impl types::HostMessage for State {
    async fn size(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size())
    }

    async fn headers(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(self.table.get(&this)?.headers())
    }

    async fn header(&mut self, this: Resource<MessageHandle>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(self.table.get(&this)?.header(&name))
    }

    async fn parts(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<Vec<types::Part>> {
        Ok(self.table.get(&this)?.parts())
    }

    async fn text(&mut self, this: Resource<MessageHandle>, index: u32) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&this)?.text(index))
    }

    async fn read_body(
        &mut self,
        this: Resource<MessageHandle>,
        offset: u64,
        length: u32,
    ) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&this)?.read_body(offset, length))
    }

    async fn drop(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl log::Host for State {
    async fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut end = MAX_LOG_LINE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
        Ok(())
    }
}

impl clock::Host for State {
    async fn now_millis(&mut self) -> wasmtime::Result<u64> {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    async fn monotonic_nanos(&mut self) -> wasmtime::Result<u64> {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(Instant::now);
        Ok(u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}
