//! The dnf backend's bridge: depsolve and install with dnf's own Python API
//! (`dnf_helper.py`, run by the system python3 where Debian/Ubuntu/Fedora ship `dnf`).

use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde::{Deserialize, Serialize};

use super::pkgs::Package;

const HELPER: &str = include_str!("dnf_helper.py");

/// Where an OSTree system keeps its rpmdb.
pub const RPMDB: &str = "/usr/lib/sysimage/rpm";

/// A version lock from `manifest-lock.<arch>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Lock {
    pub evr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Request<'a> {
    pub mode: &'a str,
    pub installroot: &'a str,
    pub reposdir: &'a str,
    pub cachedir: &'a str,
    pub logdir: &'a str,
    pub releasever: &'a str,
    pub basearch: &'a str,
    pub packages: &'a [String],
    pub exclude: &'a [String],
    pub repo_packages: Vec<serde_json::Value>,
    pub recommends: bool,
    pub documentation: bool,
    pub locked: std::collections::BTreeMap<String, Lock>,
    pub dbpath: &'a str,
}

#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    packages: Vec<Package>,
    #[serde(default)]
    error: Option<String>,
}

/// The system python3 that has the `dnf` module (not a pyenv/venv python first on PATH).
fn python() -> &'static str {
    for p in ["/usr/bin/python3", "/usr/libexec/platform-python"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    "python3"
}

/// Run the helper in `scratch` (it gets the request file, the script and a HOME whose
/// `.rpmmacros` puts the rpmdb where OSTree systems keep it: Debian's rpm defaults to
/// `~/.rpmdb`). Installing runs as namespaced root when we are not root.
pub fn run(req: &Request<'_>, scratch: &Utf8Path) -> Result<Vec<Package>> {
    let home = scratch.join("home");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {home}"))?;
    std::fs::write(home.join(".rpmmacros"), format!("%_dbpath {RPMDB}\n"))
        .with_context(|| format!("writing {home}/.rpmmacros"))?;
    let script = scratch.join("dnf_helper.py");
    std::fs::write(&script, HELPER).with_context(|| format!("writing {script}"))?;
    let reqf = scratch.join(format!("dnf-{}.json", req.mode));
    std::fs::write(&reqf, serde_json::to_vec(req)?).with_context(|| format!("writing {reqf}"))?;

    let mut cmd = if req.mode == "install" {
        crate::userns::as_root(python(), &[])
    } else {
        Command::new(python())
    };
    cmd.arg(script.as_str())
        .arg(reqf.as_str())
        .env("HOME", home.as_str())
        .stdin(std::process::Stdio::null());
    let desc = crate::cmd::describe(&cmd);
    tracing::debug!("exec: {desc}");
    let out = cmd.output().with_context(|| format!("running {desc}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The helper reports its own failures as one JSON line on stdout.
    let reply: Option<Reply> = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    match reply {
        Some(Reply { error: Some(e), .. }) => bail!("dnf {}: {e}", req.mode),
        Some(r) if out.status.success() => Ok(r.packages),
        _ => bail!(
            "{desc} failed ({}): {}",
            out.status,
            crate::cmd::tail(&out.stderr)
        ),
    }
}
