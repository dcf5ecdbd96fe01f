//! The build's OSTree commit: making sure `tmp/repo` has it, reading files from it,
//! and estimating how much disk its deployment takes.
//!
//! `tmp/repo` is a cache (a CI job that fetched a build from a store has none), so
//! when the commit is missing it is imported from the build's own `images.ostree`
//! artifact, an uncompressed tar of an archive-mode repository, and kept under the
//! ref `cosa/builds/<id>/<arch>` as compose does.

use std::collections::HashSet;
use std::io::Read;
use std::process::Command;

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};
use sha2::{Digest, Sha256};

use crate::cmd::CommandRunExt;
use crate::meta::Meta;
use crate::prune::build_ref;

/// Whether `repo` holds the complete commit `commit`.
pub fn has_commit(repo: &Utf8Path, commit: &str) -> bool {
    let (a, b) = commit.split_at(2.min(commit.len()));
    repo.join(format!("objects/{a}/{b}.commit")).is_file()
        && !repo.join(format!("state/{commit}.commitpartial")).exists()
}

/// A SHA-256 hex digest check (an OSTree checksum or an artifact digest).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// SHA-256 and length of a file.
pub fn sha256_file(path: &Utf8Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f
            .read(&mut buf)
            .with_context(|| format!("reading {path}"))?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// Make sure `repo` (the work directory's `tmp/repo`) has the build's commit,
/// importing it from the build's ostree tar when it does not. `scratch` is an empty
/// directory for the extraction.
pub fn ensure_commit(
    repo: &Utf8Path,
    meta: &Meta,
    arch: &str,
    arch_dir: &Utf8Path,
    scratch: &Utf8Path,
) -> Result<()> {
    let commit = &meta.ostree_commit;
    let id = &meta.buildid;
    if !is_sha256_hex(commit) {
        bail!("build {id}: ostree-commit {commit:?} in meta.json is not an OSTree checksum");
    }
    if !has_commit(repo, commit) {
        let Some(art) = meta.images.get("ostree") else {
            bail!(
                "build {id} ({arch}): commit {commit} is not in {repo} and meta.json has no \
                 images.ostree to import it from"
            );
        };
        let tar = arch_dir.join(&art.path);
        if !tar.is_file() {
            bail!(
                "build {id} ({arch}): commit {commit} is not in {repo} and {tar} (images.ostree) \
                 does not exist; fetch it with the build"
            );
        }
        if tar.as_str().ends_with(".ociarchive") {
            bail!(
                "{tar}: an OCI archive; cosa-image imports the commit from an ostree repo tar only"
            );
        }
        tracing::info!("importing commit {commit} from {tar}");
        let (sum, _) = sha256_file(&tar)?;
        if sum != art.sha256 {
            bail!(
                "{tar}: sha256 {sum} does not match meta.json images.ostree ({})",
                art.sha256
            );
        }
        std::fs::create_dir_all(scratch).with_context(|| format!("creating {scratch}"))?;
        Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(scratch)
            .run()
            .with_context(|| format!("extracting {tar}"))?;
        let src = find_repo_root(scratch)
            .with_context(|| format!("{tar}: no OSTree repository (config + objects/) in it"))?;
        if !has_commit(&src, commit) {
            bail!("{tar}: the repository in it does not hold commit {commit}");
        }
        if !repo.join("config").is_file() {
            std::fs::create_dir_all(repo).with_context(|| format!("creating {repo}"))?;
            Command::new("ostree")
                .arg(format!("--repo={repo}"))
                .args(["init", "--mode=archive"])
                .run()?;
        }
        Command::new("ostree")
            .arg(format!("--repo={repo}"))
            .arg("pull-local")
            .arg(&src)
            .arg(commit)
            .run()
            .with_context(|| format!("importing commit {commit} from {tar}"))?;
        std::fs::remove_dir_all(scratch).with_context(|| format!("removing {scratch}"))?;
    }
    // Keep compose's ref so that prune (and the next image) find it.
    let r = build_ref(id, arch);
    let cur = Command::new("ostree")
        .arg(format!("--repo={repo}"))
        .args(["rev-parse", &r])
        .run_get_string()
        .ok();
    if cur.as_deref().map(str::trim) != Some(commit.as_str()) {
        if cur.is_some() {
            Command::new("ostree")
                .arg(format!("--repo={repo}"))
                .args(["refs", "--delete", &r])
                .run()?;
        }
        Command::new("ostree")
            .arg(format!("--repo={repo}"))
            .args(["refs", &format!("--create={r}"), commit])
            .run()?;
    }
    Ok(())
}

fn find_repo_root(dir: &Utf8Path) -> Option<Utf8PathBuf> {
    let is_repo = |d: &Utf8Path| d.join("config").is_file() && d.join("objects").is_dir();
    if is_repo(dir) {
        return Some(dir.to_path_buf());
    }
    let rd = std::fs::read_dir(dir).ok()?;
    for ent in rd.flatten() {
        let p = Utf8PathBuf::from_path_buf(ent.path()).ok()?;
        if p.is_dir() && is_repo(&p) {
            return Some(p);
        }
    }
    None
}

/// A file of the commit, or `None` when it does not exist.
pub fn cat(repo: &Utf8Path, commit: &str, path: &str) -> Result<Option<Vec<u8>>> {
    let out = Command::new("ostree")
        .arg(format!("--repo={repo}"))
        .args(["cat", commit, path])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running ostree cat")?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file") || err.contains("not found") {
        return Ok(None);
    }
    bail!(
        "ostree --repo={repo} cat {commit} {path} failed ({}): {}",
        out.status,
        err.trim()
    )
}

/// What a commit's files add up to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeSize {
    /// Regular file bytes, each distinct content counted once (the deployment
    /// hard-links identical files to one repository object), rounded up to 4 KiB.
    pub file_bytes: u64,
    /// Bytes under /usr/etc (copied, not linked, into the deployment's /etc).
    pub etc_bytes: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// A file owned by someone other than root (path, uid, gid), if any.
    pub non_root_owner: Option<(String, u32, u32)>,
}

fn round4k(n: u64) -> u64 {
    n.div_ceil(4096) * 4096
}

/// Parse `ostree ls -R -C` output.
pub fn parse_ls(text: &str) -> Result<TreeSize> {
    let mut t = TreeSize::default();
    let mut seen = HashSet::new();
    for line in text.lines() {
        let kind = line.chars().next().unwrap_or(' ');
        let n = if kind == 'd' { 6 } else { 5 };
        if line.trim().is_empty() {
            continue;
        }
        // Columns are padded with spaces; the path (last) may itself contain spaces.
        let mut f: Vec<&str> = Vec::with_capacity(n + 1);
        let mut rest = line;
        for _ in 0..n {
            let r = rest.trim_start();
            let end = r.find(char::is_whitespace).unwrap_or(r.len());
            f.push(&r[..end]);
            rest = &r[end..];
        }
        f.push(rest.trim_start());
        if f.iter().any(|x| x.is_empty()) {
            bail!("unexpected `ostree ls` line: {line:?}");
        }
        let uid: u32 = f[1]
            .parse()
            .with_context(|| format!("`ostree ls` line {line:?}"))?;
        let gid: u32 = f[2]
            .parse()
            .with_context(|| format!("`ostree ls` line {line:?}"))?;
        let path = f[n];
        if (uid != 0 || gid != 0) && t.non_root_owner.is_none() {
            t.non_root_owner = Some((path.to_string(), uid, gid));
        }
        match kind {
            'd' => t.dirs += 1,
            'l' => t.symlinks += 1,
            '-' => {
                let size: u64 = f[3]
                    .parse()
                    .with_context(|| format!("`ostree ls` line {line:?}"))?;
                if path.starts_with("/usr/etc/") {
                    t.etc_bytes += round4k(size);
                }
                if seen.insert(f[4].to_string()) {
                    t.files += 1;
                    t.file_bytes += round4k(size);
                }
            }
            _ => bail!("unexpected `ostree ls` line: {line:?}"),
        }
    }
    Ok(t)
}

/// Sizes of a commit's tree.
pub fn tree_size(repo: &Utf8Path, commit: &str) -> Result<TreeSize> {
    let out = Command::new("ostree")
        .arg(format!("--repo={repo}"))
        .args(["ls", "-R", "-C", commit])
        .run_get_string()?;
    parse_ls(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_parsing_counts_distinct_content_once() {
        let text = "\
d00755 0 0      0 aa bb /
l00777 0 0      0 cc /bin -> usr/bin
-00644 0 0   5000 dd /usr/a
-00644 0 0   5000 dd /usr/b copy
-00644 0 0     10 ee /usr/etc/x
-00644 1000 0  1 ff /home/u
";
        let t = parse_ls(text).unwrap();
        assert_eq!(t.dirs, 1);
        assert_eq!(t.symlinks, 1);
        assert_eq!(t.files, 3);
        assert_eq!(t.file_bytes, 8192 + 4096 + 4096);
        assert_eq!(t.etc_bytes, 4096);
        assert_eq!(t.non_root_owner, Some(("/home/u".into(), 1000, 0)));
        assert!(parse_ls("?bogus\n").is_err());
    }
}
