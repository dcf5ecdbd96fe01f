//! The bundled example OS (examples/): its RPM repo, built once per test run per set
//! of release bumps, and work directories configured to compose it.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

static REPOS: OnceLock<Mutex<HashMap<String, Utf8PathBuf>>> = OnceLock::new();
static CACHE: OnceLock<tempfile::TempDir> = OnceLock::new();

/// The example repo with `bumps` (e.g. `["example-hello=2"]`), built once per test run.
pub fn repo(bumps: &[&str]) -> Result<Utf8PathBuf> {
    let key = bumps.join(",");
    let map = REPOS.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    if let Some(p) = map.get(&key) {
        return Ok(p.clone());
    }
    let base = match CACHE.get() {
        Some(t) => t,
        None => {
            let t = tempfile::Builder::new()
                .prefix("cosa-example-repos")
                .tempdir_in("/var/tmp")?;
            let _ = CACHE.set(t);
            CACHE.get().context("cache dir")?
        }
    };
    let out = crate::common::utf8(base.path())?.join(format!("repo-{}", map.len()));
    let mut cmd = Command::new(format!("{EXAMPLES}/build-repo.sh"));
    cmd.arg(out.as_str());
    for b in bumps {
        cmd.arg("--release-bump").arg(b);
    }
    let o = cmd.output().context("running examples/build-repo.sh")?;
    anyhow::ensure!(
        o.status.success(),
        "build-repo.sh failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    map.insert(key, out.clone());
    Ok(out)
}

/// Copy a repo's content into `dest` (replacing what was there): "publish" it.
pub fn publish(repo: &Utf8Path, dest: &Utf8Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dest);
    let o = Command::new("cp")
        .args(["-a", repo.as_str(), dest.as_str()])
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// Configure `workdir` for the example OS with its repo at `repo_url`.
pub fn init_workdir(workdir: &Utf8Path, repo_url: &str) -> Result<()> {
    let o = Command::new(format!("{EXAMPLES}/init-workdir.sh"))
        .args(["--git", workdir.as_str(), repo_url])
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "init-workdir.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}
