//! Treefile edits of the installed tree, in rpm-ostree's order: `add-files`, then
//! `remove-from-packages` and `remove-files`, then the `postprocess` scripts (already
//! ordered across includes by the treefile loader) and `postprocess-script` last. Scripts
//! run inside the tree, isolated from the host and the network (`tree::run_in_tree`).

use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use regex::Regex;

use super::tree::{run_in_tree, shell_quote};
use crate::cmd::CommandRunExt;
use crate::treefile::Treefile;

/// `root` joined with a tree path given as absolute or relative, refusing `..`.
fn in_tree(root: &Utf8Path, path: &str) -> Result<Utf8PathBuf> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        bail!("path {path:?} must name a file inside the tree, without '.' or '..'");
    }
    Ok(root.join(rel))
}

/// Write a file into the tree, creating its directory.
pub fn write_into_tree(root: &Utf8Path, path: &str, contents: &[u8]) -> Result<()> {
    let p = in_tree(root, path)?;
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
    }
    std::fs::write(&p, contents).with_context(|| format!("writing {path} into the tree"))
}

pub fn apply(root: &Utf8Path, tf: &Treefile) -> Result<()> {
    for af in &tf.add_files {
        let dest = in_tree(root, &af.dest)?;
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {d}"))?;
        }
        std::fs::copy(&af.src_path, &dest)
            .with_context(|| format!("add-files: copying {} to {}", af.src, af.dest))?;
    }
    for rfp in &tf.remove_from_packages {
        remove_from_package(root, &rfp.package, &rfp.patterns)?;
    }
    for path in &tf.remove_files {
        let p = in_tree(root, path)?;
        let md = match std::fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(_) => {
                tracing::warn!("remove-files: {path} is not in the tree");
                continue;
            }
        };
        let r = if md.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.with_context(|| format!("remove-files: removing {path}"))?;
    }
    for (i, script) in tf.postprocess.iter().enumerate() {
        run_script(root, script, &format!("postprocess script {}", i + 1))?;
    }
    if let Some(ext) = &tf.postprocess_script {
        let text = std::fs::read_to_string(&ext.path)
            .with_context(|| format!("postprocess-script: reading {}", ext.path))?;
        run_script(root, &text, &format!("postprocess-script {}", ext.name))?;
    }
    Ok(())
}

/// Run a script in the tree: written to a file in it, executed by its own shebang or
/// by /bin/sh, then removed.
fn run_script(root: &Utf8Path, text: &str, what: &str) -> Result<()> {
    let name = ".cosa-postprocess";
    let path = root.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {what} into the tree"))?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .with_context(|| format!("making {what} executable"))?;
    let invoke = if text.starts_with("#!") {
        format!("/{name}")
    } else {
        format!("/bin/sh -e /{name}")
    };
    let r = run_in_tree(root, &invoke, what);
    let _ = std::fs::remove_file(&path);
    r
}

/// Delete the files of `package` whose paths match any of `patterns`.
fn remove_from_package(root: &Utf8Path, package: &str, patterns: &[String]) -> Result<()> {
    let res: Vec<Regex> = patterns
        .iter()
        .map(|p| {
            Regex::new(p)
                .with_context(|| format!("remove-from-packages: {package}: bad pattern {p:?}"))
        })
        .collect::<Result<_>>()?;
    let out = Command::new("rpm")
        .args([
            "--root",
            root.as_str(),
            "--dbpath",
            super::dnf::RPMDB,
            "-ql",
            package,
        ])
        .run_get_string()
        .with_context(|| format!("remove-from-packages: listing the files of {package}"))?;
    let mut removed = 0;
    for f in out.lines().filter(|l| l.starts_with('/')) {
        if !res.iter().any(|r| r.is_match(f)) {
            continue;
        }
        let p = in_tree(root, f)?;
        if std::fs::symlink_metadata(&p).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&p)
                .with_context(|| format!("remove-from-packages: removing {f}"))?;
            removed += 1;
        }
    }
    tracing::debug!("remove-from-packages: {removed} files of {package} removed");
    let _ = shell_quote;
    Ok(())
}
