//! Who is behind a read: cgroup paths to readers (`cgroup_path`), cgroup ids to paths
//! (`resolver`), pod metadata from the Kubernetes API (`podmeta`), and the attribution rules that
//! turn a reader into a `container` label (`attribution`). Depends on nothing above it.
pub mod attribution;
pub mod cgroup_path;
pub mod ids;
pub mod podmeta;
pub mod resolver;

pub use cgroup_path::{parse_cgroup_path, Reader};
pub use podmeta::{PodIndex, PodMeta};
pub use resolver::CgroupResolver;
