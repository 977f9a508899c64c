//! What this kernel runs: the object is loaded for the walk the kernel's BTF allows
//! (`bpf_rdonly_cast` from 6.2, helper reads before), and if the verifier refuses the kfunc walk
//! anyway, loaded again with the helper walk rather than left blind. The agent, `credwatch check`
//! and the tests all load through here.
use aya::Ebpf;

use super::{attach, btf::ProbeBtf, object, Hook, HookStatus, Result};

/// A loaded object with its hooks attached as far as the kernel allowed.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The BTF the programs were loaded with: says which walk runs (`ProbeBtf::file_walk`).
    pub btf: ProbeBtf,
    /// Why the fast hooks are not the ones in use (refused by the kernel, or not asked for);
    /// `None` when they are.
    pub fast_refused: Option<String>,
}

impl Loaded {
    pub fn any_attached(&self) -> bool {
        self.hooks.iter().any(|h| h.attached)
    }
}

/// Loads the object and attaches `fast` if given and the kernel allows all of it (trampoline
/// hooks), else `hooks`. If none of `hooks` attaches with the `bpf_rdonly_cast` walk (a kernel
/// whose verifier does not allow the kfunc for these programs), loads the object again with the
/// helper walk.
pub fn load_and_attach(
    btf: &ProbeBtf,
    agent_tgid: u32,
    fast: Option<&[Hook]>,
    hooks: &[Hook],
) -> Result<Loaded> {
    let mut ebpf = object::load(btf, agent_tgid)?;
    let fast_refused = match fast {
        None => Some("not asked for (--file-hook tracepoints)".to_owned()),
        Some(fast) => {
            let statuses = attach(&mut ebpf, fast);
            if statuses.iter().all(|s| s.attached) {
                return Ok(Loaded {
                    ebpf,
                    hooks: statuses,
                    btf: *btf,
                    fast_refused: None,
                });
            }
            // A partly attached fast set would count twice beside the fallback: start over.
            if statuses.iter().any(|s| s.attached) {
                drop(ebpf);
                ebpf = object::load(btf, agent_tgid)?;
            }
            Some(
                statuses
                    .into_iter()
                    .filter_map(|s| Some(format!("{}: {}", s.probe, s.error?)))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    };
    let statuses = attach(&mut ebpf, hooks);
    if btf.rdonly_cast.is_none() || statuses.iter().any(|s| s.attached) {
        return Ok(Loaded {
            ebpf,
            hooks: statuses,
            btf: *btf,
            fast_refused,
        });
    }
    let fallback = btf.without_kfuncs();
    tracing::warn!(
        error = statuses[0].error.as_deref().unwrap_or(""),
        "the kernel refused the file probes with bpf_rdonly_cast; retrying with helper reads"
    );
    drop(ebpf);
    let mut ebpf = object::load(&fallback, agent_tgid)?;
    let statuses = attach(&mut ebpf, hooks);
    Ok(Loaded {
        ebpf,
        hooks: statuses,
        btf: fallback,
        fast_refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf;

    const HOOKS: [Hook; 1] = [Hook::syscall_exit("sys_exit_openat", "sys_exit_openat")];

    /// A kernel that refuses the kfunc call gets the helper walk, not a blind agent. Simulated with
    /// the id of a kernel function that is not a kfunc (`vfs_open`), which the verifier refuses.
    #[test]
    fn a_refused_kfunc_falls_back_to_the_helper_walk() {
        if let Some(why) = crate::sys::missing_privileges() {
            eprintln!("skipped: loading programs needs root ({why})");
            return;
        }
        let vmlinux = std::path::Path::new(btf::VMLINUX_BTF);
        let Ok(real) = btf::probe_btf(vmlinux) else {
            eprintln!("skipped: no kernel BTF");
            return;
        };
        let refused = real.with_refused_kfunc(vmlinux).expect("vfs_open in BTF");
        let loaded = load_and_attach(&refused, std::process::id(), None, &HOOKS).unwrap();
        assert!(
            loaded.hooks.iter().all(|s| s.attached),
            "{:?}",
            loaded.hooks
        );
        assert_eq!(loaded.btf, real.without_kfuncs());
    }
}
