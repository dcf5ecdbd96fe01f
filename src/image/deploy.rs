//! Deploying the commit into a staging sysroot, with `ostree admin`, no mounts.
//!
//! `ostree admin init-fs`, `os-init`, `pull-local` and `deploy` run against a plain
//! directory (`--sysroot`), as root or inside `unshare -r` (see [`super::privilege`]).
//! The result is the future root filesystem: `ostree/repo` (bare mode, the deployment's
//! files are hard links into it), `ostree/deploy/<os>/deploy/<commit>.0/` and
//! `boot/` with the BLS entry, kernel and initramfs, which [`split_boot`] moves out
//! to become the boot filesystem.

use anyhow::{Context, Result, bail};
use camino::{Utf8Path, Utf8PathBuf};

use super::privilege::AsRoot;

/// What to deploy and how.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// The stateroot (coreos-assembler uses the build's `name`).
    pub osname: String,
    pub commit: String,
    /// The ref the deployment's origin follows (`remote:ref` with `ostree-remote`);
    /// `None` deploys the bare checksum.
    pub refspec: Option<String>,
    pub kargs: Vec<String>,
    /// The repository holding the commit (`tmp/repo`).
    pub source_repo: Utf8PathBuf,
}

/// A staging sysroot with one deployment.
#[derive(Debug, Clone)]
pub struct Deployed {
    pub sysroot: Utf8PathBuf,
    /// `ostree/deploy/<os>/deploy/<commit>.0` inside it.
    pub deployment: Utf8PathBuf,
}

/// A valid OSTree stateroot name.
pub fn validate_osname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("{name:?} cannot be an OSTree stateroot name (letters, digits, '-', '_', '.')");
    }
    Ok(())
}

/// The `ostree admin` sequence, as argument vectors.
pub fn steps(sysroot: &Utf8Path, o: &DeployOptions) -> Vec<Vec<String>> {
    let s = sysroot.as_str();
    let repo = format!("--repo={s}/ostree/repo");
    let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut out = vec![
        v(&["ostree", "admin", "init-fs", s]),
        v(&[
            "ostree",
            "admin",
            "os-init",
            &format!("--sysroot={s}"),
            &o.osname,
        ]),
        // No bootloader integration: we write grub.cfg ourselves from the BLS entries.
        v(&[
            "ostree",
            "config",
            &repo,
            "set",
            "sysroot.bootloader",
            "none",
        ]),
        // CoreOS mounts /sysroot read-only.
        v(&["ostree", "config", &repo, "set", "sysroot.readonly", "true"]),
        // The staging repo is thrown away once copied into the image (which is synced):
        // fsync per object only costs time. Unset again after the deployment, below.
        v(&["ostree", "config", &repo, "set", "core.fsync", "false"]),
        v(&[
            "ostree",
            &repo,
            "pull-local",
            o.source_repo.as_str(),
            &o.commit,
        ]),
    ];
    let target = match &o.refspec {
        Some(r) => {
            out.push(v(&[
                "ostree",
                &repo,
                "refs",
                &format!("--create={r}"),
                &o.commit,
            ]));
            r.clone()
        }
        None => o.commit.clone(),
    };
    let mut d = v(&[
        "ostree",
        "admin",
        "deploy",
        &format!("--sysroot={s}"),
        &format!("--os={}", o.osname),
    ]);
    for k in &o.kargs {
        d.push(format!("--karg={k}"));
    }
    d.push(target);
    out.push(d);
    out.push(v(&["ostree", "config", &repo, "unset", "core.fsync"]));
    out
}

/// Deploy into `sysroot` (an empty or missing directory).
pub fn deploy(asroot: AsRoot, sysroot: &Utf8Path, o: &DeployOptions) -> Result<Deployed> {
    validate_osname(&o.osname)?;
    std::fs::create_dir_all(sysroot).with_context(|| format!("creating {sysroot}"))?;
    asroot
        .run_steps(&steps(sysroot, o))
        .with_context(|| format!("deploying commit {} into {sysroot}", o.commit))?;
    let deployment = sysroot.join(format!("ostree/deploy/{}/deploy/{}.0", o.osname, o.commit));
    if !deployment.is_dir() {
        bail!("ostree admin deploy made no deployment at {deployment}");
    }
    Ok(Deployed {
        sysroot: sysroot.to_path_buf(),
        deployment,
    })
}

/// Move the contents of `<sysroot>/boot` into `boot_dir` (renames, no copies), leaving
/// `/boot` an empty mount point in the root filesystem.
pub fn split_boot(sysroot: &Utf8Path, boot_dir: &Utf8Path) -> Result<()> {
    let src = sysroot.join("boot");
    std::fs::create_dir_all(boot_dir).with_context(|| format!("creating {boot_dir}"))?;
    let rd = std::fs::read_dir(&src).with_context(|| format!("listing {src}"))?;
    for ent in rd {
        let ent = ent.with_context(|| format!("listing {src}"))?;
        let name = ent.file_name();
        let to = boot_dir.as_std_path().join(&name);
        std::fs::rename(ent.path(), &to)
            .with_context(|| format!("moving {} to {boot_dir}", ent.path().display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_steps() {
        let o = DeployOptions {
            osname: "example-os".into(),
            commit: "c".repeat(64),
            refspec: Some("fedora:x/y".into()),
            kargs: vec!["rw".into(), "root=UUID=u".into()],
            source_repo: "/w/tmp/repo".into(),
        };
        let s = steps(Utf8Path::new("/s"), &o);
        assert_eq!(s[0], ["ostree", "admin", "init-fs", "/s"]);
        let deploy = &s[s.len() - 2];
        assert_eq!(deploy[deploy.len() - 1], "fedora:x/y");
        assert_eq!(s.last().unwrap()[3..], ["unset", "core.fsync"]);
        assert!(deploy.contains(&"--karg=root=UUID=u".to_string()));
        assert!(validate_osname("a/b").is_err());
        assert!(validate_osname("fedora-coreos").is_ok());
    }
}
