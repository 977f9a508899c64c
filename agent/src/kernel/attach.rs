//! Attaching programs to their hooks; a failure is reported per hook, never fatal here.
use aya::{
    maps::SockHash,
    programs::{
        fexit::FExitLinkId, links::CgroupAttachMode, links::FdLink, tp_btf::BtfTracePointLinkId,
        trace_point::TracePointLinkId, BtfTracePoint, FExit, ProgramError, SkMsg, SockOps,
        TracePoint,
    },
    Btf, Ebpf,
};
use serde::Serialize;

/// Where a program of the object attaches: a tracepoint, a tracepoint with typed arguments (BTF;
/// no trampoline), or the return of a kernel function through a BPF trampoline (fexit; kernels
/// that allow trampolines only). Socket programs are [`SocketHook`]s; uprobes are attached by
/// their sensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    BtfTracepoint {
        program: &'static str,
        name: &'static str,
    },
    Fexit {
        program: &'static str,
        function: &'static str,
    },
}

impl Hook {
    /// `syscalls/sys_exit_<name>`, run by the program of that name.
    pub const fn syscall_exit(program: &'static str, name: &'static str) -> Hook {
        Hook::Tracepoint {
            program,
            category: "syscalls",
            name,
        }
    }

    /// `<category>/<name>`, run by the program of the same name.
    pub const fn tracepoint(category: &'static str, name: &'static str) -> Hook {
        Hook::Tracepoint {
            program: name,
            category,
            name,
        }
    }

    /// The tracepoint `name` with its arguments typed (`tp_btf`), run by `program`.
    pub const fn btf_tracepoint(program: &'static str, name: &'static str) -> Hook {
        Hook::BtfTracepoint { program, name }
    }

    /// The return of kernel function `function`, run by `program`.
    pub const fn fexit(program: &'static str, function: &'static str) -> Hook {
        Hook::Fexit { program, function }
    }

    pub fn program(&self) -> &'static str {
        match self {
            Hook::Tracepoint { program, .. }
            | Hook::BtfTracepoint { program, .. }
            | Hook::Fexit { program, .. } => program,
        }
    }

    /// The `probe` label and the name in logs: `tracepoint/<category>/<name>`, `tp_btf/<name>`,
    /// `fexit/<function>`.
    pub fn label(&self) -> String {
        match self {
            Hook::Tracepoint { category, name, .. } => format!("tracepoint/{category}/{name}"),
            Hook::BtfTracepoint { name, .. } => format!("tp_btf/{name}"),
            Hook::Fexit { function, .. } => format!("fexit/{function}"),
        }
    }
}

/// Whether one hook is attached, and why not.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct HookStatus {
    pub probe: String,
    pub attached: bool,
    pub error: Option<String>,
}

impl HookStatus {
    /// A hook attached by an agent before this one and kept (pinned).
    pub fn kept(probe: String) -> Self {
        HookStatus {
            probe,
            attached: true,
            error: None,
        }
    }
}

/// Loads and attaches each hook's program.
pub fn attach(ebpf: &mut Ebpf, hooks: &[Hook]) -> Vec<HookStatus> {
    attach_with_ids(ebpf, hooks).0
}

/// The link one attach made, owned by its program until taken (to be pinned).
#[derive(Debug)]
pub enum LinkId {
    Tracepoint(TracePointLinkId),
    BtfTracepoint(BtfTracePointLinkId),
    Fexit(FExitLinkId),
}

/// [`attach`], with the link of each hook that attached.
pub fn attach_with_ids(ebpf: &mut Ebpf, hooks: &[Hook]) -> (Vec<HookStatus>, Vec<(Hook, LinkId)>) {
    let mut ids = Vec::new();
    let statuses = hooks
        .iter()
        .map(|hook| {
            let result = attach_one(ebpf, hook);
            let status = HookStatus {
                probe: hook.label(),
                attached: result.is_ok(),
                error: result.as_ref().err().cloned(),
            };
            if let Ok(id) = result {
                ids.push((*hook, id));
            }
            status
        })
        .collect();
    (statuses, ids)
}

/// Whether every link [`take_fd_link`] may be asked for is a bpf_link that can be pinned: fexit
/// links always are; a tracepoint's is from Linux 5.15 (before, a perf event holds it).
pub fn links_can_be_pinned() -> bool {
    aya::features().bpf_perf_link()
}

/// Takes the link of `hook` out of its program; from then on it stays attached as long as the
/// returned `FdLink` or a pin of it lives. Call only where [`links_can_be_pinned`]: a link that
/// is not a bpf_link would be dropped, detached.
pub fn take_fd_link(ebpf: &mut Ebpf, hook: &Hook, id: LinkId) -> Result<FdLink, String> {
    match id {
        LinkId::Tracepoint(id) => {
            let prog: &mut TracePoint = program_of(ebpf, hook.program())?;
            let link = prog.take_link(id).map_err(|e| describe(&e))?;
            FdLink::try_from(link).map_err(|e| e.to_string())
        }
        LinkId::BtfTracepoint(id) => {
            let prog: &mut BtfTracePoint = program_of(ebpf, hook.program())?;
            Ok(prog.take_link(id).map_err(|e| describe(&e))?.into())
        }
        LinkId::Fexit(id) => {
            let prog: &mut FExit = program_of(ebpf, hook.program())?;
            Ok(prog.take_link(id).map_err(|e| describe(&e))?.into())
        }
    }
}

fn attach_one(ebpf: &mut Ebpf, hook: &Hook) -> Result<LinkId, String> {
    match *hook {
        Hook::Tracepoint { category, name, .. } => {
            let prog: &mut TracePoint = program_of(ebpf, hook.program())?;
            if prog.fd().is_err() {
                prog.load().map_err(|e| describe(&e))?;
            }
            let id = prog.attach(category, name).map_err(|e| describe(&e))?;
            Ok(LinkId::Tracepoint(id))
        }
        Hook::BtfTracepoint { name, .. } => {
            let prog: &mut BtfTracePoint = program_of(ebpf, hook.program())?;
            if prog.fd().is_err() {
                prog.load(name, &kernel_btf()?).map_err(|e| describe(&e))?;
            }
            Ok(LinkId::BtfTracepoint(
                prog.attach().map_err(|e| describe(&e))?,
            ))
        }
        Hook::Fexit { function, .. } => {
            let prog: &mut FExit = program_of(ebpf, hook.program())?;
            if prog.fd().is_err() {
                prog.load(function, &kernel_btf()?)
                    .map_err(|e| describe(&e))?;
            }
            Ok(LinkId::Fexit(prog.attach().map_err(|e| describe(&e))?))
        }
    }
}

fn kernel_btf() -> Result<Btf, String> {
    Btf::from_sys_fs().map_err(|e| format!("reading the kernel's BTF: {e}"))
}

/// Where a socket program attaches: to every socket of the host, through the root of the cgroup
/// v2 hierarchy (next to other programs there: `BPF_F_ALLOW_MULTI`), or to the sockets of a
/// sock map. They stay attached as long as the object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketHook {
    /// `sock_ops`: TCP connection events.
    SockOps { program: &'static str },
    /// `sk_msg`: every send on a socket in the sock hash `map`.
    SkMsg {
        program: &'static str,
        map: &'static str,
    },
}

impl SocketHook {
    /// The `probe` label: `sock_ops`, `sk_msg/<map>`.
    pub fn label(&self) -> String {
        match self {
            SocketHook::SockOps { .. } => "sock_ops".to_owned(),
            SocketHook::SkMsg { map, .. } => format!("sk_msg/{map}"),
        }
    }
}

/// Loads and attaches each socket hook, in order, to the cgroup v2 root `cgroup` (a directory).
pub fn attach_sockets(
    ebpf: &mut Ebpf,
    hooks: &[SocketHook],
    cgroup: Option<&str>,
) -> Vec<HookStatus> {
    // A cgroup bpf_link (Linux 5.7) always runs beside the other programs there and takes no
    // flags; the older attach needs BPF_F_ALLOW_MULTI for that.
    use aya::util::KernelVersion;
    let links =
        KernelVersion::current().is_ok_and(|v| v.code() >= KernelVersion::new(5, 7, 0).code());
    let mode = if links {
        CgroupAttachMode::Single
    } else {
        CgroupAttachMode::AllowMultiple
    };
    let root = cgroup
        .ok_or_else(|| "no cgroup v2 hierarchy is mounted".to_owned())
        .and_then(|path| {
            std::fs::File::open(path).map_err(|e| format!("opening the cgroup root {path}: {e}"))
        });
    hooks
        .iter()
        .map(|hook| {
            let result = root
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|root| attach_socket(ebpf, hook, root, mode));
            HookStatus {
                probe: hook.label(),
                attached: result.is_ok(),
                error: result.err(),
            }
        })
        .collect()
}

fn attach_socket(
    ebpf: &mut Ebpf,
    hook: &SocketHook,
    root: &std::fs::File,
    mode: CgroupAttachMode,
) -> Result<(), String> {
    match *hook {
        SocketHook::SockOps { program } => {
            let prog: &mut SockOps = program_of(ebpf, program)?;
            prog.load().map_err(|e| describe(&e))?;
            prog.attach(root, mode).map_err(|e| describe(&e))?;
        }
        SocketHook::SkMsg { program, map } => {
            let fd = {
                let map = ebpf
                    .map(map)
                    .ok_or_else(|| format!("map {map} missing from the object"))?;
                let hash: SockHash<_, u64> = SockHash::try_from(map).map_err(|e| e.to_string())?;
                hash.fd().try_clone().map_err(|e| e.to_string())?
            };
            let prog: &mut SkMsg = program_of(ebpf, program)?;
            prog.load().map_err(|e| describe(&e))?;
            prog.attach(&fd).map_err(|e| describe(&e))?;
        }
    }
    Ok(())
}

fn program_of<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    program.try_into().map_err(|e| describe(&e))
}

/// An error with its causes, or the last lines of the verifier's log.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                // Refused before the verifier ran (EPERM: no BPF trampolines here, lockdown).
                return format!("the kernel refused to load it ({io_error})");
            }
            let tail: Vec<&str> = log.lines().rev().take(8).collect();
            format!(
                "verifier rejected it ({io_error}); last lines of its log:\n  {}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            )
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(": ");
                s.push_str(&e.to_string());
                src = e.source();
            }
            s
        }
    }
}
