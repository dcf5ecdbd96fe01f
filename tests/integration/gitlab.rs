//! The GitLab CI templates, run for real with gitlab-ci-local (shell executor), offline.

use std::process::Command;

use anyhow::{Context, Result};
use camino::Utf8Path;

use crate::common::TestWorkdir;
use crate::example;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A scratch git project holding the templates and a pipeline from tests/fixtures/gitlab.
fn project(dir: &Utf8Path, pipeline: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let sh = |args: &[&str]| -> Result<()> {
        let o = Command::new(args[0])
            .args(&args[1..])
            .current_dir(dir)
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(())
    };
    sh(&["cp", "-r", &format!("{ROOT}/gitlab-templates"), "."])?;
    std::fs::copy(
        format!("{ROOT}/tests/fixtures/gitlab/{pipeline}"),
        dir.join(".gitlab-ci.yml"),
    )?;
    sh(&["git", "init", "-q"])?;
    sh(&["git", "add", "-A"])?;
    sh(&[
        "git",
        "-c",
        "user.email=t@example.invalid",
        "-c",
        "user.name=t",
        "commit",
        "-qm",
        "pipeline",
    ])
}

fn gitlab_ci_local(project: &Utf8Path, workdir: &Utf8Path) -> Result<(i32, String)> {
    let tools = crate::actions::ci_tools()?;
    let bin = Utf8Path::new(env!("CARGO_BIN_EXE_cosa-compose"))
        .parent()
        .context("bin dir")?;
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let o = Command::new(tools.join("gitlab-ci-local"))
        .current_dir(project)
        .env("PATH", path)
        .args(["--variable", &format!("EXAMPLE_WORKDIR={workdir}")])
        .output()?;
    Ok((
        o.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    ))
}

#[test]
fn compose_then_downstream_ends_early_when_unchanged() -> Result<()> {
    let t = TestWorkdir::new()?;
    let served = t.root().join("served");
    example::publish(&example::repo(&[])?, &served)?;
    example::init_workdir(t.root(), &format!("file://{served}"))?;
    let proj = t.root().join("project");
    project(&proj, "example-os.gitlab-ci.yml")?;
    let ran = t.root().join("downstream-ran");

    let (code, out) = gitlab_ci_local(&proj, t.root())?;
    assert_eq!(code, 0, "{out}");
    let id = t.wd.latest_id()?.context("no build")?;
    assert_eq!(std::fs::read_to_string(&ran)?.trim(), id, "{out}");
    // The downstream job made the build's qemu image and registered it.
    let meta = t.wd.read_meta(&id, "x86_64")?;
    let qemu = meta
        .images
        .get("qemu")
        .context("no qemu image in meta.json")?;
    assert!(
        t.wd.build_arch_dir(&id, "x86_64")?
            .join(&qemu.path)
            .exists()
    );

    std::fs::remove_file(&ran)?;
    let (code, out) = gitlab_ci_local(&proj, t.root())?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("nothing changed; skipping"), "{out}");
    assert!(!ran.exists());

    example::publish(&example::repo(&["example-hello=2"])?, &served)?;
    let (code, out) = gitlab_ci_local(&proj, t.root())?;
    assert_eq!(code, 0, "{out}");
    let id2 = t.wd.latest_id()?.context("no build")?;
    assert_ne!(id, id2);
    assert_eq!(std::fs::read_to_string(&ran)?.trim(), id2);
    Ok(())
}
