//! Shared helpers: temporary work directories with builds, running the binaries.

use std::process::{Command, Output};

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use cosa::builds::BuildsJson;
use cosa::meta::Meta;
use cosa::workdir::Workdir;

/// A temporary coreos-assembler work directory, removed on drop.
pub struct TestWorkdir {
    _td: tempfile::TempDir,
    pub wd: Workdir,
}

pub fn utf8(p: &std::path::Path) -> Result<Utf8PathBuf> {
    Utf8PathBuf::from_path_buf(p.to_path_buf())
        .map_err(|p| anyhow::anyhow!("non-UTF-8 {}", p.display()))
}

impl TestWorkdir {
    pub fn new() -> Result<Self> {
        let td = tempfile::tempdir()?;
        let wd = Workdir::init(utf8(td.path())?)?;
        Ok(Self { _td: td, wd })
    }

    /// A work directory at `td/sub`, for tests that watch what lies around it in `td`.
    pub fn inside(td: tempfile::TempDir, sub: &str) -> Result<Self> {
        let wd = Workdir::init(utf8(td.path())?.join(sub))?;
        Ok(Self { _td: td, wd })
    }

    pub fn root(&self) -> &Utf8Path {
        self.wd.root()
    }

    /// Record a build as a compose would: arch dir with a schema-valid meta.json,
    /// builds.json entry, latest moved.
    pub fn add_build(&self, id: &str, arch: &str) -> Result<()> {
        let lock = self.wd.lock()?;
        std::fs::create_dir_all(self.wd.build_arch_dir(id, arch)?)?;
        self.wd.write_meta(&minimal_meta(id, arch), arch, &lock)?;
        let mut b = self.wd.read_builds()?;
        b.insert(id, arch)?;
        self.wd.write_builds(&b, &lock)?;
        self.wd.set_latest(Some(id), &lock)?;
        Ok(())
    }
}

pub fn minimal_meta(id: &str, arch: &str) -> Meta {
    Meta {
        buildid: id.into(),
        name: "example-os".into(),
        ostree_commit: "a".repeat(64),
        ostree_version: id.into(),
        ostree_timestamp: "2026-11-26T10:00:00Z".into(),
        ostree_ref: Some(format!("example-os/{arch}/stable")),
        ostree_content_checksum: None,
        inputhash: None,
        basearch: Some(arch.into()),
        build_timestamp: Some("2026-11-26T10:00:00Z".into()),
        images: Default::default(),
        extra: Default::default(),
    }
}

/// Write a store directory holding `builds.json` with the given (id, arch) pairs, newest last.
pub fn file_store(dir: &Utf8Path, builds: &[(&str, &str)]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut b = BuildsJson::default();
    for (id, arch) in builds {
        b.insert(id, arch)?;
    }
    std::fs::write(dir.join("builds.json"), b.to_json_bytes()?)?;
    Ok(())
}

/// A command for one of this package's binaries, with a clean CI environment.
pub fn bin(name: &str) -> Command {
    let path = match name {
        "cosa-changed" => env!("CARGO_BIN_EXE_cosa-changed"),
        "cosa-compose" => env!("CARGO_BIN_EXE_cosa-compose"),
        "cosa-image" => env!("CARGO_BIN_EXE_cosa-image"),
        "cosa-extend" => env!("CARGO_BIN_EXE_cosa-extend"),
        "cosa-fetch" => env!("CARGO_BIN_EXE_cosa-fetch"),
        "cosa-upload" => env!("CARGO_BIN_EXE_cosa-upload"),
        other => panic!("unknown binary {other}"),
    };
    let mut c = Command::new(path);
    for k in [
        "GITHUB_ACTIONS",
        "GITHUB_OUTPUT",
        "GITLAB_CI",
        "COSA_WORKDIR",
        "RUST_LOG",
    ] {
        c.env_remove(k);
    }
    c
}

/// Run a tool (act, gitlab-ci-local, a linter): its exit code and its standard
/// output and error together, as a person reading the log sees them.
pub fn combined(cmd: &mut Command) -> Result<(i32, String)> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok((
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    ))
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Result<Run> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().context("running binary")?;
    Ok(Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8(stdout)?,
        stderr: String::from_utf8(stderr)?,
    })
}

impl Run {
    /// The one `error:` line a failing binary must print.
    pub fn error_line(&self) -> String {
        let lines: Vec<_> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one error line, stderr:\n{}",
            self.stderr
        );
        lines[0].to_string()
    }
}

/// The unprivileged user rootless tests run as, created when the tests run as root.
/// `None` when not root (then the tests themselves already run unprivileged).
pub fn unprivileged_user() -> Result<Option<&'static str>> {
    const USER: &str = "cosa-test";
    if !cosa::userns::is_root() {
        return Ok(None);
    }
    let exists = Command::new("id").arg(USER).output()?.status.success();
    if !exists {
        let o = Command::new("useradd").args(["-m", USER]).output()?;
        // Another test may have created it meanwhile.
        let again = Command::new("id").arg(USER).output()?.status.success();
        anyhow::ensure!(
            o.status.success() || again,
            "useradd: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(Some(USER))
}

/// A command that runs `program` as `user` (via runuser) or as is when `user` is None.
pub fn as_user(user: Option<&str>, program: &str) -> Command {
    match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", program]);
            c
        }
        None => Command::new(program),
    }
}

/// A directory under /var/tmp owned by `user` (world-traversable), removed on drop.
pub fn dir_for_user(user: Option<&str>) -> Result<tempfile::TempDir> {
    let td = tempfile::Builder::new()
        .prefix("cosa-test-")
        .tempdir_in("/var/tmp")?;
    std::fs::set_permissions(
        td.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    if let Some(u) = user {
        let o = Command::new("chown")
            .arg(format!("{u}:"))
            .arg(td.path())
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "chown: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(td)
}
