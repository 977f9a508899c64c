//! Counting that outlives the agent: the file sensor's maps and the links of its attached
//! programs pinned in bpffs, so the kernel goes on counting while no agent runs (a crash, a
//! restart, an upgrade) and the next agent takes both over.
//!
//! ```text
//! <dir>/maps-v<PINNED_LAYOUT>/<MAP>      the maps the file programs count into and read (PINNED_MAPS)
//! <dir>/links-<identity>-<token>/<hook>  the attached file programs of one build on this kernel,
//!                                        counting while CONTROL names their object's token
//! <dir>/new-<identity>-<token>/          a set being pinned (removed if an agent died meanwhile)
//!
//! (bpffs refuses names with a dot.)
//! ```
//!
//! A map layout of another version is removed with every links set (their programs write maps
//! this agent would read differently): the counters start again from zero, and nothing is
//! counted twice. The directory is locked (`flock`) while an agent uses it: two agents must never
//! share counters.
use std::{
    fs::File,
    io,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::programs::links::{FdLink, PinnedLink};
use credwatch_common::{file::maps as file_maps, maps, PINNED_LAYOUT};

/// Every map pinned: what the file programs count into (`READS`, `UNSEEN`, `LOST`, `EVENTS`),
/// what they read (`WATCHED`, `WATCHED_FILTER`, `VOLUME_DEVS`, `CONTROL`) and the agent's own stores (`KEPT`,
/// `IDENTITIES`).
pub const PINNED_MAPS: [&str; 10] = [
    file_maps::WATCHED,
    file_maps::WATCHED_FILTER,
    file_maps::READS,
    file_maps::VOLUME_DEVS,
    file_maps::UNSEEN,
    file_maps::KEPT,
    file_maps::IDENTITIES,
    maps::CONTROL,
    maps::EVENTS,
    maps::LOST,
];

/// The prefix of a links set being pinned.
const NEW: &str = "new-";

/// A set of pinned links: what was attached (`identity`: the object, the kernel's offsets, the
/// hook asked for) and the token its object's programs count under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkSet {
    pub identity: u64,
    pub token: u64,
}

/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// How long an agent waits for another one holding the directory (a rolling update that starts
/// the new pod before the old one is gone) before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The pin directory of this agent, locked for its lifetime.
#[derive(Debug)]
pub struct Pins {
    root: PathBuf,
    /// Holds the `flock`; released when the agent exits, however it exits.
    _lock: File,
}

/// What an agent found in the pin directory when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prior {
    /// Nothing: the first agent since boot (or since `--unpin`).
    Nothing,
    /// The maps of an agent before this one, in this layout.
    Maps,
    /// Pins of other map layouts (their directory names), removed: counting starts afresh.
    OtherLayout(Vec<String>),
}

impl Pins {
    /// Opens (creating it) and locks `root`, which must be on a bpf file system; removes what
    /// cannot be taken over (other layouts, half-pinned link sets). Waits up to `wait` for an
    /// agent holding the lock to exit.
    pub fn open(root: &Path, wait: Duration) -> io::Result<(Self, Prior)> {
        std::fs::create_dir_all(root)?;
        let meta = std::fs::symlink_metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::other(format!("{root:?} is not a directory")));
        }
        if !on_bpffs(root)? {
            return Err(io::Error::other(format!(
                "{root:?} is not on a bpf file system (mount one: mount -t bpf bpf /sys/fs/bpf)"
            )));
        }
        let lock = File::open(root)?;
        lock_within(&lock, root, wait)?;
        let pins = Pins {
            root: root.to_owned(),
            _lock: lock,
        };
        let prior = pins.clean()?;
        std::fs::create_dir_all(pins.maps_dir())?;
        Ok((pins, prior))
    }

    /// What is pinned at `root` and whether an agent holds it, in words, without taking or
    /// changing anything (`credwatch check`). An error when pins could not live there.
    pub fn look(root: &Path) -> io::Result<String> {
        let Ok(meta) = std::fs::symlink_metadata(root) else {
            let parent = root.parent().unwrap_or(Path::new("/"));
            return match on_bpffs(parent)? {
                true => Ok("nothing pinned yet (the agent makes the directory)".to_owned()),
                false => Err(io::Error::other(format!(
                    "{parent:?} is not a bpf file system: the agent cannot pin there"
                ))),
            };
        };
        if !meta.is_dir() || !on_bpffs(root)? {
            return Err(io::Error::other(format!(
                "{root:?} is not a directory on a bpf file system"
            )));
        }
        let names = entries_of(root)?;
        // A lock taken here goes with the file, at once.
        let held = !try_lock(&File::open(root)?)?;
        let ours = format!("maps-v{PINNED_LAYOUT}");
        let mut words = vec![match names.iter().find(|n| n.starts_with("maps-")) {
            None => "no maps pinned".to_owned(),
            Some(n) if *n == ours => format!("maps of layout {PINNED_LAYOUT} (this version's)"),
            Some(n) => {
                format!("maps of another layout ({n}): an agent of this version starts afresh")
            }
        }];
        let links = names.iter().filter(|n| n.starts_with("links-")).count();
        words.push(format!("{links} pinned probe set(s)"));
        words.push(
            if held {
                "held by a running agent"
            } else {
                "no agent running"
            }
            .to_owned(),
        );
        Ok(words.join("; "))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("maps-v{PINNED_LAYOUT}"))
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    fn links_dir(&self, set: LinkSet) -> PathBuf {
        self.root
            .join(format!("links-{:016x}-{:016x}", set.identity, set.token))
    }

    /// Removes other layouts (links first: their programs must stop before their maps go),
    /// half-pinned link sets, and every link set if a map is missing (its programs would count
    /// into a map no agent can read); says what was there.
    fn clean(&self) -> io::Result<Prior> {
        let ours = format!("maps-v{PINNED_LAYOUT}");
        let mut other = Vec::new();
        for name in self.entries()? {
            if name.starts_with("maps-") && name != ours {
                other.push(name);
            } else if name.starts_with(NEW) {
                remove(&self.root.join(&name))?;
            }
        }
        let present = |m: &&str| std::fs::symlink_metadata(self.map_path(m)).is_ok();
        let complete = PINNED_MAPS.iter().all(present);
        let any = PINNED_MAPS.iter().any(present);
        if other.is_empty() && (complete || !any) {
            return Ok(if complete {
                Prior::Maps
            } else {
                Prior::Nothing
            });
        }
        for name in self.entries()? {
            if name.starts_with("links-") {
                remove(&self.root.join(&name))?;
            }
        }
        for name in &other {
            remove(&self.root.join(name))?;
        }
        Ok(match other.is_empty() {
            true => Prior::Maps,
            false => Prior::OtherLayout(other),
        })
    }

    fn entries(&self) -> io::Result<Vec<String>> {
        entries_of(&self.root)
    }

    /// The links set pinned for `identity`, with its hooks (as their `probe` labels), if one is
    /// there and every link in it opens.
    pub fn kept_links(&self, identity: u64) -> Option<(LinkSet, Vec<String>)> {
        let prefix = format!("links-{identity:016x}-");
        let name = self
            .entries()
            .ok()?
            .into_iter()
            .find(|n| n.starts_with(&prefix))?;
        let token = u64::from_str_radix(&name[prefix.len()..], 16).ok()?;
        let mut labels = Vec::new();
        for entry in std::fs::read_dir(self.root.join(&name)).ok()? {
            let entry = entry.ok()?;
            PinnedLink::from_pin(entry.path()).ok()?;
            labels.push(label_of(&entry.file_name().into_string().ok()?));
        }
        labels.sort();
        let set = LinkSet { identity, token };
        (!labels.is_empty()).then_some((set, labels))
    }

    /// Pins `links` (each with its `probe` label) as `set`, whole or not at all: into a `new-`
    /// directory renamed when complete. On an error every link given is detached (aya drops a
    /// link it could not pin): the caller attaches the hooks again, unpinned.
    pub fn pin_links(&self, set: LinkSet, links: Vec<(String, FdLink)>) -> io::Result<()> {
        let done = self.links_dir(set);
        let new = self
            .root
            .join(format!("{NEW}{:016x}-{:016x}", set.identity, set.token));
        remove(&new)?;
        remove(&done)?;
        std::fs::create_dir(&new)?;
        let mut failed = None;
        for (label, link) in links {
            if let Err(e) = link.pin(new.join(file_name_of(&label))) {
                failed = failed.or(Some(io::Error::other(format!("pinning {label}: {e}"))));
            }
        }
        if let Some(e) = failed {
            remove(&new)?;
            return Err(e);
        }
        std::fs::rename(&new, &done)
    }

    /// Removes every links set but `keep`: their programs stop. Returns their names.
    pub fn remove_links_except(&self, keep: Option<LinkSet>) -> io::Result<Vec<String>> {
        let keep = keep.map(|k| self.links_dir(k));
        let mut removed = Vec::new();
        for name in self.entries()? {
            let path = self.root.join(&name);
            if name.starts_with("links-") && Some(&path) != keep.as_ref() {
                remove(&path)?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// Removes every pin (the pinned programs stop, the counters go); returns the names removed.
    pub fn remove_all(&self) -> io::Result<Vec<String>> {
        let mut removed = Vec::new();
        // Links first, so that no program counts into maps about to go.
        let (links, rest): (Vec<String>, Vec<String>) = self
            .entries()?
            .into_iter()
            .partition(|n| n.starts_with("links-"));
        for name in links.into_iter().chain(rest) {
            remove(&self.root.join(&name))?;
            removed.push(name);
        }
        Ok(removed)
    }
}

/// A hook's `probe` label as a pin's file name: `tracepoint/syscalls/sys_exit_openat` ->
/// `tracepoint:syscalls:sys_exit_openat`.
fn file_name_of(label: &str) -> String {
    label.replace('/', ":")
}

fn label_of(file_name: &str) -> String {
    file_name.replace(':', "/")
}

/// Removes a pin or a directory of pins, if there (bpffs: unlink drops the pin's reference).
fn remove(path: &Path) -> io::Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn on_bpffs(path: &Path) -> io::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other("NUL in the pin directory's path"))?;
    // SAFETY: zeroed statfs is a valid out buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

/// The names in `dir`, sorted.
fn entries_of(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Takes `f`'s exclusive lock if no one holds it: whether it did.
fn try_lock(f: &File) -> io::Result<bool> {
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

/// Takes the directory's lock, waiting up to `wait` for its holder to exit.
fn lock_within(f: &File, root: &Path, wait: Duration) -> io::Result<()> {
    let start = Instant::now();
    let mut said = false;
    loop {
        if try_lock(f)? {
            return Ok(());
        }
        if start.elapsed() >= wait {
            return Err(io::Error::other(format!(
                "another credwatch agent holds {root:?} (waited {}s for it to exit)",
                wait.as_secs()
            )));
        }
        if !said {
            tracing::info!(dir = ?root, "another agent holds the pin directory; waiting for it to exit");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_pin_names() {
        for label in [
            "tracepoint/syscalls/sys_exit_openat",
            "fexit/security_file_open",
        ] {
            assert!(!file_name_of(label).contains('/'));
            assert_eq!(label_of(&file_name_of(label)), label);
        }
    }

    /// `filter_bit` of (dev 0x0010_0003, ino 0x1234_5678_9abc), computed apart from the code.
    const FILTER_BIT_V2: usize = 289_660;

    /// The layout `PINNED_LAYOUT` names. A change here is a change of what an agent reads from
    /// maps another version left: bump `PINNED_LAYOUT` with it, and update these numbers.
    #[test]
    fn the_pinned_layout_is_the_one_its_number_was_set_for() {
        use credwatch_common::{file::*, Control, EVENTS_BYTE_SIZE, LOST_STAGES};
        use std::mem::size_of;
        let layout = [
            ("InodeKey", size_of::<InodeKey>()),
            ("CredentialGeneration", size_of::<CredentialGeneration>()),
            ("ReadKey", size_of::<ReadKey>()),
            ("ReadStats", size_of::<ReadStats>()),
            ("UnseenKey", size_of::<UnseenKey>()),
            ("UnseenRead", size_of::<UnseenRead>()),
            ("KeptKey", size_of::<KeptKey>()),
            ("KeptReads", size_of::<KeptReads>()),
            ("Control", size_of::<Control>()),
            ("WATCHED", WATCHED_MAX_ENTRIES as usize),
            ("UNSEEN", UNSEEN_MAX_ENTRIES as usize),
            ("KEPT", KEPT_MAX_ENTRIES as usize),
            ("VOLUME_DEV_WORDS", VOLUME_DEV_WORDS as usize),
            ("WATCHED_FILTER_WORDS", WATCHED_FILTER_WORDS as usize),
            (
                "filter_bit",
                InodeKey::new(0x0010_0003, 0x1234_5678_9abc).filter_bit() as usize,
            ),
            ("EVENTS", EVENTS_BYTE_SIZE as usize),
            ("LOST", LOST_STAGES as usize),
        ];
        let v2 = [
            ("InodeKey", 16),
            ("CredentialGeneration", 8),
            ("ReadKey", 16),
            ("ReadStats", 16),
            ("UnseenKey", 24),
            ("UnseenRead", 48),
            ("KeptKey", 16),
            ("KeptReads", 40),
            ("Control", 16),
            ("WATCHED", 65_536),
            ("UNSEEN", 8192),
            ("KEPT", 65_536),
            ("VOLUME_DEV_WORDS", 16_384),
            ("WATCHED_FILTER_WORDS", 16_384),
            ("filter_bit", FILTER_BIT_V2),
            ("EVENTS", 256 * 1024),
            ("LOST", 5),
        ];
        // 2: the filter's hash became one 64-bit multiply.
        assert_eq!(PINNED_LAYOUT, 2);
        // The filter's hash is layout too: pinned bits of another hash would hide watched inodes.
        assert_eq!(layout, v2, "the pinned maps changed: bump PINNED_LAYOUT");
    }

    #[test]
    fn a_directory_off_bpffs_is_refused() {
        let dir = std::env::temp_dir().join(format!("credwatch-pin-{}", std::process::id()));
        let err = Pins::open(&dir, Duration::ZERO).unwrap_err();
        assert!(
            err.to_string().contains("not on a bpf file system"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
