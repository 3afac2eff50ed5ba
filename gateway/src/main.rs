//! The `mailgate` binary. The command line lives in `mailgate::cli` so the
//! end-to-end tests can start the very same program as a child process.

/// jemalloc rather than glibc's malloc: with every transaction allocating
/// across the runtime's workers and the plugins' stores, it costs less
/// CPU per message and keeps less memory per idle connection (BENCHMARKS.md,
/// section 1, "Issue 21, third session"). Its background thread (the
/// crate's `background_threads` feature) hands freed memory back to the
/// system after about 10 s even when the gateway is idle, such as what
/// pre-initializing a Python plugin at load leaves.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    mailgate::cli::main()
}
