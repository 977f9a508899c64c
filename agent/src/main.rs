//! The `credwatch` binary; everything it does lives in the library (`credwatch::cli`).
fn main() -> std::process::ExitCode {
    // Before any thread exists: see `one_malloc_arena`.
    credwatch::sys::one_malloc_arena();
    credwatch::cli::main()
}
