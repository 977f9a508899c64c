//! What this kernel runs: the object is loaded for the walk the kernel's BTF allows
//! (`bpf_rdonly_cast` from 6.2, helper reads before), and if the verifier refuses the kfunc walk
//! anyway, loaded again with the helper walk rather than left blind. The agent, `credwatch check`
//! and the tests all load through here.
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use credwatch_common::{maps::CONTROL, Control, PINNED_LAYOUT};

use super::{
    attach::{self, LinkId},
    btf::ProbeBtf,
    object,
    pin::{LinkSet, Pins},
    Error, Hook, HookStatus, Result,
};

/// A loaded object with its hooks attached as far as the kernel allowed.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    /// The BTF the programs were loaded with: says which walk runs (`ProbeBtf::file_walk`).
    pub btf: ProbeBtf,
    /// Why the fast hooks are not the ones in use (refused by the kernel, or not asked for);
    /// `None` when they are.
    pub fast_refused: Option<String>,
    /// Whether the kernel refused the fast hooks (so it runs no fexit program: other sensors
    /// need not try theirs).
    pub trampolines_refused: bool,
    /// Whose the counting file programs are.
    pub links: Links,
}

/// Whose the file programs that count are, and whether they outlive the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Links {
    /// This agent's, owned by its object: they detach when it exits.
    Own,
    /// This agent's, pinned: they keep counting when it exits.
    Pinned,
    /// The pinned set of an agent before this one (the same build on this kernel), taken over:
    /// it never stopped counting, and this object's file programs stay unattached.
    Kept,
}

impl Loaded {
    pub fn any_attached(&self) -> bool {
        self.hooks.iter().any(|h| h.attached)
    }
}

/// Loads the object and makes the file sensor count: with `pins`, the pinned set of an agent
/// before this one if it is this build's, else this object's own hooks, pinned. This object's
/// own are `fast` if given and the kernel allows all of it (trampoline hooks), else `hooks`. If
/// none of `hooks` attaches with the `bpf_rdonly_cast` walk (a kernel whose verifier does not
/// allow the kfunc for these programs), the object is loaded again with the helper walk.
/// `agent_tgid`'s own opens are never counted.
pub fn load_and_attach(
    btf: &ProbeBtf,
    agent_tgid: u32,
    fast: Option<&[Hook]>,
    hooks: &[Hook],
    pins: Option<&Pins>,
) -> Result<Loaded> {
    let token = links_token();
    let identity = identity(btf, fast.is_some());
    let mut ebpf = object::load(btf, token, pins)?;
    if let Some((set, kept)) = pins.and_then(|p| p.kept_links(identity)) {
        // Its own token too: an agent killed while switching to another set left CONTROL naming
        // that one, and this set's programs would count nothing.
        set_control(&mut ebpf, set.token, agent_tgid)?;
        remove_others(pins, Some(set));
        let fast_refused = (!kept.iter().any(|l| l.starts_with("fexit/")))
            .then(|| "kept from the agent before (same build, same kernel)".to_owned());
        return Ok(Loaded {
            ebpf,
            hooks: kept.into_iter().map(HookStatus::kept).collect(),
            btf: *btf,
            fast_refused,
            trampolines_refused: false,
            links: Links::Kept,
        });
    }
    let (mut loaded, ids) = attach_own(ebpf, btf, token, fast, hooks, pins)?;
    let set = LinkSet { identity, token };
    if let Some(p) = pins {
        loaded.links = pin_own(&mut loaded.ebpf, p, set, ids);
    }
    // The switch: from this write on, this object's programs count and no other's do.
    set_control(&mut loaded.ebpf, token, agent_tgid)?;
    let own = (loaded.links == Links::Pinned).then_some(set);
    remove_others(pins, own);
    Ok(loaded)
}

/// Unpins every links set but `keep` (they count nothing: `CONTROL` names another).
fn remove_others(pins: Option<&Pins>, keep: Option<LinkSet>) {
    let Some(p) = pins else {
        return;
    };
    match p.remove_links_except(keep) {
        Ok(gone) if !gone.is_empty() => {
            tracing::info!(replaced = ?gone, "pinned file programs of another build were unpinned");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "cannot unpin other pinned file programs (they count nothing: another set is active)")
        }
    }
}

/// This object's own hooks attached (see [`load_and_attach`]), with their links.
fn attach_own(
    mut ebpf: Ebpf,
    btf: &ProbeBtf,
    token: u64,
    fast: Option<&[Hook]>,
    hooks: &[Hook],
    pins: Option<&Pins>,
) -> Result<(Loaded, Vec<(Hook, LinkId)>)> {
    let loaded = |ebpf, hooks, btf, fast_refused: Option<String>| Loaded {
        ebpf,
        hooks,
        btf,
        trampolines_refused: fast.is_some() && fast_refused.is_some(),
        fast_refused,
        links: Links::Own,
    };
    let fast_refused = match fast {
        None => Some("not asked for (--file-hook tracepoints)".to_owned()),
        Some(fast) => {
            let (statuses, ids) = attach::attach_with_ids(&mut ebpf, fast);
            if statuses.iter().all(|s| s.attached) {
                return Ok((loaded(ebpf, statuses, *btf, None), ids));
            }
            // A partly attached fast set would count twice beside the fallback: start over.
            if !ids.is_empty() {
                drop(ebpf);
                ebpf = object::load(btf, token, pins)?;
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
    let (statuses, ids) = attach::attach_with_ids(&mut ebpf, hooks);
    if btf.rdonly_cast.is_none() || !ids.is_empty() {
        return Ok((loaded(ebpf, statuses, *btf, fast_refused), ids));
    }
    let fallback = btf.without_kfuncs();
    tracing::warn!(
        error = statuses[0].error.as_deref().unwrap_or(""),
        "the kernel refused the file probes with bpf_rdonly_cast; retrying with helper reads"
    );
    drop(ebpf);
    let mut ebpf = object::load(&fallback, token, pins)?;
    let (statuses, ids) = attach::attach_with_ids(&mut ebpf, hooks);
    Ok((loaded(ebpf, statuses, fallback, fast_refused), ids))
}

/// Pins the links in `ids` as `identity`'s set. If that fails, they are attached again,
/// unpinned: the agent counts as long as it runs, and says why no longer.
fn pin_own(ebpf: &mut Ebpf, pins: &Pins, set: LinkSet, ids: Vec<(Hook, LinkId)>) -> Links {
    if ids.is_empty() {
        return Links::Own;
    }
    if !attach::links_can_be_pinned() {
        tracing::warn!("this kernel makes no bpf_link for tracepoints (before 5.15): the file probes stop with the agent");
        return Links::Own;
    }
    let hooks: Vec<Hook> = ids.iter().map(|(h, _)| *h).collect();
    let mut links = Vec::new();
    let mut error = None;
    for (hook, id) in ids {
        match attach::take_fd_link(ebpf, &hook, id) {
            Ok(link) => links.push((hook.label(), link)),
            Err(e) => error = error.or(Some(e)),
        }
    }
    let pinned = match error {
        Some(e) => Err(std::io::Error::other(e)),
        None => pins.pin_links(set, links),
    };
    match pinned {
        Ok(()) => Links::Pinned,
        Err(e) => {
            tracing::warn!(error = %e, "cannot pin the file probes: they stop with the agent");
            for s in attach::attach(ebpf, &hooks) {
                if let Some(e) = s.error {
                    tracing::error!(probe = %s.probe, error = %e, "file probe lost while pinning");
                }
            }
            Links::Own
        }
    }
}

/// Writes `CONTROL[0]`: the token of the set that counts, and the agent's tgid.
fn set_control(ebpf: &mut Ebpf, active_links: u64, agent_tgid: u32) -> Result<()> {
    let map = ebpf.map_mut(CONTROL).ok_or(Error::NoMap(CONTROL))?;
    let map_error = |source| Error::Map {
        name: CONTROL,
        source,
    };
    let mut control: Array<&mut MapData, Control> = Array::try_from(map).map_err(map_error)?;
    let value = Control {
        active_links,
        agent_tgid,
        _pad: 0,
    };
    control.set(0, value, 0).map_err(map_error)
}

/// What this agent would attach on this kernel: the object, the kernel's offsets and kfunc, and
/// whether the fast hook is asked for. The same identity means the same programs, so a pinned
/// set under it can be taken over as it is.
fn identity(btf: &ProbeBtf, fast: bool) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    object::EBPF_OBJECT.hash(&mut h);
    format!("{btf:?}").hash(&mut h);
    fast.hash(&mut h);
    PINNED_LAYOUT.hash(&mut h);
    h.finish()
}

/// A token no other load has (0 means "none").
fn links_token() -> u64 {
    std::hash::RandomState::new().hash_one(std::time::SystemTime::now()) | 1
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
        let loaded = load_and_attach(&refused, std::process::id(), None, &HOOKS, None).unwrap();
        assert!(
            loaded.hooks.iter().all(|s| s.attached),
            "{:?}",
            loaded.hooks
        );
        assert_eq!(loaded.btf, real.without_kfuncs());
    }
}
