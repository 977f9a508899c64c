//! Small facts about the host: privileges, pseudo-filesystem mounts, clocks, kernel version.
use std::{ffi::CString, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

/// Why this process cannot load eBPF programs, or `None` if it can.
pub fn missing_privileges() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return None;
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let caps = effective_capabilities().unwrap_or(0);
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return None;
    }
    Some(
        "credwatch must run as root (or with CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load \
         its eBPF programs: run it with sudo, or as the DaemonSet in deploy/"
            .to_owned(),
    )
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// True if `path` is a mount point of a filesystem of type `fstype`.
pub fn is_mounted(path: &str, fstype: &str) -> bool {
    mounts().iter().any(|(mnt, ty)| mnt == path && ty == fstype)
}

/// (mount point, fs type) of every mount, from /proc/self/mounts.
pub fn mounts() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect()
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones).
pub fn cgroup2_mount() -> Option<String> {
    let all = mounts();
    let v2: Vec<_> = all.iter().filter(|(_, t)| t == "cgroup2").collect();
    v2.iter()
        .find(|(m, _)| m == "/sys/fs/cgroup")
        .or_else(|| v2.first())
        .map(|(m, _)| m.clone())
}

/// Mounts `fstype` at `path` unless it is already there. The agent needs tracefs (aya resolves
/// tracepoint ids through it) and bpffs (pinning); fresh hosts often have neither.
pub fn ensure_mounted(path: &str, fstype: &str) -> std::io::Result<bool> {
    if is_mounted(path, fstype) {
        return Ok(false);
    }
    if fstype == "tracefs" && Path::new(path).join("events").exists() {
        return Ok(false); // reachable some other way (e.g. through debugfs)
    }
    std::fs::create_dir_all(path)?;
    let src = CString::new(fstype).expect("no NUL");
    let dst = CString::new(path).expect("no NUL");
    // SAFETY: valid NUL-terminated strings, no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

fn clock(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The clock of `bpf_ktime_get_ns()` (CLOCK_MONOTONIC), now.
pub fn monotonic_ns() -> u64 {
    clock(libc::CLOCK_MONOTONIC)
}

/// Converts `bpf_ktime_get_ns()` values (CLOCK_MONOTONIC) to Unix time in seconds.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    realtime_minus_monotonic_ns: i128,
}

impl MonotonicClock {
    pub fn now() -> Self {
        let mono = clock(libc::CLOCK_MONOTONIC);
        let real = clock(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: real as i128 - mono as i128,
        }
    }

    pub fn to_unix_seconds(self, monotonic_ns: u64) -> f64 {
        (monotonic_ns as i128 + self.realtime_minus_monotonic_ns) as f64 / 1e9
    }
}

pub fn unix_now() -> f64 {
    clock(libc::CLOCK_REALTIME) as f64 / 1e9
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Converts a userspace `st_dev` to the kernel-internal `dev_t` that `super_block.s_dev` holds
/// (`MKDEV(major, minor) = major << 20 | minor`).
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xfffff)
}

/// Returns the allocator's free pages to the kernel now (after start-up, a scan pass, a scrape)
/// instead of at the next decay tick.
pub fn release_free_memory() {
    // Every arena (MALLCTL_ARENAS_ALL); a command: no value in or out.
    let name = c"arena.4096.purge";
    // SAFETY: a NUL-terminated name and null in/out pointers, as the command takes.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "cannot purge the allocator's free pages");
    }
}

/// A duration for people: "41m", "3h", "2d" (the largest unit that fits, rounded down).
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.abs() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!(
            "{}h{}",
            s / 3600,
            if s % 3600 >= 60 {
                format!("{}m", s % 3600 / 60)
            } else {
                String::new()
            }
        ),
        _ => format!(
            "{}d{}",
            s / 86400,
            if s % 86400 >= 3600 {
                format!("{}h", s % 86400 / 3600)
            } else {
                String::new()
            }
        ),
    }
}

/// "expires in 41m" / "EXPIRED 3h ago".
pub fn expiry_phrase(expiry: f64, now: f64) -> String {
    if expiry > now {
        format!("expires in {}", human_duration(expiry - now))
    } else {
        format!("EXPIRED {} ago", human_duration(now - expiry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_times() {
        assert_eq!(human_duration(5.0), "5s");
        assert_eq!(human_duration(41.0 * 60.0 + 7.0), "41m");
        assert_eq!(human_duration(3.0 * 3600.0), "3h");
        assert_eq!(human_duration(3.0 * 3600.0 + 120.0), "3h2m");
        assert_eq!(human_duration(365.0 * 86400.0 + 7200.0), "365d2h");
        assert_eq!(expiry_phrase(1000.0 + 2460.0, 1000.0), "expires in 41m");
        assert_eq!(
            expiry_phrase(1000.0, 1000.0 + 3.0 * 3600.0),
            "EXPIRED 3h ago"
        );
    }

    #[test]
    fn dev_encoding_matches_the_kernel() {
        // 8:1 (sda1): userspace 0x801, kernel 0x800001.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), 0x0080_0001);
        // 0:52 (a tmpfs)
        assert_eq!(kernel_dev(libc::makedev(0, 52)), 52);
        // large minor numbers use the high bits in userspace's encoding
        assert_eq!(kernel_dev(libc::makedev(259, 70000)), (259 << 20) | 70000);
    }

    #[test]
    fn monotonic_conversion_is_close_to_now() {
        let c = MonotonicClock::now();
        let t = c.to_unix_seconds(clock(libc::CLOCK_MONOTONIC));
        assert!((t - unix_now()).abs() < 1.0);
    }
}
