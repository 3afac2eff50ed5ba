//! The `mailgate` binary. The command line lives in `mailgate::cli` so the
//! end-to-end tests can start the very same program as a child process.

fn main() -> std::process::ExitCode {
    mailgate::cli::main()
}
