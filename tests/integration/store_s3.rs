//! cosa-upload and cosa-fetch against each S3 server on loopback (see
//! `store_servers.rs`): round trip, 16 concurrent uploaders, kill -9 and resume,
//! a corrupted object, bad credentials and a missing bucket.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use cosa::builds::BuildsJson;

use crate::common::{Run, TestWorkdir, bin, run};
use crate::store_servers::{BUCKET, Kind, S3Server};
use crate::store_util::{assert_same_tree, make_build};

fn cosa(s: &S3Server, name: &str, t: &TestWorkdir) -> Command {
    let mut c = bin(name);
    s.env(&mut c).arg("--workdir").arg(t.root().as_str());
    c
}

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

/// The store's builds.json, read with a plain SDK client.
fn store_builds(
    rt: &tokio::runtime::Runtime,
    s: &S3Server,
    prefix: &str,
) -> Result<Option<BuildsJson>> {
    let k = format!("{prefix}/builds.json");
    match rt.block_on(s.sdk().get_object().bucket(BUCKET).key(&k).send()) {
        Ok(o) => {
            let b = rt.block_on(o.body.collect())?.into_bytes();
            Ok(Some(BuildsJson::parse(&b, &k)?))
        }
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "{k}: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
    }
}

fn exists(rt: &tokio::runtime::Runtime, s: &S3Server, key: &str) -> bool {
    rt.block_on(s.sdk().head_object().bucket(BUCKET).key(key).send())
        .is_ok()
}

/// At the default verbosity (no -v, no RUST_LOG), no debug line of ours or of the
/// SDK's, and no colour codes when stderr is not a terminal.
fn quiet(r: &Run) {
    for bad in ["DEBUG", "TRACE", "\x1b["] {
        assert!(!r.stderr.contains(bad), "{bad:?} in:\n{}", r.stderr);
    }
}

fn round_trip(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let t = TestWorkdir::new()?;
    // One multipart artifact (3 parts of 16 MiB), a small one, an empty one.
    make_build(&t, "1.0", "x86_64", &[40 << 20, 1000, 0])?;
    let url = s.url("prod/streams/stable/builds");
    let r = ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    assert!(r.stdout.contains("uploaded=5\nskipped=0"), "{}", r.stdout);
    quiet(&r);
    let mode = if kind.conditional_writes() {
        "honoured"
    } else {
        "ignored"
    };
    assert!(
        r.stderr.contains(&format!("conditional writes {mode}")),
        "{}",
        r.stderr
    );
    // Again: the artifacts are in the store with the same sha256, not sent again.
    let r = ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    assert!(r.stdout.contains("skipped=3"), "{}", r.stdout);

    // coreos-assembler's headers and the recorded sha256.
    let base = "prod/streams/stable/builds/1.0/x86_64";
    let h = rt.block_on(
        s.sdk()
            .head_object()
            .bucket(BUCKET)
            .key(format!("{base}/example-os-1.0-a0.x86_64.raw"))
            .send(),
    )?;
    assert_eq!(h.cache_control(), Some("max-age=31536000"));
    assert_eq!(h.content_length(), Some(40 << 20));
    assert_eq!(
        h.metadata().and_then(|m| m.get("sha256")).map(String::len),
        Some(64)
    );
    let h = rt.block_on(
        s.sdk()
            .head_object()
            .bucket(BUCKET)
            .key(format!("{base}/meta.json"))
            .send(),
    )?;
    assert_eq!(h.cache_control(), Some("max-age=300"));
    assert_eq!(h.content_type(), Some("application/json"));

    // Fetch into another work directory: bit for bit.
    let t2 = TestWorkdir::new()?;
    let r = ok(run(cosa(&s, "cosa-fetch", &t2).args([
        "--url",
        &url,
        "--arch",
        "x86_64",
        "--artifact",
        "all",
    ]))?);
    assert!(r.stdout.contains("build=1.0\n"), "{}", r.stdout);
    quiet(&r);
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &t2.wd.build_arch_dir("1.0", "x86_64")?,
    )?;
    assert_eq!(t2.wd.latest_id()?.as_deref(), Some("1.0"));
    assert!(t2.wd.read_builds()?.has("1.0", "x86_64"));

    // cosa-changed --against an s3:// store.
    let r = ok(run(cosa(&s, "cosa-changed", &t).args([
        "--against",
        &url,
        "--arch",
        "x86_64",
    ]))?);
    assert_eq!(r.stdout, "changed=false\nbuild=1.0\nprevious=1.0\n");
    Ok(())
}

fn concurrent_uploaders(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    // 16 work directories: builds 1..8, each for x86_64 and aarch64.
    let arches = ["x86_64", "aarch64"];
    let mut wds = Vec::new();
    for i in 0..16 {
        let t = TestWorkdir::new()?;
        let id = format!("{}.0", i / 2 + 1);
        t.add_build(&id, arches[i % 2])?;
        wds.push((t, id, arches[i % 2]));
    }
    for round in 0..10 {
        let prefix = format!("race/{round}");
        let url = s.url(&prefix);
        let children = wds
            .iter()
            .map(|(t, _, _)| {
                cosa(&s, "cosa-upload", t)
                    .args(["--url", &url])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting cosa-upload")
            })
            .collect::<Result<Vec<_>>>()?;
        for c in children {
            let o = c.wait_with_output()?;
            assert!(
                o.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let b = store_builds(&rt, &s, &prefix)?.context("no builds.json")?;
        for (_, id, arch) in &wds {
            assert!(
                b.has(id, arch),
                "{} round {round}: {id}/{arch} lost from builds.json: {:?}",
                kind.name(),
                b.builds
            );
        }
        assert_eq!(b.builds.len(), 8);
    }
    Ok(())
}

fn kill_and_resume(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let s = Arc::new(s);
    let t = TestWorkdir::new()?;
    let n = 8;
    let meta = make_build(&t, "1.0", "x86_64", &vec![24 << 20; n])?;
    let prefix = "kill";
    let url = s.url(prefix);
    let keys: Vec<String> = meta
        .images
        .values()
        .map(|a| format!("{prefix}/1.0/x86_64/{}", a.path))
        .collect();

    // A reader that checks, all along, that a build it can see is complete.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, stop, keys) = (s.clone(), stop.clone(), keys.clone());
        std::thread::spawn(move || -> Result<Vec<String>> {
            let rt = tokio::runtime::Runtime::new()?;
            let mut bad = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let listed = store_builds(&rt, &s, prefix)?.is_some_and(|b| b.has("1.0", "x86_64"));
                let meta = exists(&rt, &s, &format!("{prefix}/1.0/x86_64/meta.json"));
                if listed && !meta {
                    bad.push("builds.json lists 1.0 before its meta.json exists".into());
                }
                if meta || listed {
                    for k in &keys {
                        if !exists(&rt, &s, k) {
                            bad.push(format!("build visible but {k} missing"));
                        }
                    }
                }
            }
            Ok(bad)
        })
    };

    let rt = tokio::runtime::Runtime::new()?;
    let mut child = cosa(&s, "cosa-upload", &t)
        .args(["--url", &url, "--jobs", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Kill -9 once the first artifact is in the store.
    while !keys.iter().any(|k| exists(&rt, &s, k)) {
        if child.try_wait()?.is_some() {
            anyhow::bail!("the upload ended before an artifact appeared");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill()?;
    child.wait()?;
    // Complete artifacts (the right size): these must not be sent again.
    let mut complete = 0;
    for (k, a) in keys.iter().zip(meta.images.values()) {
        if let Ok(h) = rt.block_on(s.sdk().head_object().bucket(BUCKET).key(k).send())
            && h.content_length() == a.size.map(|n| n as i64)
        {
            complete += 1;
        }
    }
    assert!(
        complete < n,
        "the upload finished before it was killed; nothing to resume"
    );
    assert!(!exists(&rt, &s, &format!("{prefix}/1.0/x86_64/meta.json")));
    assert!(store_builds(&rt, &s, prefix)?.is_none_or(|b| !b.has("1.0", "x86_64")));

    let r = ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    let skips = r
        .stderr
        .lines()
        .filter(|l| l.contains("skip s3://"))
        .count();
    let sends = r
        .stderr
        .lines()
        .filter(|l| l.contains("upload s3://") && l.ends_with("MiB)"))
        .count();
    assert_eq!(
        (skips, sends),
        (complete, n - complete),
        "finished artifacts were sent again:\n{}",
        r.stderr
    );
    stop.store(true, Ordering::SeqCst);
    let bad = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    assert!(bad.is_empty(), "a reader saw a partial build: {bad:?}");

    let t2 = TestWorkdir::new()?;
    ok(run(cosa(&s, "cosa-fetch", &t2).args([
        "--url",
        &url,
        "--arch",
        "x86_64",
        "--artifact",
        "all",
    ]))?);
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &t2.wd.build_arch_dir("1.0", "x86_64")?,
    )?;
    Ok(())
}

fn corrupted_object(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let t = TestWorkdir::new()?;
    let meta = make_build(&t, "1.0", "x86_64", &[3 << 20, 20 << 20])?;
    let url = s.url("c");
    ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    // Same size, other bytes.
    let victim = &meta.images["a1"].path;
    let mut data = crate::store_util::bytes(99, 20 << 20);
    data[0] ^= 1;
    rt.block_on(
        s.sdk()
            .put_object()
            .bucket(BUCKET)
            .key(format!("c/1.0/x86_64/{victim}"))
            .body(data.into())
            .send(),
    )?;
    let t2 = TestWorkdir::new()?;
    let r = run(cosa(&s, "cosa-fetch", &t2).args([
        "--url",
        &url,
        "--arch",
        "x86_64",
        "--artifact",
        "all",
    ]))?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.error_line();
    assert!(
        line.contains(victim.as_str()) && line.contains("sha256 mismatch"),
        "{line}"
    );
    let dir = t2.wd.build_arch_dir("1.0", "x86_64")?;
    assert!(
        !dir.join(victim).exists(),
        "a corrupt file sits under its final name"
    );
    assert!(
        !dir.join("meta.json").exists(),
        "meta.json written for a failed fetch"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(victim.as_str()))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

fn bad_credentials_and_missing_bucket(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let t = TestWorkdir::new()?;
    make_build(&t, "1.0", "x86_64", &[1000])?;
    for name in ["cosa-upload", "cosa-fetch"] {
        let r = run(cosa(&s, name, &t).args(["--url", "s3://no-such-bucket/x"]))?;
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        assert!(
            r.error_line().contains("no such bucket"),
            "{name}: {}",
            r.stderr
        );
    }
    if kind.checks_credentials() {
        const WRONG: &str = "wrong-secret-key-do-not-print-me";
        const TOKEN: &str = "session-token-do-not-print-me";
        for name in ["cosa-upload", "cosa-fetch"] {
            let mut c = bin(name);
            s.env_with(&mut c, s.key, WRONG)
                .env("AWS_SESSION_TOKEN", TOKEN)
                .args(["-vv", "--workdir", t.root().as_str(), "--url", &s.url("x")]);
            let r = run(&mut c)?;
            assert_eq!(r.code, 1, "{name}: {}", r.stderr);
            let line = r.error_line();
            assert!(line.contains("credentials"), "{name}: {line}");
            for secret in [WRONG, TOKEN, s.secret] {
                assert!(
                    !r.stderr.contains(secret) && !r.stdout.contains(secret),
                    "{name} printed a secret"
                );
            }
        }
    }
    Ok(())
}

fn prune(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let t = TestWorkdir::new()?;
    let url = s.url("p");
    for id in ["1", "2", "3"] {
        make_build(&t, id, "x86_64", &[100])?;
        ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    }
    let mut c = bin("cosa-upload");
    s.env(&mut c)
        .args(["prune", "--url", &url, "--keep-last-n", "1"]);
    let r = ok(run(&mut c)?);
    assert_eq!(r.stdout, "pruned=2,1\n");
    let b = store_builds(&rt, &s, "p")?.context("builds.json")?;
    assert_eq!(
        b.builds.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["3"]
    );
    assert_eq!(
        b.extra["tombstone-builds"].as_array().map(Vec::len),
        Some(2)
    );
    for id in ["1", "2"] {
        let l = rt.block_on(
            s.sdk()
                .list_objects_v2()
                .bucket(BUCKET)
                .prefix(format!("p/{id}/"))
                .send(),
        )?;
        assert!(l.contents().is_empty(), "build {id} left objects");
    }
    assert!(exists(&rt, &s, "p/3/x86_64/meta.json"));
    // A later upload does not bring pruned builds back (even when rebuilding the
    // index from a listing).
    make_build(&t, "4", "x86_64", &[100])?;
    ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    let b = store_builds(&rt, &s, "p")?.context("builds.json")?;
    assert_eq!(
        b.builds.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["4", "3"]
    );
    Ok(())
}

/// A local artifact changed since it was built (its bytes no longer match the
/// sha256 in meta.json) is not published: neither as one PUT nor as a multipart
/// upload, and nothing after it (meta.json, builds.json) is sent. An unfinished
/// multipart upload of the same key left by a killed run is aborted.
fn changed_local_artifact(kind: Kind) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let t = TestWorkdir::new()?;
    make_build(&t, "1.0", "x86_64", &[40 << 20, 1000])?;
    let url = s.url("c");
    let base = "c/1.0/x86_64";
    let big = format!("{base}/example-os-1.0-a0.x86_64.raw");
    // An unfinished multipart upload of the big artifact, as a killed run leaves.
    let stale = rt.block_on(
        s.sdk()
            .create_multipart_upload()
            .bucket(BUCKET)
            .key(&big)
            .send(),
    )?;
    let stale_id = stale.upload_id().context("upload id")?.to_string();
    let dir = t.wd.build_arch_dir("1.0", "x86_64")?;
    for (name, key) in [
        (
            "example-os-1.0-a1.x86_64.raw",
            format!("{base}/example-os-1.0-a1.x86_64.raw"),
        ),
        ("example-os-1.0-a0.x86_64.raw", big.clone()),
    ] {
        // Flip one byte in the middle of the file.
        let f = dir.join(name);
        let mut data = std::fs::read(&f)?;
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        std::fs::write(&f, &data)?;
        let r = run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?;
        assert_ne!(r.code, 0, "{}", r.stdout);
        assert!(
            r.stderr.contains(name) && r.stderr.contains("meta.json records"),
            "{}",
            r.stderr
        );
        assert!(!exists(&rt, &s, &key), "{key} was published");
        assert!(!exists(&rt, &s, &format!("{base}/meta.json")));
        assert!(store_builds(&rt, &s, "c")?.is_none());
        data[mid] ^= 0xff;
        std::fs::write(&f, &data)?;
    }
    // Restored: the upload goes through, and the stale multipart upload is gone
    // (moto and Garage list unfinished uploads; s3s-fs keeps none to list).
    ok(run(cosa(&s, "cosa-upload", &t).args(["--url", &url]))?);
    assert!(exists(&rt, &s, &big));
    if kind != Kind::S3sFs {
        let l = rt.block_on(
            s.sdk()
                .list_multipart_uploads()
                .bucket(BUCKET)
                .prefix(&big)
                .send(),
        )?;
        let left: Vec<_> = l.uploads().iter().filter_map(|u| u.upload_id()).collect();
        assert!(
            !left.contains(&stale_id.as_str()),
            "stale upload kept: {left:?}"
        );
    }
    Ok(())
}

macro_rules! per_server {
    ($($test:ident),* $(,)?) => {
        mod s3s_fs {
            $( #[test] fn $test() -> anyhow::Result<()> { super::$test(super::Kind::S3sFs) } )*
        }
        mod moto {
            $( #[test] fn $test() -> anyhow::Result<()> { super::$test(super::Kind::Moto) } )*
        }
        mod garage {
            $( #[test] fn $test() -> anyhow::Result<()> { super::$test(super::Kind::Garage) } )*
        }
    };
}

per_server!(
    round_trip,
    concurrent_uploaders,
    kill_and_resume,
    corrupted_object,
    bad_credentials_and_missing_bucket,
    prune,
    changed_local_artifact,
);
