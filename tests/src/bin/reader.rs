//! The process the end-to-end tests place in cgroups and mount namespaces to open files in
//! controlled ways.
//!
//! usage: credwatch-probe-reader [--chdir DIR] [--tmpfs DIR] [--mkdir DIR] [--bind SRC:DST]...
//!                                open PATH N [r|w|rw] | open-uring PATH N [fd|fixed]
//!        credwatch-probe-reader bpf-cost PATH N BATCHES PROGRAM...
//!
//! `--tmpfs` and `--bind` first move the process into a private mount namespace, so what they
//! mount is seen by nobody else (`--tmpfs /run --mkdir /run/secrets/... --bind VOL:/run/secrets/...`
//! builds a container-style service-account path). `--fdtable fresh` opens from a child forked
//! after closing every descriptor above 2 (its table is the array inside `files_struct`);
//! `--fdtable expanded` first dups a descriptor to 100 and closes it (an expanded table, low
//! descriptors); `--fdtable high` fills descriptors 3..200 (opens return 200 and up).
//! `open-uring` opens read-only through io_uring (`IORING_OP_OPENAT`), which no open syscall
//! carries; `fixed` opens into a fixed-file slot (a direct descriptor, the completion's result
//! 0), after putting PATH on descriptor 0 with one plain open (counted): a probe that took that
//! result for a descriptor would find the credential there and count every fixed open. Prints
//! the number of successful opens (through io_uring).
//!
//! `bpf-cost` measures what the loaded programs whose names start with a PROGRAM prefix cost per
//! open of PATH (a file no one watches), from the kernel's BPF accounting (`BPF_ENABLE_STATS`):
//! BATCHES batches of N opens; prints `ns_per_open=<median> runs_per_open=<median>
//! wall_ns_per_open=<median>` (the whole open and close, measured first with the accounting off;
//! under QEMU's `-icount shift=0` a guest nanosecond is one guest instruction, so this counts
//! instructions).
use std::ffi::CString;

use credwatch_e2e::mounts;

fn die(msg: String) -> ! {
    eprintln!("credwatch-probe-reader: {msg}");
    std::process::exit(2)
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_else(|_| die(format!("NUL in {s:?}")))
}

fn check(rc: i32, what: &str) {
    if rc != 0 {
        die(format!("{what}: {}", std::io::Error::last_os_error()));
    }
}

fn private_mount_namespace() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        mounts::private_namespace()
            .unwrap_or_else(|e| die(format!("a private mount namespace: {e}")));
    });
}

fn tmpfs(dir: &str) {
    private_mount_namespace();
    mounts::tmpfs(std::path::Path::new(dir), "")
        .unwrap_or_else(|e| die(format!("tmpfs on {dir}: {e}")));
}

fn bind(src: &str, dst: &str) {
    private_mount_namespace();
    let (s, d) = (cstr(src), cstr(dst));
    let null = std::ptr::null();
    // SAFETY: valid NUL-terminated strings.
    let rc = unsafe { libc::mount(s.as_ptr(), d.as_ptr(), null, libc::MS_BIND, null.cast()) };
    check(rc, &format!("bind {src} on {dst}"));
}

/// Shapes this process's descriptor table: `fresh` (the array inside `files_struct`),
/// `expanded` (a table expanded once, low descriptors), `high` (every open returns 200 or more).
fn fd_table(shape: Option<&str>) {
    match shape {
        Some("expanded") => unsafe {
            // SAFETY: dup2/close of an unused descriptor; the table stays expanded.
            libc::dup2(2, 100);
            libc::close(100);
        },
        Some("high") => {
            // Fill descriptors 3..200 so that every open returns 200 or more.
            for fd in 3..200 {
                // SAFETY: dup2 onto a descriptor number this process does not use
                // (F_GETFD fails on it); kept open for the life of the process.
                unsafe {
                    if libc::fcntl(fd, libc::F_GETFD) < 0 {
                        libc::dup2(2, fd);
                    }
                }
            }
        }
        Some("fresh") => {
            if let Some(code) = credwatch_e2e::continue_in_fresh_fd_table() {
                std::process::exit(code);
            }
        }
        other => die(format!("bad --fdtable {other:?}")),
    }
}

/// Opens `path` `n` times with `mode` (`r`, `w`, `rw`), closing each; returns the count.
fn open_n(path: &str, n: u64, mode: &str) -> u64 {
    let flags = match mode {
        "r" => libc::O_RDONLY,
        "w" => libc::O_WRONLY,
        "rw" => libc::O_RDWR,
        other => die(format!("bad mode {other}")),
    };
    let p = cstr(path);
    let mut ok = 0u64;
    for _ in 0..n {
        // SAFETY: valid path; the fd is closed right away.
        let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            die(format!("open {path}: {}", std::io::Error::last_os_error()));
        }
        unsafe { libc::close(fd) };
        ok += 1;
    }
    ok
}

/// Opens `path` read-only `n` times through io_uring, closing each; returns the count. `fixed`:
/// into fixed-file slot 0 (see the module's doc), closed through the ring.
fn open_uring(path: &str, n: u64, fixed: bool) -> u64 {
    use io_uring::{opcode, squeue, types, IoUring};
    let p = cstr(path);
    let mut ring = IoUring::new(8).unwrap_or_else(|e| die(format!("io_uring_setup: {e}")));
    if fixed {
        // SAFETY: plain descriptor calls on a path we own.
        let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY) };
        if fd < 0 || unsafe { libc::dup2(fd, 0) } != 0 {
            die(format!(
                "open {path} onto descriptor 0: {}",
                std::io::Error::last_os_error()
            ));
        }
        ring.submitter()
            .register_files_sparse(1)
            .unwrap_or_else(|e| die(format!("register a fixed-file table: {e}")));
    }
    // Submits one entry, waits for it and returns its result.
    let mut run = |entry: squeue::Entry| -> i32 {
        // SAFETY: what the entry points at (`p`) outlives it: it completes before this returns.
        unsafe { ring.submission().push(&entry) }.unwrap_or_else(|_| die("ring full".into()));
        ring.submit_and_wait(1)
            .unwrap_or_else(|e| die(format!("io_uring_enter: {e}")));
        let cqe = ring
            .completion()
            .next()
            .unwrap_or_else(|| die("no completion".into()));
        if cqe.result() < 0 {
            die(format!(
                "io_uring on {path}: {}",
                std::io::Error::from_raw_os_error(-cqe.result())
            ));
        }
        cqe.result()
    };
    let mut ok = 0u64;
    for _ in 0..n {
        // A direct descriptor cannot be close-on-exec (the kernel refuses the flag).
        let cloexec = if fixed { 0 } else { libc::O_CLOEXEC };
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), p.as_ptr())
            .flags(libc::O_RDONLY | cloexec);
        if fixed {
            let slot = types::DestinationSlot::try_from_slot_target(0).expect("slot 0");
            run(open.file_index(Some(slot)).build());
            run(opcode::Close::new(types::Fixed(0)).build());
        } else {
            let fd = run(open.build());
            // SAFETY: the descriptor the open returned, closed once.
            unsafe { libc::close(fd) };
        }
        ok += 1;
    }
    ok
}

/// Run time and count summed over the loaded programs whose names start with one of `prefixes`
/// (the kernel keeps 15 characters of a name).
fn bpf_totals(prefixes: &[String]) -> (u64, u64) {
    let (mut ns, mut runs) = (0u64, 0u64);
    for info in aya::programs::loaded_programs().flatten() {
        let name = String::from_utf8_lossy(info.name()).into_owned();
        if prefixes
            .iter()
            .any(|p| p.starts_with(&name) || name.starts_with(p.as_str()))
        {
            ns += info.run_time().as_nanos() as u64;
            runs += info.run_count();
        }
    }
    (ns, runs)
}

fn bpf_cost(path: &str, n: u64, batches: usize, prefixes: &[String]) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // The whole open and close first, with the accounting off (its clock reads would be counted).
    let wall: Vec<f64> = (0..batches)
        .map(|_| {
            let start = std::time::Instant::now();
            open_n(path, n, "r");
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .unwrap_or_else(|e| die(format!("BPF_ENABLE_STATS: {e}")));
    let (mut ns, mut runs) = (Vec::new(), Vec::new());
    for _ in 0..batches {
        let before = bpf_totals(prefixes);
        open_n(path, n, "r");
        let after = bpf_totals(prefixes);
        ns.push((after.0 - before.0) as f64 / n as f64);
        runs.push((after.1 - before.1) as f64 / n as f64);
    }
    drop(stats);
    println!(
        "ns_per_open={:.1} runs_per_open={:.2} wall_ns_per_open={:.1}",
        median(ns),
        median(runs),
        median(wall)
    );
}

/// `COMMAND PATH N ...`: the path and the count.
fn path_and_count(args: &[String]) -> (&str, u64) {
    let command = &args[0];
    let path = args
        .get(1)
        .unwrap_or_else(|| die(format!("{command} needs PATH")));
    let n = args
        .get(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| die(format!("{command} needs a count")));
    (path, n)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--chdir" => {
                let dir = args
                    .get(i + 1)
                    .unwrap_or_else(|| die("--chdir needs DIR".into()));
                std::env::set_current_dir(dir).unwrap_or_else(|e| die(format!("chdir {dir}: {e}")));
                i += 2;
            }
            "--fdtable" => {
                fd_table(args.get(i + 1).map(String::as_str));
                i += 2;
            }
            "--tmpfs" => {
                tmpfs(
                    args.get(i + 1)
                        .unwrap_or_else(|| die("--tmpfs needs DIR".into())),
                );
                i += 2;
            }
            "--mkdir" => {
                let dir = args
                    .get(i + 1)
                    .unwrap_or_else(|| die("--mkdir needs DIR".into()));
                std::fs::create_dir_all(dir).unwrap_or_else(|e| die(format!("mkdir {dir}: {e}")));
                i += 2;
            }
            "--bind" => {
                let spec = args
                    .get(i + 1)
                    .unwrap_or_else(|| die("--bind needs SRC:DST".into()));
                let (src, dst) = spec
                    .split_once(':')
                    .unwrap_or_else(|| die(format!("bad --bind {spec}")));
                bind(src, dst);
                i += 2;
            }
            "open" => {
                let (path, n) = path_and_count(&args[i..]);
                let mode = args.get(i + 3).map(String::as_str).unwrap_or("r");
                println!("{}", open_n(path, n, mode));
                return;
            }
            "open-uring" => {
                let (path, n) = path_and_count(&args[i..]);
                let fixed = match args.get(i + 3).map(String::as_str) {
                    None | Some("fd") => false,
                    Some("fixed") => true,
                    Some(other) => die(format!("open-uring: fd or fixed, not {other:?}")),
                };
                println!("{}", open_uring(path, n, fixed));
                return;
            }
            "bpf-cost" => {
                let num = |j: usize| -> u64 {
                    args.get(i + j)
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| die("bpf-cost PATH N BATCHES PROGRAM...".into()))
                };
                let path = args
                    .get(i + 1)
                    .unwrap_or_else(|| die("bpf-cost needs PATH".into()));
                bpf_cost(path, num(2), num(3) as usize, &args[i + 4..]);
                return;
            }
            other => die(format!("unknown argument {other}")),
        }
    }
    die("nothing to do: expected `open PATH N [r|w|rw]`".into())
}
