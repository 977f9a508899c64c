//! The benchmark's measured loops, run by `cargo xtask bench`:
//!
//!   credwatch-bench-loop open PATH N    openat(O_RDONLY) + close, N times
//!   credwatch-bench-loop getppid N      getppid, N times (a syscall no probe sees)
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
        Some("getppid") => {
            let n = count(args.get(1))?;
            getppid(warmup(n));
            let t = Instant::now();
            getppid(n);
            Ok((t.elapsed().as_nanos() as f64 / n as f64, warmup(n)))
        }
        _ => Err("usage: credwatch-bench-loop open PATH N | getppid N".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
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
