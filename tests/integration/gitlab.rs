//! The GitLab CI templates, run for real with gitlab-ci-local (shell executor), offline.

use std::process::Command;

use anyhow::{Context, Result};
use camino::Utf8Path;

use crate::actions::{PipelineSetup, pipeline_builds, pipeline_setup, store_objects};
use crate::common::{TestWorkdir, combined};
use crate::example;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What a job that ends early prints (gitlab-ci-local marks job output with "> ";
/// the script's own text is echoed with "$ ").
const SKIPPED: &str = "> nothing changed; skipping";

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
    run(
        Command::new("true"),
        project,
        &[format!("EXAMPLE_WORKDIR={workdir}")],
    )
}

/// Run gitlab-ci-local in `project` with `variables`, from `cmd`'s environment.
fn run(cmd: Command, project: &Utf8Path, variables: &[String]) -> Result<(i32, String)> {
    let tools = crate::actions::ci_tools()?;
    let bin = Utf8Path::new(env!("CARGO_BIN_EXE_cosa-compose"))
        .parent()
        .context("bin dir")?;
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let mut glc = Command::new(tools.join("gitlab-ci-local"));
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => glc.env(k, v),
            None => glc.env_remove(k),
        };
    }
    glc.current_dir(project).env("PATH", path);
    for v in variables {
        glc.args(["--variable", v]);
    }
    combined(&mut glc)
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
    assert!(out.contains(SKIPPED), "{out}");
    assert!(!ran.exists());

    example::publish(&example::repo(&["example-hello=2"])?, &served)?;
    let (code, out) = gitlab_ci_local(&proj, t.root())?;
    assert_eq!(code, 0, "{out}");
    let id2 = t.wd.latest_id()?.context("no build")?;
    assert_ne!(id, id2);
    assert_eq!(std::fs::read_to_string(&ran)?.trim(), id2);
    Ok(())
}

/// The cosa-pipeline template, with every job in its own work directory and the
/// build handed between them through a loopback S3 store (moto).
#[test]
fn pipeline_through_s3() -> Result<()> {
    let Some(PipelineSetup { s3, t, served, cfg }) = pipeline_setup()? else {
        return Ok(());
    };
    let proj = t.root().join("project");
    project(&proj, "pipeline-s3.gitlab-ci.yml")?;
    let prefix = "example/stable";
    let vars = [
        format!("COSA_TEST_STORE={}", s3.url(prefix)),
        format!("COSA_TEST_ENDPOINT={}", s3.endpoint),
        format!("EXAMPLE_CONFIG={cfg}/src/config"),
    ];
    let glc = || {
        let mut env = Command::new("true");
        s3.env(&mut env);
        run(env, &proj, &vars)
    };

    // Run 1: a new build; images and platform images made in parallel jobs, all in
    // its meta.json, and the build in builds.json.
    let (code, out) = glc()?;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains(SKIPPED), "{out}");
    let objects = store_objects(&s3)?;
    let id = pipeline_builds(&objects, prefix, 1)?.remove(0);

    // Run 2: nothing changed: the image, extend and publish jobs end early, and the
    // store is byte for byte what it was.
    let (code, out) = glc()?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("> changed=false"), "{out}");
    // cosa-image (qemu), cosa-extend (aws, gcp) and cosa-publish end early.
    let skipped = out.matches(SKIPPED).count();
    assert_eq!(skipped, 4, "{skipped} jobs ended early:\n{out}");
    assert!(store_objects(&s3)? == objects, "the store changed in run 2");

    // Run 3: one package bumped: a second build, complete, in builds.json.
    example::publish(&example::repo(&["example-hello=2"])?, &served)?;
    let (code, out) = glc()?;
    assert_eq!(code, 0, "{out}");
    let ids = pipeline_builds(&store_objects(&s3)?, prefix, 2)?;
    assert_ne!(ids[0], id);
    assert_eq!(ids[1], id);
    Ok(())
}

#[test]
fn bad_input_fails_with_one_error_line() -> Result<()> {
    let t = TestWorkdir::new()?;
    let proj = t.root().join("project");
    project(&proj, "bad-input.gitlab-ci.yml")?;
    let (code, out) = gitlab_ci_local(&proj, t.root())?;
    assert_ne!(code, 0, "{out}");
    for (job, names) in [
        ("cosa-fetch", "cosa-fetch needs the input 'url' (the store)"),
        ("cosa-extend", "unknown platform \"frobnicator\""),
    ] {
        // Job output is marked "> " (the script's text is echoed with "$ ").
        let errors: Vec<_> = out
            .lines()
            .filter(|l| l.starts_with(job) && l.contains("> ") && l.contains(names))
            .collect();
        assert_eq!(errors.len(), 1, "{job}:\n{out}");
    }
    Ok(())
}
