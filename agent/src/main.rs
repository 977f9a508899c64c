//! The `credwatch` binary; everything it does lives in the library (`credwatch::cli`).

/// jemalloc: see `credwatch::sys::release_free_memory`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// One arena (the agent allocates little on hot paths), freed pages returned after 1 s, by a
/// background thread, so an idle agent gives back what a scan or scrape used.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> std::process::ExitCode {
    credwatch::cli::main()
}
