//! The `credwatch` binary; everything it does lives in the library (`credwatch::cli`).
fn main() -> std::process::ExitCode {
    // Before any thread exists: see `tune_malloc`.
    credwatch::sys::tune_malloc();
    credwatch::cli::main()
}
