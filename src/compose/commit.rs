//! Committing a composed tree into the work directory's archive repo (`tmp/repo`)
//! and exporting it as coreos-assembler's `.tar`-era ostree artifact.

use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::{Map, Value};

use crate::cmd::CommandRunExt;

/// Ensure `repo` is an archive-mode OSTree repo.
pub fn ensure_repo(repo: &Utf8Path) -> Result<()> {
    if !repo.join("config").exists() {
        std::fs::create_dir_all(repo).with_context(|| format!("creating {repo}"))?;
        Command::new("ostree")
            .args(["init", "--mode=archive", "--repo", repo.as_str()])
            .run()?;
    }
    Ok(())
}

/// GVariant text for a JSON value (for `ostree commit --add-metadata`).
fn gvariant(key: &str, v: &Value) -> Result<String> {
    Ok(match v {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) if n.is_i64() => format!("int64 {n}"),
        Value::Number(n) if n.is_u64() => format!("uint64 {n}"),
        Value::Number(n) => format!("{n}"),
        Value::String(s) => gvariant_str(s),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let items: Vec<String> = a
                .iter()
                .filter_map(Value::as_str)
                .map(gvariant_str)
                .collect();
            format!("@as [{}]", items.join(", "))
        }
        // A list of tuples, e.g. rpmostree.rpmdb.pkglist: [(name, epoch, version, release, arch)].
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_array) => {
            let mut rows = Vec::new();
            for row in a {
                let fields = row
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .map(|v| gvariant(key, v))
                            .collect::<Result<Vec<_>>>()
                    })
                    .transpose()?
                    .unwrap_or_default();
                rows.push(format!("({})", fields.join(", ")));
            }
            format!("[{}]", rows.join(", "))
        }
        _ => bail!(
            "add-commit-metadata: {key}: only strings, numbers, booleans and lists of strings are supported"
        ),
    })
}

fn gvariant_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What to commit.
pub struct Commit<'a> {
    pub repo: &'a Utf8Path,
    pub tree: &'a Utf8Path,
    pub branch: &'a str,
    pub subject: String,
    /// RFC3339 commit timestamp.
    pub timestamp: &'a str,
    /// Commit metadata: becomes both `--add-metadata` and the build's commitmeta.json.
    pub metadata: &'a Map<String, Value>,
    pub selinux: bool,
}

/// Commit; returns the commit checksum.
pub fn commit(c: &Commit<'_>) -> Result<String> {
    let mut cmd = crate::userns::as_root("ostree", &[]);
    cmd.arg("commit")
        .arg(format!("--repo={}", c.repo))
        .arg(format!("--branch={}", c.branch))
        .arg(format!("--tree=dir={}", c.tree))
        .arg(format!("--subject={}", c.subject))
        .arg(format!("--timestamp={}", c.timestamp));
    for (k, v) in c.metadata {
        cmd.arg(format!("--add-metadata={k}={}", gvariant(k, v)?));
    }
    if c.selinux {
        cmd.arg(format!("--selinux-policy={}", c.tree));
    }
    let out = cmd.run_get_string()?;
    let checksum = out.trim().to_string();
    if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("ostree commit printed {checksum:?}, not a commit checksum");
    }
    Ok(checksum)
}

/// Point `r` at `commit` (replacing it if present).
pub fn set_ref(repo: &Utf8Path, r: &str, commit: &str) -> Result<()> {
    crate::prune::delete_ref_if_present(repo, r)?;
    Command::new("ostree")
        .args([
            "refs",
            "--repo",
            repo.as_str(),
            &format!("--create={r}"),
            commit,
        ])
        .run()
}

/// The content checksum ostree computed for a commit (`ContentChecksum:` of `ostree show`).
pub fn content_checksum(repo: &Utf8Path, commit: &str) -> Result<Option<String>> {
    let out = Command::new("ostree")
        .args(["show", "--repo", repo.as_str(), commit])
        .run_get_string()?;
    Ok(out
        .lines()
        .find_map(|l| l.trim().strip_prefix("ContentChecksum:"))
        .map(|s| s.trim().to_string()))
}

/// Export `commit` (under `r`) as a tar of an archive repo holding only it, at `dest`
/// (written under a temporary name in `scratch`, then moved).
pub fn export_tar(
    repo: &Utf8Path,
    r: &str,
    commit: &str,
    scratch: &Utf8Path,
    dest: &Utf8Path,
) -> Result<()> {
    let export = scratch.join("export-repo");
    let _ = std::fs::remove_dir_all(&export);
    Command::new("ostree")
        .args(["init", "--mode=archive", "--repo", export.as_str()])
        .run()?;
    Command::new("ostree")
        .args([
            "pull-local",
            "--repo",
            export.as_str(),
            repo.as_str(),
            commit,
        ])
        .run()?;
    set_ref(&export, r, commit)?;
    let tmp = scratch.join("ostree.tar");
    Command::new("tar")
        .args([
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "-C",
            export.as_str(),
            "-cf",
            tmp.as_str(),
            ".",
        ])
        .run()?;
    std::fs::rename(&tmp, dest).with_context(|| format!("moving the export to {dest}"))?;
    std::fs::remove_dir_all(&export).with_context(|| format!("removing {export}"))?;
    Ok(())
}
