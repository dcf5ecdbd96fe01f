//! Pruning old builds from a work directory: keep the newest N (tagged builds are
//! always kept and do not count), as coreos-assembler's `cmd-prune`.
//!
//! Order matters for a crash at any point: builds.json is rewritten and `latest`
//! repointed first, then directories and OSTree refs are removed. An interrupted prune
//! leaves at worst an unlisted directory, never a listed build whose files are gone.

use std::process::Command;

use anyhow::{Context, Result};

use crate::cmd::CommandRunExt;
use crate::workdir::{Workdir, WorkdirLock};

/// coreos-assembler's default.
pub const DEFAULT_KEEP_LAST_N: usize = 3;

/// The OSTree ref under which a build's commit is kept in `tmp/repo`.
pub fn build_ref(id: &str, arch: &str) -> String {
    format!("cosa/builds/{id}/{arch}")
}

/// Which builds to drop: all but the newest `keep` untagged ones (`keep == 0` keeps all).
pub fn select(builds: &crate::builds::BuildsJson, keep: usize) -> Result<Vec<String>> {
    if keep == 0 {
        return Ok(Vec::new());
    }
    let tagged: std::collections::HashSet<String> =
        builds.tags()?.into_iter().map(|t| t.target).collect();
    Ok(builds
        .builds
        .iter()
        .filter(|b| !tagged.contains(&b.id))
        .skip(keep)
        .map(|b| b.id.clone())
        .collect())
}

/// Prune the work directory to the newest `keep` builds; returns the IDs removed.
pub fn prune(wd: &Workdir, lock: &WorkdirLock, keep: usize) -> Result<Vec<String>> {
    let mut builds = wd.read_builds()?;
    let doomed = select(&builds, keep)?;
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let mut removed = Vec::new();
    for id in &doomed {
        if let Some(e) = builds.remove(id) {
            removed.push(e);
        }
    }
    wd.write_builds(&builds, lock)?;
    wd.set_latest(builds.latest().map(|b| b.id.as_str()), lock)?;

    let repo = wd.repo_dir();
    let have_repo = repo.join("config").exists();
    for entry in &removed {
        let dir = wd.build_dir(&entry.id)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {dir}"));
            }
            _ => {}
        }
        if have_repo {
            for arch in &entry.arches {
                delete_ref_if_present(&repo, &build_ref(&entry.id, arch))?;
            }
        }
        tracing::info!("pruned build {}", entry.id);
    }
    if have_repo {
        Command::new("ostree")
            .args(["prune", "--refs-only", "--repo"])
            .arg(repo.as_str())
            .run()?;
    }
    Ok(doomed)
}

/// Delete ref `r` of `repo` if it exists.
pub fn delete_ref_if_present(repo: &camino::Utf8Path, r: &str) -> Result<()> {
    let refs = Command::new("ostree")
        .args(["refs", "--repo", repo.as_str()])
        .run_get_string()?;
    if refs.lines().any(|l| l == r) {
        Command::new("ostree")
            .args(["refs", "--repo", repo.as_str(), "--delete", r])
            .run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::BuildsJson;

    #[test]
    fn keeps_newest_and_tagged() -> Result<()> {
        let mut b = BuildsJson::default();
        for id in ["1", "2", "3", "4", "5"] {
            b.insert(id, "x86_64")?;
        }
        b.extra.insert(
            "tags".into(),
            serde_json::json!([{"name": "stable", "created": "2020-01-01T00:00:00Z", "target": "1"}]),
        );
        // Newest first: 5 4 3 2 1; tag on 1 keeps it and does not count.
        assert_eq!(select(&b, 2)?, ["3", "2"]);
        assert_eq!(select(&b, 0)?, Vec::<String>::new());
        assert_eq!(select(&b, 10)?, Vec::<String>::new());
        Ok(())
    }
}
