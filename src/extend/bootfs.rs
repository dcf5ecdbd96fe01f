//! Reading and rewriting files of an ext4 filesystem image without mounting it, with
//! e2fsprogs' `debugfs` (`-w` to write).
//!
//! debugfs exits 0 even when one of its commands fails; it reports the failure on
//! stderr. So every run here treats any stderr line but debugfs's version banner as
//! an error, and every write is read back and compared before it is trusted.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use camino::Utf8Path;

use crate::cmd::describe;

/// Names we pass to debugfs unquoted-safe: the file and directory names of BLS
/// entries and GRUB's config.
fn check_name(s: &str) -> Result<()> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '@' | '/'))
    {
        bail!("{s:?}: not a name this tool edits with debugfs (letters, digits, . - _ + @ /)");
    }
    Ok(())
}

/// A local path inside a debugfs command (double-quoted; debugfs has no escapes).
fn quoted_local(p: &Utf8Path) -> Result<String> {
    if p.as_str().contains(['"', '\n', '\r']) {
        bail!("{p}: a path debugfs cannot be given (quote or line break)");
    }
    Ok(format!("\"{p}\""))
}

/// Run debugfs; returns stdout. `script` goes to a command file (`-f`).
fn debugfs(img: &Utf8Path, write: bool, request: Request<'_>) -> Result<Vec<u8>> {
    let mut c = Command::new("debugfs");
    if write {
        c.arg("-w");
    }
    match request {
        Request::One(r) => {
            c.arg("-R").arg(r);
        }
        Request::File(f) => {
            c.arg("-f").arg(f);
        }
    }
    c.arg(img);
    let desc = describe(&c);
    tracing::debug!("exec: {desc}");
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {desc}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !problems.is_empty() {
        bail!(
            "{desc} failed ({}): {}",
            out.status,
            crate::cmd::tail(problems.join("\n").as_bytes())
        );
    }
    Ok(out.stdout)
}

enum Request<'a> {
    One(&'a str),
    File(&'a Utf8Path),
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    /// The inode mode (type and permission bits, octal as debugfs prints it).
    pub mode: u32,
}

impl DirEntry {
    pub fn is_file(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

/// List a directory (`ls -p`: `/inode/mode/uid/gid/name/size/`).
pub fn list_dir(img: &Utf8Path, dir: &str) -> Result<Vec<DirEntry>> {
    check_name(dir)?;
    let out = debugfs(img, false, Request::One(&format!("ls -p {dir}")))?;
    parse_ls_p(&String::from_utf8_lossy(&out))
}

fn parse_ls_p(text: &str) -> Result<Vec<DirEntry>> {
    let mut v = Vec::new();
    for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = l.split('/').collect();
        // "", inode, mode, uid, gid, name, size, ""
        if f.len() < 7 {
            bail!("unexpected debugfs ls -p line {l:?}");
        }
        let mode = u32::from_str_radix(f[2], 8)
            .with_context(|| format!("unexpected debugfs ls -p line {l:?}"))?;
        let name = f[5].to_string();
        if name == "." || name == ".." {
            continue;
        }
        v.push(DirEntry { name, mode });
    }
    Ok(v)
}

/// A file's contents.
pub fn cat(img: &Utf8Path, path: &str) -> Result<Vec<u8>> {
    check_name(path)?;
    debugfs(img, false, Request::One(&format!("cat {path}")))
}

/// A file to put on the filesystem, replacing the one there.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    /// The directory on the filesystem (`/loader/entries`).
    pub dir: &'a str,
    pub name: &'a str,
    pub contents: &'a [u8],
}

/// Replace files (each must exist) in one `debugfs -w` run, then read them back.
/// `scratch` is a directory for the new contents (mode 0644 files, which debugfs
/// copies as the mode; owner and group are 0).
pub fn replace_files(img: &Utf8Path, files: &[NewFile<'_>], scratch: &Utf8Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut script = String::new();
    for (i, f) in files.iter().enumerate() {
        check_name(f.dir)?;
        check_name(f.name)?;
        if f.name.contains('/') {
            bail!("{}: a file name, not a path", f.name);
        }
        let local = scratch.join(format!("new-{i}"));
        std::fs::write(&local, f.contents).with_context(|| format!("writing {local}"))?;
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting permissions of {local}"))?;
        script.push_str(&format!(
            "cd {}\nrm {}\nwrite {} {}\n",
            f.dir,
            f.name,
            quoted_local(&local)?,
            f.name
        ));
    }
    let cmds = scratch.join("debugfs-commands");
    std::fs::write(&cmds, &script).with_context(|| format!("writing {cmds}"))?;
    debugfs(img, true, Request::File(&cmds))
        .with_context(|| format!("rewriting files of the filesystem image {img}"))?;
    for f in files {
        let path = format!("{}/{}", f.dir.trim_end_matches('/'), f.name);
        let back = cat(img, &path)?;
        if back != f.contents {
            bail!("{img}: {path} reads back different from what was written");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_p_lines() {
        let v = parse_ls_p(
            "/579/040755/0/0/.//\n/578/040755/0/0/..//\n/580/100644/0/0/ostree-1-e.conf/508/\n\n",
        )
        .unwrap();
        assert_eq!(
            v,
            [DirEntry {
                name: "ostree-1-e.conf".into(),
                mode: 0o100644
            }]
        );
        assert!(v[0].is_file());
        assert!(parse_ls_p("garbage\n").is_err());
    }

    #[test]
    fn names_checked() {
        assert!(check_name("/loader/entries").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("x;rm").is_err());
        assert!(quoted_local(Utf8Path::new("/a \"b")).is_err());
    }

    /// A real ext4 image edited and read back (needs mkfs.ext4 and debugfs).
    #[test]
    fn edit_an_ext4_image() -> Result<()> {
        if !crate::cmd::have("debugfs") || !crate::cmd::have("mkfs.ext4") {
            eprintln!("notice: e2fsprogs missing; skipped");
            return Ok(());
        }
        let td = tempfile::tempdir()?;
        let d = Utf8Path::from_path(td.path()).context("utf8")?;
        let src = d.join("src");
        std::fs::create_dir_all(src.join("loader.1/entries"))?;
        std::os::unix::fs::symlink("loader.1", src.join("loader"))?;
        std::fs::write(src.join("loader.1/entries/a.conf"), "old\n")?;
        let img = d.join("fs.img");
        let o = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&src)
            .arg(&img)
            .arg("8M")
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ls = list_dir(&img, "/loader/entries")?;
        assert_eq!(ls.len(), 1);
        assert_eq!(cat(&img, "/loader/entries/a.conf")?, b"old\n");
        let scratch = d.join("s");
        std::fs::create_dir(&scratch)?;
        replace_files(
            &img,
            &[NewFile {
                dir: "/loader/entries",
                name: "a.conf",
                contents: b"new contents\n",
            }],
            &scratch,
        )?;
        assert_eq!(cat(&img, "/loader/entries/a.conf")?, b"new contents\n");
        // A missing file is an error, not a silent success.
        let e = replace_files(
            &img,
            &[NewFile {
                dir: "/loader/entries",
                name: "missing.conf",
                contents: b"x",
            }],
            &scratch,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("File not found"), "{e:#}");
        assert!(cat(&img, "/nope").is_err());
        let o = Command::new("e2fsck").arg("-fn").arg(&img).output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
        Ok(())
    }
}
