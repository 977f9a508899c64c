//! A network namespace of the test's own, joined to the host by a veth pair: the only place
//! besides loopback that test traffic may go. Removed (with the veth) on drop.
use std::process::{Child, Command, Stdio};

pub struct NetNs {
    pub name: String,
    host_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A namespace whose side of the veth has `ns_addr` (CIDR) and the host's `host_addr`.
    pub fn new(host_addr: &str, ns_addr: &str) -> NetNs {
        let tag = crate::unique("").replace(['-', '_'], "");
        let tag = &tag[tag.len().saturating_sub(8)..];
        let name = format!("cwt{tag}");
        let host_if = format!("cwh{tag}");
        let ns_if = format!("cwn{tag}");
        ip(&["netns", "add", &name]);
        let this = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ]);
        ip(&["addr", "add", host_addr, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&["-n", &name, "addr", "add", ns_addr, "dev", &ns_if]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        this
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Starts `program args` inside the namespace, output discarded.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Child {
        self.command(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in netns")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
