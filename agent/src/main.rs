//! The `credwatch` binary; everything it does lives in the library (`credwatch::cli`).
fn main() -> std::process::ExitCode {
    credwatch::cli::main()
}
