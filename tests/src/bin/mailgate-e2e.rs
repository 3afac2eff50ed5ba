//! The `mailgate` program, built inside the test crate so that tests can
//! start it as a child process (`CARGO_BIN_EXE_mailgate-e2e`): the same
//! `mailgate::cli::main` as the shipped binary, nothing else.

fn main() -> std::process::ExitCode {
    mailgate::cli::main()
}
