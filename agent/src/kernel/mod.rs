//! The kernel side as aya sees it: the eBPF object and its kfunc patching, the kernel's BTF,
//! attaching hooks of any kind, the per-kernel choice of what to load (`compat`), typed map
//! handles and the event ring. Nothing here knows about Kubernetes, agent state or metrics.
pub mod auth_maps;
pub mod btf;
pub mod compat;
pub mod maps;
pub mod object;
pub mod pin;
pub mod ring;

mod attach;

pub use attach::{
    attach, attach_sockets, links_can_be_pinned as attach_can_pin, Hook, HookStatus, SocketHook,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading the eBPF object: {0}")]
    Object(String),
    #[error("the eBPF object has no map {0}")]
    NoMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("opening the per-CPU buffers of map {name}: {why}")]
    Buffers { name: &'static str, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
