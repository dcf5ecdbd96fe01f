//! Rootless operation: when not root, steps that must look like root to the tools
//! (rpm's chroot for scriptlets, ostree admin deploy, mkfs owner fields) run inside a
//! user namespace where the invoking user is mapped to uid 0 (`unshare -r`). Files they
//! create are owned by the invoking user on disk and appear as root inside.

use std::process::Command;

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A command for `program` that runs as (namespaced) root: directly when root,
/// under `unshare --map-root-user` otherwise. `extra` adds unshare flags (e.g. `--net`).
pub fn as_root(program: &str, extra: &[&str]) -> Command {
    if is_root() && extra.is_empty() {
        return Command::new(program);
    }
    let mut c = Command::new("unshare");
    if !is_root() {
        c.arg("--map-root-user");
    }
    c.args(extra).arg("--").arg(program);
    c
}
