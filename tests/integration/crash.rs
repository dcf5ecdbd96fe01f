//! kill -9 at random points of cosa-compose, cosa-image, cosa-extend and cosa-upload:
//! right after the kill the work directory (or store) is consistent (every
//! builds.json entry has a complete meta.json whose artifacts exist with matching
//! sha256; latest points at a complete build), and a rerun succeeds and leaves it so.
//!
//! The kill lands at a uniformly random time within one uninterrupted run's duration
//! (measured first), and takes the whole process group (dnf, ostree, mkfs, qemu-img
//! children too), as a cancelled CI job or a lost machine does.
//!
//! Seeded and reproducible: the seed is printed; `COSA_CRASH_SEED=<n>` replays it.
//! Runs per binary: `COSA_CRASH_RUNS` (default: 3 for compose and image, 4 for
//! extend, 8 for upload: the module then takes about 1.5 minutes on 2 shared cores).
//! The long mode: `COSA_CRASH_RUNS=30 cargo test --test integration crash::`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use camino::{Utf8Path, Utf8PathBuf};

use crate::common::{TestWorkdir, bin, run, utf8};
use crate::consistency::{check_s3_store, check_workdir};
use crate::example;
use crate::store_servers::{Kind, S3Server};
use crate::store_util::make_build;

fn seed() -> u64 {
    std::env::var("COSA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

fn runs(default: usize) -> usize {
    std::env::var("COSA_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Start `cmd` in its own process group, kill -9 the group after `after` (if it is
/// still running). Returns whether the kill hit a running process.
fn run_and_kill(mut cmd: Command, after: Duration) -> Result<bool> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let start = Instant::now();
    while start.elapsed() < after {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    child.wait()?;
    // Children the group kill may have raced with.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    Ok(true)
}

/// A copy of `template` (sparse) at a fresh directory in /var/tmp.
fn copy_of(template: &Utf8Path) -> Result<(tempfile::TempDir, Utf8PathBuf)> {
    let td = tempfile::Builder::new()
        .prefix("cosa-crash.")
        .tempdir_in("/var/tmp")?;
    let root = utf8(td.path())?.join("w");
    let o = Command::new("cp")
        .args(["-a", "--sparse=always", template.as_str(), root.as_str()])
        .output()?;
    ensure!(
        o.status.success(),
        "cp: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok((td, root))
}

/// A work directory kept (with its temporary directory) for the copies.
struct Template {
    _td: tempfile::TempDir,
    root: Utf8PathBuf,
}

/// The example OS's work directory: `steps` of (binary, args) already run.
fn template(steps: &[(&str, &[&str])]) -> Result<Template> {
    let td = tempfile::Builder::new()
        .prefix("cosa-crash-template.")
        .tempdir_in("/var/tmp")?;
    let root = utf8(td.path())?.join("w");
    let repo = example::repo(&[])?;
    example::init_workdir(&root, &format!("file://{repo}"))?;
    for (name, args) in steps {
        let r = run(bin(name).arg("--workdir").arg(root.as_str()).args(*args))?;
        ensure!(r.code == 0, "{name} failed:\n{}", r.stderr);
    }
    Ok(Template { _td: td, root })
}

static LOG: OnceLock<Mutex<()>> = OnceLock::new();

/// Crash `name args` in `n` copies of `tpl` at random points; check each.
fn crash_workdir(what: &str, tpl: &Utf8Path, name: &str, args: &[&str], n: usize) -> Result<()> {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    // One uninterrupted run: how long the kill window is.
    let (_td, root) = copy_of(tpl)?;
    let start = Instant::now();
    let r = run(bin(name).arg("--workdir").arg(root.as_str()).args(args))?;
    ensure!(r.code == 0, "{name} failed:\n{}", r.stderr);
    let full = start.elapsed();
    let mut hits = Vec::new();
    for i in 0..n {
        let at = full.mul_f64(rng.f64());
        let ctx = || {
            format!(
                "{what} run {i}: kill -9 at {} ms (COSA_CRASH_SEED={seed})",
                at.as_millis()
            )
        };
        let (_td, root) = copy_of(tpl)?;
        let mut cmd = bin(name);
        cmd.arg("--workdir").arg(root.as_str()).args(args);
        if run_and_kill(cmd, at)? {
            hits.push(at.as_millis());
        }
        check_workdir(&root).with_context(|| format!("{} (right after the kill)", ctx()))?;
        let r = run(bin(name).arg("--workdir").arg(root.as_str()).args(args))?;
        ensure!(r.code == 0, "{}: the rerun failed:\n{}", ctx(), r.stderr);
        let builds =
            check_workdir(&root).with_context(|| format!("{} (after the rerun)", ctx()))?;
        ensure!(builds >= 1, "{}: no build after the rerun", ctx());
        // The killed run's scratch is gone too (a rerun removes dead runs' scratch).
        let left = leftovers(&root.join("tmp"))?;
        ensure!(
            left.is_empty(),
            "{}: left in tmp/ after the rerun: {left:?}",
            ctx()
        );
    }
    let _g = LOG.get_or_init(|| Mutex::new(())).lock();
    eprintln!(
        "crash {what}: seed {seed}, {n} runs, {} killed mid-run (at ms {hits:?} of {} ms), all consistent",
        hits.len(),
        full.as_millis()
    );
    Ok(())
}

/// Temporary entries (`.cosa-tmp.*`) in a directory.
fn leftovers(dir: &Utf8Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {dir}"))? {
        let n = e?.file_name().to_string_lossy().into_owned();
        if n.starts_with(".cosa-tmp.") || n.starts_with(".cosa-new.") {
            v.push(n);
        }
    }
    Ok(v)
}

#[test]
fn compose_killed_at_random_points() -> Result<()> {
    let t = template(&[])?;
    crash_workdir("cosa-compose", &t.root, "cosa-compose", &[], runs(3))
}

#[test]
fn image_killed_at_random_points() -> Result<()> {
    let t = template(&[("cosa-compose", &[])])?;
    crash_workdir(
        "cosa-image",
        &t.root,
        "cosa-image",
        &["--platform", "qemu"],
        runs(3),
    )
}

#[test]
fn extend_killed_at_random_points() -> Result<()> {
    let t = template(&[
        ("cosa-compose", &[]),
        ("cosa-image", &["--platform", "qemu"]),
    ])?;
    crash_workdir(
        "cosa-extend",
        &t.root,
        "cosa-extend",
        &["--platform", "openstack"],
        runs(4),
    )
}

/// cosa-upload to s3s-fs, killed at random points: the store is consistent at once
/// (a reader never sees a partial build), the rerun completes it.
#[test]
fn upload_killed_at_random_points() -> Result<()> {
    let Some(s) = S3Server::start(Kind::S3sFs)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let t = TestWorkdir::new()?;
    // A multipart artifact and small ones: kills land in every kind of request.
    make_build(&t, "1.0", "x86_64", &[20 << 20, 3 << 20, 1000])?;
    let upload = |prefix: &str| {
        let mut c = bin("cosa-upload");
        s.env(&mut c)
            .arg("--workdir")
            .arg(t.root().as_str())
            .args(["--url", &s.url(prefix)]);
        c
    };
    let start = Instant::now();
    let r = run(&mut upload("timing"))?;
    ensure!(r.code == 0, "upload failed:\n{}", r.stderr);
    let full = start.elapsed();
    let n = runs(8);
    let mut hits = Vec::new();
    for i in 0..n {
        let prefix = format!("crash{i}");
        let at = full.mul_f64(rng.f64());
        let ctx = format!(
            "cosa-upload run {i}: kill -9 at {} ms (COSA_CRASH_SEED={seed})",
            at.as_millis()
        );
        if run_and_kill(upload(&prefix), at)? {
            hits.push(at.as_millis());
        }
        check_s3_store(&rt, &s, &prefix)
            .with_context(|| format!("{ctx} (right after the kill)"))?;
        let r = run(&mut upload(&prefix))?;
        ensure!(r.code == 0, "{ctx}: the rerun failed:\n{}", r.stderr);
        let b = check_s3_store(&rt, &s, &prefix)?.context("no builds.json after the rerun")?;
        ensure!(b.has("1.0", "x86_64"), "{ctx}: builds.json lacks the build");
        check_workdir(t.root())?;
    }
    eprintln!(
        "crash cosa-upload: seed {seed}, {n} runs, {} killed mid-run (at ms {hits:?} of {} ms), all consistent",
        hits.len(),
        full.as_millis()
    );
    Ok(())
}
