//! The rpm-ostree backend: where `rpm-ostree` is installed (Fedora, CentOS Stream,
//! RHEL hosts), `rpm-ostree compose tree --unified-core` does the compose and its
//! change detection (`rpmostree.inputhash` against the previous commit); cosa records
//! the result as a build exactly as for the dnf backend. rpm-ostree reads the treefile
//! itself, so every rpm-ostree key works here, including those the dnf backend refuses.

use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use serde_json::{Map, Value, json};

use super::{Args, Composed, record};
use crate::cmd::CommandRunExt;
use crate::names::host_arch;
use crate::workdir::Workdir;

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Compose with rpm-ostree.
pub fn compose(wd: &Workdir, args: &Args, tf_path: &Utf8Path) -> Result<Composed> {
    let arch = host_arch();
    // The flattened treefile, as rpm-ostree resolves it.
    let flat: Value = serde_json::from_str(
        &Command::new("rpm-ostree")
            .args(["compose", "tree", "--print-only", tf_path.as_str()])
            .run_get_string()?,
    )
    .context("rpm-ostree compose tree --print-only: output is not JSON")?;
    if args.print_only {
        println!("{}", serde_json::to_string_pretty(&flat)?);
        return Ok(Composed::DryRun(Vec::new()));
    }
    let Some(oref) = str_field(&flat, "ref").map(str::to_string) else {
        bail!("{tf_path}: no ref");
    };
    let name = flat
        .get("metadata")
        .and_then(|m| str_field(m, "name"))
        .map(str::to_string)
        .unwrap_or_else(|| oref.split('/').next().unwrap_or("os").to_string());
    let tf_dir = tf_path.parent().unwrap_or(Utf8Path::new("."));
    let image_json = super::image_json(tf_dir)?;

    let super::Start { lock, prev, .. } = super::start(wd, arch)?;
    let prev_id = prev.as_ref().map(|m| m.buildid.clone());
    let now = chrono::Utc::now();
    let version = super::next_version(
        args,
        tf_path,
        str_field(&flat, "automatic-version-prefix"),
        str_field(&flat, "automatic-version-suffix"),
        prev.as_ref(),
        now,
    )?;

    let repo = wd.repo_dir();
    super::commit::ensure_repo(&repo)?;
    let (_scratch_td, scratch) = super::scratch_dir(wd)?;
    let cachedir = wd.cache_dir().join("rpm-ostree");
    std::fs::create_dir_all(&cachedir).with_context(|| format!("creating {cachedir}"))?;
    let (composejson, stamp, lockout) = (
        scratch.join("compose.json"),
        scratch.join("changed"),
        scratch.join("lockfile.json"),
    );
    let mut cmd = Command::new("rpm-ostree");
    cmd.args(["compose", "tree", "--unified-core"])
        .arg(format!("--repo={repo}"))
        .arg(format!("--cachedir={cachedir}"))
        .arg(format!("--write-composejson-to={composejson}"))
        .arg(format!("--touch-if-changed={stamp}"))
        .arg(format!("--ex-write-lockfile-to={lockout}"))
        .arg(format!("--add-metadata-string=version={version}"));
    // The previous build's commit, when the repo still has it (it is a cache): rpm-ostree
    // compares its inputhash; otherwise the recorded inputhash does the same.
    let prev_in_repo = prev.as_ref().filter(|m| {
        Command::new("ostree")
            .args(["rev-parse", "--repo", repo.as_str(), &m.ostree_commit])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if let Some(m) = prev_in_repo {
        cmd.arg(format!("--previous-commit={}", m.ostree_commit));
    } else if let Some(h) = prev.as_ref().and_then(|m| m.inputhash.as_deref()) {
        cmd.arg(format!("--previous-inputhash={h}"));
    }
    if args.force {
        cmd.arg("--force-nocache");
    }
    if args.dry_run {
        cmd.arg("--dry-run");
    }
    cmd.arg(tf_path.as_str());
    // Its progress goes to our stderr: our stdout carries only the changed=/build= lines.
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    cmd.run_inherited()?;
    if args.dry_run {
        return Ok(Composed::DryRun(Vec::new()));
    }
    if !stamp.exists() {
        return Ok(match prev_id {
            Some(id) => Composed::Unchanged { id },
            None => bail!("rpm-ostree made no commit and there is no previous build"),
        });
    }
    let cj: Value = crate::parse::read_json(&composejson)?;
    let Some(commit) = str_field(&cj, "ostree-commit").map(str::to_string) else {
        bail!("{composejson}: no ostree-commit");
    };
    let inputhash = str_field(&cj, "rpm-ostree-inputhash")
        .unwrap_or_default()
        .to_string();
    super::commit::set_ref(&repo, &crate::prune::build_ref(&version, arch), &commit)?;
    let content = match str_field(&cj, "ostree-content-checksum") {
        Some(c) => Some(c.to_string()),
        None => super::commit::content_checksum(&repo, &commit)?,
    };
    let timestamp = str_field(&cj, "ostree-timestamp")
        .map(str::to_string)
        .unwrap_or_else(|| now.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let pkgdiff = match prev_in_repo {
        Some(m) => {
            let out = Command::new("rpm-ostree")
                .args([
                    "db",
                    "diff",
                    "--format=json",
                    &format!("--repo={repo}"),
                    &m.ostree_commit,
                    &commit,
                ])
                .run_get_string()?;
            let v: Value =
                serde_json::from_str(&out).context("rpm-ostree db diff: output is not JSON")?;
            v.get("pkgdiff").and_then(Value::as_array).cloned()
        }
        None => None,
    };
    let lockfile: Value = if lockout.exists() {
        crate::parse::read_json(&lockout)?
    } else {
        json!({"packages": {}})
    };
    let mut md = Map::new();
    md.insert("version".into(), json!(version));
    md.insert("rpmostree.inputhash".into(), json!(inputhash));
    record::record(
        wd,
        &lock,
        &scratch,
        record::NewBuild {
            name,
            version: version.clone(),
            arch,
            ostree_ref: oref,
            commit: commit.clone(),
            content_checksum: content,
            timestamp,
            inputhash,
            commitmeta: md,
            lockfile,
            pkgdiff,
            summary: flat
                .get("metadata")
                .and_then(|m| str_field(m, "summary"))
                .map(str::to_string),
            git: super::config_git(tf_dir),
            image_json,
        },
    )?;
    if !args.no_prune && args.keep_last_n > 0 {
        crate::prune::prune(wd, &lock, args.keep_last_n)?;
    }
    Ok(Composed::Built {
        id: version,
        commit,
    })
}
