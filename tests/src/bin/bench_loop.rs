//! The benchmark's measured loops, run by `cargo xtask bench`:
//!
//!   credwatch-bench-loop open PATH N           openat(O_RDONLY) + close, N times
//!   credwatch-bench-loop open-expanded PATH N  the same with an expanded descriptor table
//!   credwatch-bench-loop getppid N             getppid, N times (a syscall no probe sees)
//!   credwatch-bench-loop tcp N                 64-byte send + recv over a loopback TCP pair, N times
//!
//! A process's descriptor table lives inside `files_struct` until a descriptor above 63 is used
//! (or inherited: a child's table is sized at fork from its parent's highest open descriptor).
//! credwatch's probe reads the first kind with direct loads and the second through helper calls,
//! so the loops control it: `open` runs in a child forked after closing every descriptor above 2
//! (a fresh table, as most processes have), `open-expanded` first dups a descriptor to 100.
//!
//! Prints one JSON line on stdout: `{"ns_per_op":F,"timed":N,"warmup":W}`, the mean over the N timed
//! iterations after W untimed ones (the caller needs W too: an exact reader count sees N + W opens).
//! The loops make only the syscalls they measure: no allocation or formatting in the timed part.
use std::{ffi::CString, hint::black_box, process::ExitCode, time::Instant};

/// Untimed iterations first, so the page cache, dentry cache and branch predictors are warm.
fn warmup(n: u64) -> u64 {
    (n / 20).clamp(1, 10_000)
}

fn open_close(path: &CString, n: u64) -> Result<(), String> {
    for _ in 0..n {
        // SAFETY: path is a valid NUL-terminated string; the descriptor is closed right away.
        let fd = unsafe {
            libc::openat(
                libc::AT_FDCWD,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(format!(
                "open {path:?}: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: fd was just opened by this loop.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// A connected loopback TCP pair (no auth endpoint: what every other socket pays).
fn tcp_pair() -> Result<(std::net::TcpStream, std::net::TcpStream), String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let a = std::net::TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (b, _) = l.accept().map_err(|e| e.to_string())?;
    a.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok((a, b))
}

fn tcp_ping(
    a: &mut std::net::TcpStream,
    b: &mut std::net::TcpStream,
    n: u64,
) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let out = [7u8; 64];
    let mut buf = [0u8; 64];
    for _ in 0..n {
        a.write_all(&out).map_err(|e| e.to_string())?;
        b.read_exact(&mut buf).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn getppid(n: u64) {
    for _ in 0..n {
        // SAFETY: getppid has no preconditions.
        black_box(unsafe { libc::getppid() });
    }
}

/// The mean ns per timed iteration, and the number of untimed warm-up iterations.
fn run(args: &[String]) -> Result<(f64, u64), String> {
    let count = |s: Option<&String>| -> Result<u64, String> {
        let s = s.ok_or("missing iteration count")?;
        s.parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("bad iteration count {s:?}"))
    };
    match args.first().map(String::as_str) {
        Some("open") => {
            let path = args.get(1).ok_or("missing PATH")?;
            let n = count(args.get(2))?;
            let path = CString::new(path.as_str()).map_err(|e| e.to_string())?;
            open_close(&path, warmup(n))?;
            let t = Instant::now();
            open_close(&path, n)?;
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        Some("open-expanded") => {
            // SAFETY: dup2 of stderr to an unused descriptor number, closed again right away;
            // the table stays expanded.
            unsafe {
                libc::dup2(2, 100);
                libc::close(100);
            }
            let mut rest = args.to_vec();
            rest[0] = "open".into();
            run(&rest)
        }
        Some("getppid") => {
            let n = count(args.get(1))?;
            getppid(warmup(n));
            let t = Instant::now();
            getppid(n);
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        Some("tcp") => {
            let n = count(args.get(1))?;
            let (mut a, mut b) = tcp_pair()?;
            tcp_ping(&mut a, &mut b, warmup(n))?;
            let t = Instant::now();
            tcp_ping(&mut a, &mut b, n)?;
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        _ => Err(
            "usage: credwatch-bench-loop open PATH N | open-expanded PATH N | getppid N | tcp N"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("open") {
        if let Some(code) = credwatch_e2e::continue_in_fresh_fd_table() {
            return ExitCode::from(code as u8);
        }
    }
    match run(&args) {
        Ok((ns, warmup)) => {
            let n = &args[args.len() - 1];
            println!(r#"{{"ns_per_op":{ns:.3},"timed":{n},"warmup":{warmup}}}"#);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("credwatch-bench-loop: {e}");
            ExitCode::FAILURE
        }
    }
}
