//! cosa-compose on the example OS, its repo served over loopback HTTP.

use std::process::Command;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;
use serde_json::Value;

use crate::common::{Run, TestWorkdir, bin, run};
use crate::example;
use crate::http::Server;

/// A work directory for the example OS, its repo published in a served directory.
struct Fixture {
    t: TestWorkdir,
    served: Utf8PathBuf,
    server: Server,
}

impl Fixture {
    fn new() -> Result<Self> {
        let t = TestWorkdir::new()?;
        let served = t.root().join("served");
        example::publish(&example::repo(&[])?, &served)?;
        let server = Server::start(served.clone())?;
        example::init_workdir(t.root(), &server.url)?;
        Ok(Self { t, served, server })
    }

    fn compose(&self, args: &[&str]) -> Result<Run> {
        run(bin("cosa-compose")
            .arg("--workdir")
            .arg(self.t.root().as_str())
            .args(args))
    }

    fn compose_ok(&self, args: &[&str]) -> Result<Run> {
        let r = self.compose(args)?;
        anyhow::ensure!(r.code == 0, "cosa-compose {args:?} failed:\n{}", r.stderr);
        Ok(r)
    }

    fn builds(&self) -> Result<Vec<String>> {
        Ok(self
            .t
            .wd
            .read_builds()?
            .builds
            .into_iter()
            .map(|b| b.id)
            .collect())
    }

    fn latest_meta(&self) -> Result<Value> {
        let id = self.t.wd.latest_id()?.context("no latest")?;
        Ok(serde_json::from_slice(&std::fs::read(
            self.t.wd.meta_path(&id, "x86_64")?,
        )?)?)
    }

    fn config(&self, name: &str) -> Utf8PathBuf {
        self.t.wd.config_dir().join(name)
    }

    /// `ostree cat` from the latest build's commit.
    fn cat(&self, path: &str) -> Result<String> {
        let m = self.latest_meta()?;
        let c = m["ostree-commit"].as_str().context("commit")?;
        let o = Command::new("ostree")
            .args(["cat", "--repo", self.t.wd.repo_dir().as_str(), c, path])
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "ostree cat {path}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8(o.stdout)?)
    }

    /// Names (not necessarily builds) in builds/, to check nothing partial was left.
    fn builds_dir_listing(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = std::fs::read_dir(self.t.wd.builds_dir())?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        v.sort();
        Ok(v)
    }
}

fn today() -> String {
    chrono::Utc::now().format("%Y%m%d").to_string()
}

#[test]
fn compose_then_no_change_then_bump_then_force() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.compose_ok(&[])?;
    let v0 = format!("1.{}.0", today());
    assert_eq!(r.stdout, format!("changed=true\nbuild={v0}\n"));
    assert_eq!(f.builds()?, std::slice::from_ref(&v0));
    let meta = f.latest_meta()?;
    assert_eq!(crate::schema::schema_errors(&meta)?, Vec::<String>::new());
    assert_eq!(meta["name"], "example-os");
    assert_eq!(meta["ref"], "example-os/x86_64/stable");
    assert!(
        meta["coreos-assembler.config-gitrev"]
            .as_str()
            .is_some_and(|s| s.len() == 40)
    );
    // The ostree artifact is the archive repo tar, registered with its sha256.
    let art = &meta["images"]["ostree"];
    let tar =
        f.t.wd
            .build_arch_dir(&v0, "x86_64")?
            .join(art["path"].as_str().context("path")?);
    assert_eq!(art["path"], format!("example-os-{v0}-ostree.x86_64.tar"));
    assert_eq!(
        cosa::fsutil::sha256_file(&tar)?.0,
        art["sha256"].as_str().context("sha")?
    );
    let listing = Command::new("tar").args(["-tf", tar.as_str()]).output()?;
    assert!(
        String::from_utf8(listing.stdout)?
            .lines()
            .any(|l| l == "./config"),
        "not a repo tar"
    );

    // The commit's content.
    assert!(
        f.cat("/usr/lib/os-release")?
            .contains(&format!("VERSION=\"{v0}\""))
    );
    assert!(
        f.cat("/usr/share/example/postprocessed")?
            .contains("manifest.yaml")
    );
    assert!(
        f.cat("/usr/share/example/common-postprocessed")?
            .contains("common.yaml")
    );
    assert!(!f.cat("/usr/share/example/added.txt")?.is_empty());
    assert!(
        !f.cat("/usr/share/example/postinstall-ran")?.is_empty(),
        "%post did not run"
    );
    assert!(
        f.cat("/usr/share/rpm-ostree/treefile.json")?
            .contains("example-os/x86_64/stable")
    );
    assert!(
        f.cat("/usr/share/coreos-assembler/image.json")?
            .contains("console=ttyS0")
    );
    assert!(
        f.cat("/usr/lib/tmpfiles.d/cosa-autovar.conf")?
            .contains("d /var/roothome")
    );
    let etc = Command::new("ostree")
        .args([
            "ls",
            "--repo",
            f.t.wd.repo_dir().as_str(),
            meta["ostree-commit"].as_str().context("c")?,
            "/usr/etc",
            "/usr/lib/modules",
        ])
        .output()?;
    let etc = String::from_utf8(etc.stdout)?;
    assert!(etc.contains("/usr/etc/os-release"), "{etc}");
    let commitmeta: Value = serde_json::from_slice(&std::fs::read(
        f.t.wd
            .build_arch_dir(&v0, "x86_64")?
            .join("commitmeta.json"),
    )?)?;
    assert_eq!(
        commitmeta["example.config"], "example-os",
        "add-commit-metadata"
    );
    assert!(
        commitmeta["rpmostree.rpmdb.pkglist"]
            .as_array()
            .is_some_and(|a| a.len() == 7),
        "{commitmeta}"
    );
    let lock: Value = serde_json::from_slice(&std::fs::read(
        f.t.wd
            .build_arch_dir(&v0, "x86_64")?
            .join("manifest-lock.generated.x86_64.json"),
    )?)?;
    assert_eq!(
        lock["packages"]["example-hello"]["evra"],
        "1.0-1.x86_64".replace("x86_64", "noarch")
    );

    // Nothing changed: a no-op that fetches only repomd.xml, no package.
    f.server.clear();
    let r = f.compose_ok(&[])?;
    assert_eq!(r.stdout, format!("changed=false\nbuild={v0}\n"));
    assert!(
        r.stderr.contains(&format!("No changes since build {v0}")),
        "{}",
        r.stderr
    );
    let reqs = f.server.requests();
    assert_eq!(
        reqs,
        ["/repodata/repomd.xml"],
        "a no-change compose downloaded more than repomd.xml"
    );
    assert_eq!(f.builds()?, std::slice::from_ref(&v0));

    // One package's release bumped: a new build, the next version, a package diff.
    example::publish(&example::repo(&["example-hello=2"])?, &f.served)?;
    f.server.clear();
    let r = f.compose_ok(&[])?;
    let v1 = format!("1.{}.1", today());
    assert_eq!(r.stdout, format!("changed=true\nbuild={v1}\n"));
    assert_eq!(f.builds()?, [v1.clone(), v0.clone()]);
    assert_eq!(f.t.wd.latest_id()?.as_deref(), Some(v1.as_str()));
    let meta = f.latest_meta()?;
    assert_eq!(crate::schema::schema_errors(&meta)?, Vec::<String>::new());
    assert_eq!(
        meta["pkgdiff"],
        serde_json::json!([["example-hello", 2, {
            "PreviousPackage": ["example-hello", "1.0-1", "noarch"],
            "NewPackage": ["example-hello", "1.0-2", "noarch"]}]])
    );
    // Only the changed package was downloaded (the rest are in the dnf cache).
    let rpms: Vec<_> = f
        .server
        .requests()
        .into_iter()
        .filter(|r| r.ends_with(".rpm"))
        .collect();
    assert_eq!(rpms.len(), 1, "{rpms:?}");
    assert!(rpms[0].contains("example-hello-1.0-2"), "{rpms:?}");

    // --force builds even though nothing changed.
    let r = f.compose_ok(&["--force"])?;
    let v2 = format!("1.{}.2", today());
    assert_eq!(r.stdout, format!("changed=true\nbuild={v2}\n"));

    // A manifest edit is a change too.
    let mut m = std::fs::read_to_string(f.config("manifest.yaml"))?;
    m.push_str("\nunits: []\ndefault-target: multi-user.target\n");
    std::fs::write(
        f.config("manifest.yaml"),
        m.replace("default-target: multi-user.target\n", ""),
    )?;
    let m = std::fs::read_to_string(f.config("manifest.yaml"))?;
    std::fs::write(
        f.config("manifest.yaml"),
        m.replace("documentation: false", "documentation: true"),
    )?;
    let r = f.compose_ok(&[])?;
    assert!(r.stdout.starts_with("changed=true"), "{}", r.stdout);
    // Pruning kept the newest three.
    assert_eq!(f.builds()?.len(), 3);
    assert!(
        !f.t.wd.build_dir(&v0)?.exists(),
        "pruned build directory left behind"
    );
    Ok(())
}

#[test]
fn dry_run_and_print_only() -> Result<()> {
    let f = Fixture::new()?;
    let r = f.compose_ok(&["--dry-run"])?;
    let lines: Vec<_> = r.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("example-data-1.0-1.noarch")),
        "{}",
        r.stdout
    );
    assert_eq!(lines.len(), 7, "{}", r.stdout);
    assert!(f.builds()?.is_empty(), "--dry-run made a build");
    let r = f.compose_ok(&["--print-only"])?;
    let v: Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(v["ref"], "example-os/x86_64/stable");
    let pkgs = v["packages"].as_array().context("packages")?;
    // include: common.yaml's packages come first.
    assert_eq!(pkgs[0], "example-hello");
    Ok(())
}

#[test]
fn bad_treefiles_give_one_line_and_no_build() -> Result<()> {
    let f = Fixture::new()?;
    f.compose_ok(&[])?;
    let before = f.builds_dir_listing()?;
    let manifest = std::fs::read_to_string(f.config("manifest.yaml"))?;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "syntax",
            manifest.replace("releasever: 1", "releasever: [1"),
            "manifest.yaml:",
        ),
        (
            "unknown key",
            format!("{manifest}\nbogus-key: 1\n"),
            "bogus-key",
        ),
        (
            "include cycle",
            manifest.replace("include: common.yaml", "include: manifest.yaml"),
            "manifest.yaml",
        ),
        (
            "missing add-files source",
            manifest.replace("example-added.txt", "no-such-file.txt"),
            "no-such-file.txt",
        ),
        (
            "unknown package",
            manifest.replace("  - example-postinstall", "  - no-such-package"),
            "no-such-package",
        ),
        (
            "unknown repo",
            manifest.replace("  - example\n", "  - nowhere\n"),
            "nowhere",
        ),
    ];
    for (what, text, needle) in cases {
        std::fs::write(f.config("manifest.yaml"), &text)?;
        let r = f.compose(&["--force"])?;
        assert_eq!(r.code, 1, "{what}: {}", r.stderr);
        let line = r.error_line();
        assert!(line.contains(needle), "{what}: {line}");
        assert_eq!(f.builds_dir_listing()?, before, "{what}: builds/ changed");
    }
    // An unreachable repository.
    std::fs::write(f.config("manifest.yaml"), &manifest)?;
    let repo = std::fs::read_to_string(f.config("example.repo"))?;
    std::fs::write(
        f.config("example.repo"),
        repo.replace(&f.server.url, "http://127.0.0.1:9"),
    )?;
    let r = f.compose(&["--force"])?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("127.0.0.1:9"), "{}", r.stderr);
    assert_eq!(f.builds_dir_listing()?, before);
    // Nothing left in tmp/ either.
    let leftovers: Vec<_> = std::fs::read_dir(f.t.wd.tmp_dir())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cosa-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

#[test]
fn rootless_compose() -> Result<()> {
    let user = crate::common::unprivileged_user()?;
    let td = crate::common::dir_for_user(user)?;
    let root = crate::common::utf8(td.path())?;
    let wd = root.join("wd");
    let served = root.join("served");
    example::publish(&example::repo(&[])?, &served)?;
    let server = Server::start(served)?;
    let o = crate::common::as_user(
        user,
        concat!(env!("CARGO_MANIFEST_DIR"), "/examples/init-workdir.sh"),
    )
    .args([wd.as_str(), &server.url])
    .output()?;
    anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = run(
        crate::common::as_user(user, env!("CARGO_BIN_EXE_cosa-compose"))
            .args(["--workdir", wd.as_str()]),
    )?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("changed=true"), "{}", r.stdout);
    // Files in the commit are root's, although an unprivileged user composed it.
    let o = Command::new("ostree")
        .args([
            "ls",
            "--repo",
            wd.join("tmp/repo").as_str(),
            "example-os/x86_64/stable",
            "/usr/bin/busybox",
        ])
        .output()?;
    let line = String::from_utf8(o.stdout)?;
    assert!(line.contains(" 0 0 "), "{line}");
    Ok(())
}

#[test]
fn lockfile_pins_versions() -> Result<()> {
    let f = Fixture::new()?;
    // One repository holding example-hello 1.0-1 and 1.0-2.
    let both = f.served.clone();
    for rpm in std::fs::read_dir(example::repo(&["example-hello=2"])?.join("Packages"))? {
        let rpm = rpm?.path();
        let name = rpm
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        std::fs::copy(&rpm, both.join("Packages").join(name))?;
    }
    let o = Command::new("createrepo_c")
        .args(["-q", "--update", both.as_str()])
        .output()?;
    anyhow::ensure!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hello = |f: &Fixture| -> Result<String> {
        let id = f.t.wd.latest_id()?.context("latest")?;
        let lock: Value = serde_json::from_slice(&std::fs::read(
            f.t.wd
                .build_arch_dir(&id, "x86_64")?
                .join("manifest-lock.generated.x86_64.json"),
        )?)?;
        Ok(lock["packages"]["example-hello"]["evra"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    };
    std::fs::write(
        f.config("manifest-lock.x86_64.json"),
        r#"{"packages": {"example-hello": {"evra": "1.0-1.noarch"}}}"#,
    )?;
    f.compose_ok(&[])?;
    assert_eq!(hello(&f)?, "1.0-1.noarch");
    std::fs::remove_file(f.config("manifest-lock.x86_64.json"))?;
    let r = f.compose_ok(&[])?;
    assert!(
        r.stdout.starts_with("changed=true"),
        "removing the lock is a change"
    );
    assert_eq!(hello(&f)?, "1.0-2.noarch");
    // A lock on a version no repository has is a clear error.
    std::fs::write(
        f.config("manifest-lock.x86_64.json"),
        r#"{"packages": {"example-hello": {"evr": "9.9-9"}}}"#,
    )?;
    let r = f.compose(&[])?;
    assert_eq!(r.code, 1);
    assert!(
        r.error_line().contains("example-hello-9.9-9"),
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn prune_removes_directories_and_refs() -> Result<()> {
    let f = Fixture::new()?;
    for _ in 0..3 {
        f.compose_ok(&["--force", "--keep-last-n", "2"])?;
    }
    let builds = f.builds()?;
    assert_eq!(builds.len(), 2);
    let refs = Command::new("ostree")
        .args(["refs", "--repo", f.t.wd.repo_dir().as_str()])
        .output()?;
    let refs = String::from_utf8(refs.stdout)?;
    let mut build_refs: Vec<_> = refs
        .lines()
        .filter(|r| r.starts_with("cosa/builds/"))
        .collect();
    build_refs.sort();
    let mut want: Vec<_> = builds
        .iter()
        .map(|b| format!("cosa/builds/{b}/x86_64"))
        .collect();
    want.sort();
    assert_eq!(build_refs, want);
    // A tagged build survives pruning and does not count.
    let mut b = f.t.wd.read_builds()?;
    let oldest = builds[1].clone();
    b.extra.insert(
        "tags".into(),
        serde_json::json!([{"name": "keep", "created": "2026-01-01T00:00:00Z", "target": oldest}]),
    );
    std::fs::write(f.t.wd.builds_json_path(), b.to_json_bytes()?)?;
    f.compose_ok(&["--force", "--keep-last-n", "1"])?;
    let after = f.builds()?;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.contains(&oldest));
    assert!(f.t.wd.build_dir(&oldest)?.exists());
    Ok(())
}

#[test]
fn rpm_ostree_backend() -> Result<()> {
    let t = TestWorkdir::new()?;
    std::fs::write(
        t.wd.config_dir().join("manifest.yaml"),
        "ref: fake-os/x86_64/stable\n",
    )?;
    let fake = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fake-rpm-ostree"
    );
    let log = t.root().join("rpm-ostree.log");
    let path = format!("{fake}:{}", std::env::var("PATH").unwrap_or_default());
    let compose = |extra: &[(&str, &str)]| {
        let mut c = bin("cosa-compose");
        c.args(["--workdir", t.root().as_str()])
            .env("PATH", &path)
            .env("FAKE_RPM_OSTREE_LOG", log.as_str());
        for (k, v) in extra {
            c.env(k, v);
        }
        run(&mut c)
    };
    // auto picks rpm-ostree when it is on PATH.
    let r = compose(&[])?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "changed=true\nbuild=7\n");
    let meta: Value = serde_json::from_slice(&std::fs::read(t.wd.meta_path("7", "x86_64")?)?)?;
    assert_eq!(crate::schema::schema_errors(&meta)?, Vec::<String>::new());
    assert_eq!(meta["name"], "fake-os");
    assert_eq!(meta["ref"], "fake-os/x86_64/stable");
    let calls = std::fs::read_to_string(&log)?;
    let compose_call = calls
        .lines()
        .find(|l| l.contains("--unified-core"))
        .context("no compose call")?;
    assert!(
        compose_call.contains("--add-metadata-string=version=7"),
        "{compose_call}"
    );
    assert!(
        !compose_call.contains("--previous-commit"),
        "{compose_call}"
    );
    // rpm-ostree says nothing changed: no new build, latest untouched.
    let r = compose(&[("FAKE_UNCHANGED", "1")])?;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "changed=false\nbuild=7\n"),
        "{}",
        r.stderr
    );
    // A change: the next version, the previous commit handed over, the diff recorded.
    let r = compose(&[])?;
    assert_eq!(r.stdout, "changed=true\nbuild=7.1\n");
    let calls = std::fs::read_to_string(&log)?;
    let last = calls
        .lines()
        .rfind(|l| l.contains("--unified-core"))
        .context("call")?;
    assert!(
        last.contains(&format!(
            "--previous-commit={}",
            meta["ostree-commit"].as_str().context("c")?
        )),
        "{last}"
    );
    let meta2: Value = serde_json::from_slice(&std::fs::read(t.wd.meta_path("7.1", "x86_64")?)?)?;
    assert_eq!(meta2["pkgdiff"][0][0], "fake-pkg");
    assert_eq!(crate::schema::schema_errors(&meta2)?, Vec::<String>::new());
    // Asking for rpm-ostree where there is none is a clear error.
    let r = run(bin("cosa-compose")
        .args(["--workdir", t.root().as_str(), "--backend", "rpm-ostree"])
        .env("PATH", "/usr/bin:/bin"))?;
    assert_eq!(r.code, 1);
    assert!(
        r.error_line().contains("rpm-ostree is not installed"),
        "{}",
        r.stderr
    );
    Ok(())
}
