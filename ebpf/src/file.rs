//! File sensor: at the return of `security_file_open` where the kernel runs BPF trampolines
//! (fexit: the `struct file` in hand), else on the exit of every open syscall (the descriptor
//! walked to `current->files->fdt->fd[ret]`), take the file's inode, look it up in `WATCHED`, and for a watched file
//! opened with read access bump an exact per-CPU counter keyed by (reader cgroup, credential,
//! generation). Only the first read of such a triple becomes a ring-buffer event. A non-credential
//! open costs the pointer walk (no helper calls) and one bit of `WATCHED_FILTER` (an array load);
//! the hash lookup only when that bit is set.
//!
//! A kubelet volume's new generation is read before the agent can know its inodes: a reloader
//! that reacts to the `..data` swap opens the new file microseconds after the kubelet wrote it.
//! Those volumes are tmpfs mounts of their own, so a miss on a file whose device is marked in
//! `VOLUME_DEVS` (an inlined array load) is counted in `UNSEEN` by inode, and the agent's next
//! scan claims it for the generation it turns out to be.
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task_btf, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, fexit, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuHashMap},
    programs::{BtfTracePointContext, FExitContext, TracePointContext},
    EbpfContext as _,
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use credwatch_common::{
    file::{
        filter_bit, CredentialGeneration, FirstReadEvent, InodeKey, KeptKey, KeptReads,
        KernelOffsets, ReadKey, ReadStats, UnseenKey, UnseenRead, FMODE_READ, IORING_OP_OPENAT,
        IORING_OP_OPENAT2, KEPT_MAX_ENTRIES, NR_OPEN_DEFAULT, RDONLY_CAST_PLACEHOLDER,
        READS_MAX_ENTRIES, S_IFMT, S_IFREG, UNSEEN_MAX_ENTRIES, VOLUME_DEV_WORDS,
        WATCHED_FILTER_WORDS, WATCHED_MAX_ENTRIES,
    },
    EventKind, LostStage,
};

use crate::{is_agent, links_active, lost, EVENTS};

/// Filled in by the loader from the kernel's BTF (see `credwatch_common::file::KernelOffsets`).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_f_inode: 0,
    file_f_mode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    inode_i_mode: 0,
    sb_s_dev: 0,
    files_fd_array: 0,
    skb_len: 0,
    skb_data: 0,
    sock_protocol: 0,
    sock_v6_daddr: 0,
    file_slot_btf_id: 0,
    uring_req_opcode: 0,
    uring_req_res: 0,
    uring_open_file_slot: 0,
    uring_req_btf_id: 0,
};

/// `credwatch_common::file::maps::WATCHED`.
#[map]
static WATCHED: HashMap<InodeKey, CredentialGeneration> =
    HashMap::with_max_entries(WATCHED_MAX_ENTRIES, 0);

/// `credwatch_common::file::maps::READS`.
#[map]
static READS: PerCpuHashMap<ReadKey, ReadStats> =
    PerCpuHashMap::with_max_entries(READS_MAX_ENTRIES, 0);

/// `credwatch_common::file::maps::WATCHED_FILTER`.
#[map]
static WATCHED_FILTER: Array<u64> = Array::with_max_entries(WATCHED_FILTER_WORDS, 0);

/// `credwatch_common::file::maps::VOLUME_DEVS`.
#[map]
static VOLUME_DEVS: Array<u64> = Array::with_max_entries(VOLUME_DEV_WORDS, 0);

/// `credwatch_common::file::maps::KEPT`: the agent's store, pinned with the maps above; no
/// program uses it.
#[map]
static KEPT: HashMap<KeptKey, KeptReads> =
    HashMap::with_max_entries(KEPT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `credwatch_common::file::maps::IDENTITIES`: the agent's, like `KEPT`.
#[map]
static IDENTITIES: HashMap<u64, CredentialGeneration> =
    HashMap::with_max_entries(WATCHED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `credwatch_common::file::maps::UNSEEN`.
#[map]
static UNSEEN: LruHashMap<UnseenKey, UnseenRead> =
    LruHashMap::with_max_entries(UNSEEN_MAX_ENTRIES, 0);

/// What an open turned out to be.
enum Opened {
    /// A watched credential generation, and the file's `f_mode`.
    Watched(CredentialGeneration, u32),
    /// A regular file on a credential volume's mount that `WATCHED` does not hold (yet).
    Unseen(InodeKey, u32),
}

/// Offset of `ret` in the `syscalls/sys_exit_*` tracepoint record (after the common header and
/// `__syscall_nr`); stable ABI, see `/sys/kernel/tracing/events/syscalls/sys_exit_openat/format`.
const SYS_EXIT_RET_OFFSET: usize = 16;

/// Descriptors above this are not looked at: it bounds the verifier's view of the index.
const MAX_FD: u64 = 1 << 24;

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[tracepoint]
pub fn sys_exit_open_by_handle_at(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

/// io_uring's opens on the tracepoint path: no open syscall carries them, so they are taken as
/// they complete. An `IORING_OP_OPENAT`/`OPENAT2` that installed a descriptor (a result of 0 or
/// more, no fixed-file slot asked for) has put it in the table of the process that submitted it
/// (its io workers share that table), where the same walk as the syscall exits finds the file.
/// Every other completion costs one read of the opcode (see `request_field`). Not seen here: opens that post no
/// completion (`IOSQE_CQE_SKIP_SUCCESS`) and opens into fixed-file slots (no descriptor); the
/// fast hook sees both. Not attached beside the fast hook, which sees every io_uring open itself.
#[btf_tracepoint(function = "io_uring_complete")]
pub fn io_uring_complete(ctx: BtfTracePointContext) -> u32 {
    let off = offsets();
    if off.uring_req_opcode == 0 {
        return 0;
    }
    let req: *const u8 = ctx.arg(1);
    let Some(opcode) = (unsafe { request_field::<u8>(off, req, off.uring_req_opcode) }) else {
        return 0;
    };
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return 0;
    }
    let (Some(fd), Some(slot)) = (unsafe {
        (
            request_field::<i32>(off, req, off.uring_req_res),
            request_field::<u32>(off, req, off.uring_open_file_slot),
        )
    }) else {
        return 0;
    };
    if fd < 0 || slot != 0 || fd as u64 >= MAX_FD {
        return 0;
    }
    if let Some(opened) = unsafe { watched_open(off, fd as u64) } {
        count_open(opened);
    }
    0
}

/// A field of an io_uring request. `req` is a `void *` in the tracepoint's prototype: with
/// `bpf_rdonly_cast` it becomes a typed pointer (a direct load), else a helper reads.
#[inline(always)]
unsafe fn request_field<T: Copy>(off: &KernelOffsets, req: *const u8, at: u32) -> Option<T> {
    unsafe {
        if off.uring_req_btf_id != 0 {
            let req = rdonly_cast(req as u64, off.uring_req_btf_id);
            Some(*(req.add(at as usize) as *const T))
        } else {
            read::<T>(req, at).ok()
        }
    }
}

/// The fast hook, where the kernel allows BPF trampolines: the return of `security_file_open`,
/// which every open of a file passes (any syscall, io_uring, compat, kernel helpers opening for
/// a process) with the `struct file` in hand: no descriptor walk. Only opens the LSMs allowed
/// (`ret == 0`) count; an open that fails after this point (rare: the file system's own `open`)
/// would count where the tracepoints would not.
#[fexit(function = "security_file_open")]
pub fn security_file_open_exit(ctx: FExitContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    if ret as i32 != 0 {
        return 0;
    }
    let file: *const u8 = ctx.arg(0);
    // `file` is a BTF-typed pointer, as the walk's end is.
    if let Some(opened) = unsafe { classify_file(offsets(), file) } {
        count_open(opened);
    }
    0
}

/// Every step is an early return: nothing on this path can fail in a way worth reporting (a
/// descriptor that vanished or an unwatched inode is simply not a credential read).
#[inline(always)]
fn on_open_exit(ctx: &TracePointContext) -> u32 {
    // A direct load from the context: tracepoint records are readable without a helper call.
    let fd: i64 = unsafe { *(ctx.as_ptr().add(SYS_EXIT_RET_OFFSET) as *const i64) };
    if fd < 0 || fd as u64 >= MAX_FD {
        return 0;
    }
    let off = offsets();
    if let Some(opened) = unsafe { watched_open(off, fd as u64) } {
        count_open(opened);
    }
    0
}

/// The counting core both hooks share: a read-access open of a watched credential or of an
/// unseen file on a credential volume, by anyone but the agent, while this object's programs are
/// the set that counts (both checks only after a hit: a non-credential open never gets here).
#[inline(always)]
fn count_open(opened: Opened) {
    let f_mode = match opened {
        Opened::Watched(_, m) | Opened::Unseen(_, m) => m,
    };
    if f_mode & FMODE_READ == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) || !links_active() {
        return;
    }
    match opened {
        Opened::Watched(cred, _) => count_read(cred, pid_tgid),
        Opened::Unseen(inode, _) => count_unseen(inode, pid_tgid),
    }
}

/// Whether the inode's bit is set in `WATCHED_FILTER`: it may be watched (every watched inode's
/// bit is set before it goes into `WATCHED`); clear, it is not.
#[inline(always)]
fn maybe_watched(dev: u32, ino: u64) -> bool {
    let bit = filter_bit(dev, ino);
    WATCHED_FILTER
        .get(bit >> 6)
        .is_some_and(|word| word & (1u64 << (bit & 63)) != 0)
}

/// Whether `dev` is an anonymous device (tmpfs) marked as a credential volume's mount.
#[inline(always)]
fn on_volume_dev(dev: u32) -> bool {
    // The kernel's MKDEV: major << 20 | minor; anonymous devices have major 0.
    if dev >> 20 != 0 {
        return false;
    }
    VOLUME_DEVS
        .get(dev >> 6)
        .is_some_and(|word| word & (1u64 << (dev & 63)) != 0)
}

/// The offsets, through a pointer the compiler cannot see through (a volatile load of its
/// address), so it cannot fold the zero placeholder and loads only the fields a path uses; the
/// verifier sees the loader's values as constants (the global lives in frozen `.rodata`).
#[inline(always)]
pub(crate) fn offsets() -> &'static KernelOffsets {
    let at: *const KernelOffsets = &KERNEL_OFFSETS;
    unsafe { &*core::ptr::read_volatile(&at) }
}

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.map_err(i64::from)
}

/// Looks `current->files->fdt->fd[fd]`'s inode (device, number) up in `WATCHED`; on a hit,
/// returns the credential and the file's `f_mode`; a regular file on a credential volume's mount
/// that is not watched is `Unseen`.
///
/// The walk uses only direct loads from BTF-typed pointers, which the verifier turns into
/// fault-tolerant loads: no helper calls. The one step the verifier cannot type is the table slot
/// (`fdt->fd` is a `struct file **`, indexed by a variable): with `bpf_rdonly_cast` (Linux 6.2+)
/// the slot's address becomes a typed pointer. Without it, a slot of the table embedded in
/// `files_struct` (descriptor below 64, table never expanded) is read with one constant-offset
/// arm per slot, and anything else falls back to `bpf_probe_read_kernel`.
#[inline(always)]
unsafe fn watched_open(off: &KernelOffsets, fd: u64) -> Option<Opened> {
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        let files = *(task.add(off.task_files as usize) as *const *const u8);
        let fdt = *(files.add(off.files_fdt as usize) as *const *const u8);
        let max_fds = *(fdt.add(off.fdt_max_fds as usize) as *const u32);
        if fd >= max_fds as u64 {
            return None;
        }
        let table = *(fdt.add(off.fdt_fd as usize) as *const u64);
        let file = if off.file_slot_btf_id != 0 {
            // The slot as a `struct kiocb`, whose first member is `struct file *ki_filp`.
            let slot = rdonly_cast(table + fd * 8, off.file_slot_btf_id);
            *(slot as *const *const u8)
        } else if fd < NR_OPEN_DEFAULT && table == files as u64 + off.files_fd_array as u64 {
            embedded_slot(files, off.files_fd_array as usize, fd)
        } else {
            return watched_open_by_helpers(off, table, fd);
        };
        if file.is_null() {
            return None;
        }
        classify_file(off, file)
    }
}

/// A `struct file` the verifier knows as one (a trampoline's argument, or the typed walk's end):
/// its inode by direct loads, classified.
#[inline(always)]
unsafe fn classify_file(off: &KernelOffsets, file: *const u8) -> Option<Opened> {
    unsafe {
        let inode = *(file.add(off.file_f_inode as usize) as *const *const u8);
        let ino = *(inode.add(off.inode_i_ino as usize) as *const u64);
        let sb = *(inode.add(off.inode_i_sb as usize) as *const *const u8);
        let dev = *(sb.add(off.sb_s_dev as usize) as *const u32);
        classify(
            dev,
            ino,
            || Some(*(inode.add(off.inode_i_mode as usize) as *const u16)),
            || Some(*(file.add(off.file_f_mode as usize) as *const u32)),
        )
    }
}

/// What an opened file is to the sensor: a watched credential, a regular file on a marked
/// volume mount that is not watched yet, or nothing. The modes are read only when needed, by
/// the walk's own kind of load (direct, or helper reads).
#[inline(always)]
fn classify(
    dev: u32,
    ino: u64,
    i_mode: impl FnOnce() -> Option<u16>,
    f_mode: impl FnOnce() -> Option<u32>,
) -> Option<Opened> {
    // An array load (inlined by the verifier) spares nearly every open the hash lookup; the key
    // is built only then.
    if maybe_watched(dev, ino) {
        if let Some(cred) = unsafe { WATCHED.get(&InodeKey::new(dev, ino)) } {
            return Some(Opened::Watched(*cred, f_mode()?));
        }
    }
    if !on_volume_dev(dev) || i_mode()? & S_IFMT != S_IFREG {
        return None;
    }
    Some(Opened::Unseen(InodeKey::new(dev, ino), f_mode()?))
}

/// The walk from the table slot on, for kernels without `bpf_rdonly_cast`: the slot's value is an
/// untyped number to the verifier, so every further step is a helper read.
#[inline(always)]
unsafe fn watched_open_by_helpers(off: &KernelOffsets, table: u64, fd: u64) -> Option<Opened> {
    unsafe {
        let file: *const u8 = bpf_probe_read_kernel((table + fd * 8) as *const *const u8).ok()?;
        let inode: *const u8 = read(file, off.file_f_inode).ok()?;
        let ino: u64 = read(inode, off.inode_i_ino).ok()?;
        let sb: *const u8 = read(inode, off.inode_i_sb).ok()?;
        let dev: u32 = read(sb, off.sb_s_dev).ok()?;
        classify(
            dev,
            ino,
            || read(inode, off.inode_i_mode).ok(),
            || read(file, off.file_f_mode).ok(),
        )
    }
}

/// `bpf_rdonly_cast(addr, btf_id)`: the kfunc that makes an address a read-only pointer to the
/// struct `btf_id` (fault-tolerant loads, like any BTF pointer walk). The verifier replaces the
/// call with a register move, so it costs nothing at run time. aya cannot emit kfunc calls: this
/// calls a placeholder helper number that the loader rewrites into the kfunc call.
#[inline(always)]
unsafe fn rdonly_cast(addr: u64, btf_id: u32) -> *const u8 {
    unsafe {
        let kfunc: unsafe extern "C" fn(u64, u32) -> *const u8 =
            core::mem::transmute(RDONLY_CAST_PLACEHOLDER as usize);
        kfunc(addr, btf_id)
    }
}

/// `files->fd_array[fd]` with a constant offset per arm: the verifier allows only constant
/// offsets into a typed struct.
#[inline(always)]
unsafe fn embedded_slot(files: *const u8, fd_array: usize, fd: u64) -> *const u8 {
    macro_rules! slots {
        ($($n:literal)*) => {
            match fd {
                $($n => core::ptr::read_volatile(files.add(fd_array + $n * 8) as *const *const u8),)*
                _ => core::ptr::null(),
            }
        };
    }
    unsafe {
        slots!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
               32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63)
    }
}

#[inline(always)]
fn count_read(cred: CredentialGeneration, pid_tgid: u64) {
    let key = ReadKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        cred_id: cred.cred_id,
        generation: cred.generation,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(stats) = READS.get_ptr_mut(&key) {
        // Per-CPU slot: no other program touches it while this one runs.
        unsafe {
            (*stats).count += 1;
            (*stats).last_read_ns = now;
        }
        return;
    }
    let first = ReadStats {
        count: 1,
        last_read_ns: now,
    };
    match READS.insert(&key, &first, BPF_NOEXIST as u64) {
        Ok(()) => emit_first_read(&key, pid_tgid, now),
        // Another CPU inserted the key between our lookup and insert: count on our slot.
        Err(_) => match READS.get_ptr_mut(&key) {
            Some(stats) => unsafe {
                (*stats).count += 1;
                (*stats).last_read_ns = now;
            },
            None => lost(LostStage::ReadsMap),
        },
    }
}

/// Counts a read of a file not watched (yet) by inode; the first by this cgroup keeps who read.
/// `UNSEEN` is shared by all CPUs: the count is added atomically.
#[inline(always)]
fn count_unseen(inode: InodeKey, pid_tgid: u64) {
    let key = UnseenKey {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        inode,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let add = |read: *mut UnseenRead| unsafe {
        // An atomic add (BPF_ATOMIC | BPF_ADD): `AtomicU64::fetch_add` is not offered on bpf.
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*read).count, 1);
        (*read).last_read_ns = now;
    };
    if let Some(read) = UNSEEN.get_ptr_mut(&key) {
        add(read);
        return;
    }
    let first = UnseenRead {
        count: 1,
        last_read_ns: now,
        first_read_ns: now,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if UNSEEN.insert(&key, &first, BPF_NOEXIST as u64).is_err() {
        // Inserted by another CPU meanwhile.
        if let Some(read) = UNSEEN.get_ptr_mut(&key) {
            add(read);
        }
    }
}

#[inline(always)]
fn emit_first_read(key: &ReadKey, pid_tgid: u64, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<FirstReadEvent>(0) else {
        lost(LostStage::RingBuf);
        return;
    };
    entry.write(FirstReadEvent {
        kind: EventKind::FirstRead as u32,
        cred_id: key.cred_id,
        generation: key.generation,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        cgroup_id: key.cgroup_id,
        ts_ns: now,
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    entry.submit(0);
}
