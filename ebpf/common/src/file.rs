//! The file sensor: which inodes are credentials (`WATCHED`), exact read counters (`READS`) and
//! the first-read event.
use core::mem::size_of;

use crate::TASK_COMM_LEN;

/// The file sensor's maps.
pub mod maps {
    /// `InodeKey -> CredentialGeneration`: the files the agent watches. Written by userspace only.
    pub const WATCHED: &str = "WATCHED";
    /// Bitmap, one bit per `InodeKey::filter_bit`: set for every inode in `WATCHED` (before it
    /// goes in), so that an open whose bit is clear, nearly every open, skips the hash lookup.
    /// Written by userspace only.
    pub const WATCHED_FILTER: &str = "WATCHED_FILTER";
    /// Per-CPU `ReadKey -> ReadStats`: exact read counters, summed at scrape time.
    pub const READS: &str = "READS";
    /// Bitmap over the minor numbers of anonymous devices (`major 0`): the tmpfs mounts of
    /// kubelet credential volumes. Written by userspace only.
    pub const VOLUME_DEVS: &str = "VOLUME_DEVS";
    /// LRU `UnseenKey -> UnseenRead`: reads of regular files on those mounts that `WATCHED` does
    /// not know yet (a new generation between the kubelet's `..data` swap and the agent's scan).
    pub const UNSEEN: &str = "UNSEEN";
    /// `KeptKey -> KeptReads`: reads that left `READS` (of generations no longer on disk, of
    /// reader cgroups that are gone), kept where a restarted agent finds them. Userspace only:
    /// no program touches it.
    pub const KEPT: &str = "KEPT";
    /// `u64 -> CredentialGeneration`: each credential's id and current generation by a stable
    /// hash of its identity (pod uid, volume, file), so that a restarted agent gives a file that
    /// was replaced while it was down the id its counters have. Userspace only.
    pub const IDENTITIES: &str = "IDENTITIES";
}

/// The file sensor's globals.
pub mod globals {
    /// `KernelOffsets`, read from the running kernel's BTF.
    pub const KERNEL_OFFSETS: &str = "KERNEL_OFFSETS";
}

/// Capacity of `WATCHED` (credential files on one node).
pub const WATCHED_MAX_ENTRIES: u32 = 65_536;
/// Capacity of `READS` ((reader cgroup, credential, generation) triples).
pub const READS_MAX_ENTRIES: u32 = 65_536;

/// Capacity of `KEPT`: one entry per (reader cgroup, credential) with a retired generation, and
/// per (credential, aggregate label) of gone readers; allocated as used.
pub const KEPT_MAX_ENTRIES: u32 = 65_536;

/// `WATCHED_FILTER` words: 2^20 bits (128 KiB), so that even a full `WATCHED` (65,536 inodes) sets
/// at most 1 bit in 16.
pub const WATCHED_FILTER_WORDS: u32 = (1 << 20) / 64;

/// `VOLUME_DEVS` words: one bit per anonymous device minor (`MINORBITS` = 20).
pub const VOLUME_DEV_WORDS: u32 = (1 << 20) / 64;
/// Capacity of `UNSEEN`: entries live from a read of a new generation until the next scan claims
/// them (well under a second), so this only has to hold one burst of rotations.
pub const UNSEEN_MAX_ENTRIES: u32 = 8192;

/// `S_IFMT` and `S_IFREG` from `include/uapi/linux/stat.h`.
pub const S_IFMT: u16 = 0o170_000;
pub const S_IFREG: u16 = 0o100_000;

/// `FMODE_READ` from `include/linux/fs.h`: the file was opened with read access.
pub const FMODE_READ: u32 = 0x1;

/// Byte offsets of the kernel struct fields the file probe walks, from `/sys/kernel/btf/vmlinux`.
///
/// Rust eBPF has no CO-RE relocations, so the agent resolves these at start-up and passes them in as
/// a read-only global; the verifier then treats them as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_inode: u32,
    pub file_f_mode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    /// `inode.i_mode` (a `u16`): only regular files count as unseen reads.
    pub inode_i_mode: u32,
    pub sb_s_dev: u32,
    /// `files_struct.fd_array`: the embedded table of the first `NR_OPEN_DEFAULT` descriptors.
    pub files_fd_array: u32,
    /// `sk_buff.len` and `sk_buff.data`: a received segment's length and where it starts (the
    /// auth-call sensor's receive hook).
    pub skb_len: u32,
    pub skb_data: u32,
    /// `sock.sk_protocol` (a `u16` since Linux 5.6) and `sock_common.skc_v6_daddr`: a connect's
    /// protocol and IPv6 destination (the auth-call sensor's state hook; 0 on a kernel without
    /// IPv6).
    pub sock_protocol: u32,
    pub sock_v6_daddr: u32,
    /// Not an offset: the BTF id of a struct whose first member is a `struct file *` (`kiocb`),
    /// which `bpf_rdonly_cast` turns a descriptor-table slot into. 0 when the kernel has no
    /// `bpf_rdonly_cast` (before Linux 6.2): the probe then falls back to helper reads.
    pub file_slot_btf_id: u32,
    /// `io_kiocb.opcode`, `io_kiocb.cqe.res` and `io_open.file_slot` (an open request's
    /// command, which overlays the start of its `io_kiocb`): the tracepoint path's view of an
    /// io_uring open as it completes. All three 0 on a kernel without io_uring.
    pub uring_req_opcode: u32,
    pub uring_req_res: u32,
    pub uring_open_file_slot: u32,
    /// Not an offset: the BTF id of `struct io_kiocb`, for `bpf_rdonly_cast` (the three fields
    /// by direct loads); 0 without the kfunc (helper reads).
    pub uring_req_btf_id: u32,
}
const _: () = assert!(size_of::<KernelOffsets>() == 80);

/// `IORING_OP_OPENAT` and `IORING_OP_OPENAT2` from `include/uapi/linux/io_uring.h`.
pub const IORING_OP_OPENAT: u8 = 18;
pub const IORING_OP_OPENAT2: u8 = 28;

/// The helper number the file probe calls in place of the `bpf_rdonly_cast` kfunc, which aya cannot
/// emit. The loader rewrites every such call into the kfunc call (or, on kernels without it, into
/// `r0 = 0` on a path the probe never takes): no real helper has a number anywhere near it.
pub const RDONLY_CAST_PLACEHOLDER: u32 = 0x7ff0_ca57;

/// `NR_OPEN_DEFAULT` (`BITS_PER_LONG`): descriptors below it live in `files_struct.fd_array`
/// until the table is first expanded.
pub const NR_OPEN_DEFAULT: u64 = 64;

/// Identity of a file: the kernel-internal device number of its superblock and its inode number.
/// `dev` is the kernel's `MKDEV(major, minor) = major << 20 | minor`, not userspace's encoding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub ino: u64,
    pub dev: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<InodeKey>() == 16);

impl InodeKey {
    pub const fn new(dev: u32, ino: u64) -> Self {
        Self { ino, dev, _pad: 0 }
    }

    /// The inode's bit in `WATCHED_FILTER`: see [`filter_bit`].
    pub const fn filter_bit(&self) -> u32 {
        filter_bit(self.dev, self.ino)
    }
}

/// The bit of inode `ino` on device `dev` in `WATCHED_FILTER` (20 bits): Fibonacci hashing of
/// the number with the device above its low 32 bits, the product's top bits kept. One 64-bit
/// multiply: the programs compute it on every open, and the agent with this same function.
#[inline(always)]
pub const fn filter_bit(dev: u32, ino: u64) -> u32 {
    ((ino ^ ((dev as u64) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 44) as u32
}

/// What a watched inode is: which credential, and which generation of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CredentialGeneration {
    pub cred_id: u32,
    pub generation: u32,
}
const _: () = assert!(size_of::<CredentialGeneration>() == 8);

/// Key of the per-CPU read counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReadKey {
    /// Inode number of the reader's cgroup v2 directory (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    pub cred_id: u32,
    pub generation: u32,
}
const _: () = assert!(size_of::<ReadKey>() == 16);

/// One CPU's share of a read counter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub count: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last read on this CPU.
    pub last_read_ns: u64,
}
const _: () = assert!(size_of::<ReadStats>() == 16);

/// Key of `KEPT`: reads of generations no longer watched by a live reader cgroup (`label` 0), or
/// reads of gone reader cgroups under an aggregate `container` label (`cgroup_id` 0, `label` its
/// number in the agent's list, from 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeptKey {
    pub cgroup_id: u64,
    pub cred_id: u32,
    pub label: u32,
}
const _: () = assert!(size_of::<KeptKey>() == 16);

/// Reads kept in `KEPT`, and the counter they came from last (`source`): an agent moves a
/// counter by writing its destination first and removing it after, so a restart in between finds
/// the source still there and removes it instead of counting it twice. A source whose
/// `generation` is `KEPT_SOURCE` is the `KEPT` entry (`cgroup_id`, `cred_id`, label 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptReads {
    pub count: u64,
    pub last_read_ns: u64,
    pub newest_generation: u32,
    /// `KEPT_HAS_GENERATION`, `KEPT_FROM_UNSEEN`.
    pub flags: u32,
    pub source: ReadKey,
}
const _: () = assert!(size_of::<KeptReads>() == 40);

/// `KeptReads::source.generation` naming a `KEPT` entry rather than a `READS` counter.
pub const KEPT_SOURCE: u32 = u32::MAX;
/// `KeptReads::flags`: `newest_generation` is set.
pub const KEPT_HAS_GENERATION: u32 = 1;
/// `KeptReads::flags`: `source` is not a `READS` counter but the `UNSEEN` entries of reader
/// `source.cgroup_id` on the inode `WATCHED` maps to (`source.cred_id`, `source.generation`).
pub const KEPT_FROM_UNSEEN: u32 = 2;

/// Key of `UNSEEN`: a reader cgroup and a file not in `WATCHED` (yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UnseenKey {
    pub cgroup_id: u64,
    pub inode: InodeKey,
}
const _: () = assert!(size_of::<UnseenKey>() == 24);

/// Reads of an unseen file by one cgroup: the count (added atomically: the map is shared by
/// every CPU), the last read, and who read it first (for the first-read record once claimed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnseenRead {
    pub count: u64,
    pub last_read_ns: u64,
    pub first_read_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(size_of::<UnseenRead>() == 48);

/// The first read of a credential generation by a cgroup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstReadEvent {
    /// Always `EventKind::FirstRead as u32`.
    pub kind: u32,
    pub cred_id: u32,
    pub generation: u32,
    pub pid: u32,
    pub tgid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub ts_ns: u64,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(size_of::<FirstReadEvent>() == 56);

#[cfg(feature = "user")]
mod user;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The filter only spares lookups if watched inodes spread over its bits: tmpfs numbers its
    /// inodes in sequence, and a node's volumes are many devices with small numbers each.
    #[test]
    fn the_filter_spreads_sequential_inodes_over_many_devices() {
        let bits: HashSet<u32> = (0..64u32)
            .flat_map(|minor| (1..=1024u64).map(move |ino| filter_bit(minor + 40, ino)))
            .collect();
        // 65,536 inodes in 2^20 bits: ~63,500 distinct bits for a uniform hash.
        assert!(bits.len() > 62_000, "{} distinct bits", bits.len());
        assert!(bits.iter().all(|&b| b < 1 << 20));
        // The device is part of the bit: the same number on two devices (almost always) differs.
        let same = (1..=10_000u64)
            .filter(|&ino| filter_bit(41, ino) == filter_bit(42, ino))
            .count();
        assert!(
            same < 10,
            "{same} of 10,000 inode numbers collide across devices"
        );
        // Above 32 bits too (tmpfs with inode64, XFS).
        assert_ne!(filter_bit(41, 5), filter_bit(41, 5 | 1 << 40));
    }
}
