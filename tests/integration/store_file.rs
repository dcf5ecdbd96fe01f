//! cosa-upload and cosa-fetch with a file:// store (and plain paths): round trip,
//! concurrency, pruning, the local builds.json guard, --dry-run, --artifact,
//! --find-build-for-arch, --decompress and hostile store contents.

use std::process::Command;

use anyhow::{Context, Result};
use camino::{Utf8Path, Utf8PathBuf};
use cosa::builds::BuildsJson;
use cosa::meta::Meta;
use sha2::{Digest, Sha256};

use crate::common::{Run, TestWorkdir, bin, run, utf8};
use crate::store_util::{assert_same_tree, make_build};

fn cosa(name: &str, t: &TestWorkdir) -> Command {
    let mut c = bin(name);
    c.arg("--workdir").arg(t.root().as_str());
    c
}

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    r
}

fn store_dir() -> Result<(tempfile::TempDir, Utf8PathBuf)> {
    let td = tempfile::tempdir()?;
    let p = utf8(td.path())?;
    Ok((td, p))
}

fn read_store_builds(dir: &Utf8Path) -> Result<BuildsJson> {
    BuildsJson::parse(&std::fs::read(dir.join("builds.json"))?, "builds.json")
}

/// Build 1.0 for x86_64 with artifacts of `sizes`, uploaded to a new file:// store:
/// the store's directory (removed when dropped), its URL, the work directory and
/// the build's meta.json.
fn uploaded_build(sizes: &[u64]) -> Result<(tempfile::TempDir, String, TestWorkdir, Meta)> {
    let (td, store) = store_dir()?;
    let url = format!("file://{store}");
    let t = TestWorkdir::new()?;
    let meta = make_build(&t, "1.0", "x86_64", sizes)?;
    ok(run(cosa("cosa-upload", &t).args(["--url", &url]))?);
    Ok((td, url, t, meta))
}

/// Build 1.0 for x86_64 as fetched into `w` is the one uploaded from `t`.
fn assert_fetched(t: &TestWorkdir, w: &TestWorkdir) -> Result<()> {
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &w.wd.build_arch_dir("1.0", "x86_64")?,
    )
}

/// The system calls `trace` (strace's `-e trace=` list) that cosa-fetch made on
/// files under their partial name.
fn partial_calls(t: &TestWorkdir, url: &str, extra: &[&str], trace: &str) -> Result<Vec<String>> {
    let log = t.root().join("strace.log");
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-y", "-e"])
        .arg(format!("trace={trace}"))
        .args(["-o", log.as_str()]);
    let exe = bin("cosa-fetch");
    c.arg(exe.get_program())
        .envs(exe.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .args(["--workdir", t.root().as_str(), "--url", url])
        .args(["--artifact", "all", "--arch", "x86_64"])
        .args(extra);
    for k in exe.get_envs().filter(|(_, v)| v.is_none()).map(|(k, _)| k) {
        c.env_remove(k);
    }
    ok(run(&mut c)?);
    let text = std::fs::read_to_string(&log)?;
    Ok(text
        .lines()
        .filter(|l| l.contains(".partial>"))
        .map(str::to_string)
        .collect())
}

/// By default fetched artifacts are renamed into place without an fsync (as the
/// awscli and coreos-assembler leave theirs); `--sync` fsyncs each one first.
#[test]
fn fetch_syncs_only_with_sync() -> Result<()> {
    let (_td, url, t, _) = uploaded_build(&[3 << 20, 10, 0])?;
    let fsyncs = "fsync,fdatasync";
    let t2 = TestWorkdir::new()?;
    assert_eq!(partial_calls(&t2, &url, &[], fsyncs)?.len(), 0);
    let t3 = TestWorkdir::new()?;
    assert_eq!(partial_calls(&t3, &url, &["--sync"], fsyncs)?.len(), 3);
    for w in [&t2, &t3] {
        assert_fetched(&t, w)?;
    }
    Ok(())
}

/// Artifacts are written with direct I/O by default (the test directories are on
/// the machine's disk, which takes it), through the page cache with --buffered;
/// both give the same files.
#[test]
fn fetch_writes_direct_unless_buffered() -> Result<()> {
    let (_td, url, t, _) = uploaded_build(&[(9 << 20) + 4321, 5000, 0])?;
    let direct = |calls: &[String]| {
        calls
            .iter()
            .filter(|l| l.contains("F_SETFL") && l.contains("O_DIRECT"))
            .count()
    };
    let t2 = TestWorkdir::new()?;
    let calls = partial_calls(&t2, &url, &[], "fcntl")?;
    assert_eq!(direct(&calls), 3, "{calls:#?}");
    let t3 = TestWorkdir::new()?;
    let calls = partial_calls(&t3, &url, &["--buffered"], "fcntl")?;
    assert_eq!(direct(&calls), 0, "{calls:#?}");
    for w in [&t2, &t3] {
        assert_fetched(&t, w)?;
    }
    Ok(())
}

/// A partial file left by a killed fetch is continued, not started over: from its
/// last whole 4 KiB block with direct I/O, from its last byte with --buffered. A
/// partial file whose bytes are wrong fails the sha256 check, is removed, and the
/// next run fetches the file whole.
#[test]
fn fetch_continues_a_partial_file() -> Result<()> {
    let (_td, url, t, meta) = uploaded_build(&[(6 << 20) + 77])?;
    let name = &meta.images["a0"].path;
    let data = std::fs::read(t.wd.build_arch_dir("1.0", "x86_64")?.join(name))?;
    let have = (3 << 20) + 1234;
    let fetch = |w: &TestWorkdir, extra: &[&str]| {
        run(cosa("cosa-fetch", w)
            .args(["--url", &url, "--artifact", "all", "--arch", "x86_64"])
            .args(extra))
    };
    let place = |w: &TestWorkdir, bytes: &[u8]| -> Result<Utf8PathBuf> {
        let dir = w.wd.build_arch_dir("1.0", "x86_64")?;
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!(".cosa-tmp.{name}.partial")), bytes)?;
        Ok(dir)
    };
    for (extra, from) in [(&[][..], 3 << 20), (&["--buffered"][..], have)] {
        let w = TestWorkdir::new()?;
        place(&w, &data[..have])?;
        let r = ok(fetch(&w, extra)?);
        let said = format!("resuming at byte {from} of {}", data.len());
        assert!(r.stderr.contains(&said), "{extra:?}: {}", r.stderr);
        assert_fetched(&t, &w)?;
    }
    let w = TestWorkdir::new()?;
    let mut wrong = data[..have].to_vec();
    wrong[100] ^= 1;
    let dir = place(&w, &wrong)?;
    let r = fetch(&w, &[])?;
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("sha256 mismatch"), "{}", r.stderr);
    assert!(!dir.join(name).exists());
    assert!(!dir.join(format!(".cosa-tmp.{name}.partial")).exists());
    ok(fetch(&w, &[])?);
    assert_fetched(&t, &w)
}

#[test]
fn round_trip_and_skip() -> Result<()> {
    let (_td, store) = store_dir()?;
    let url = format!("file://{store}");
    let t = TestWorkdir::new()?;
    make_build(&t, "1.0", "x86_64", &[5 << 20, 10, 0])?;
    let r = ok(run(cosa("cosa-upload", &t).args(["--url", &url]))?);
    assert!(r.stdout.contains("uploaded=5\nskipped=0"), "{}", r.stdout);
    // The recorded sha256 (an xattr here) spares the second copy.
    let r = ok(run(cosa("cosa-upload", &t).args(["--url", store.as_str()]))?);
    assert!(r.stdout.contains("skipped=3"), "{}", r.stdout);
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &store.join("1.0/x86_64"),
    )?;
    let t2 = TestWorkdir::new()?;
    ok(run(cosa("cosa-fetch", &t2).args([
        "--url",
        &url,
        "--artifact",
        "all",
        "--arch",
        "x86_64",
    ]))?);
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &t2.wd.build_arch_dir("1.0", "x86_64")?,
    )?;
    // A rerun fetches nothing: every file is verified in place.
    let r = ok(run(cosa("cosa-fetch", &t2).args([
        "--url",
        &url,
        "--artifact",
        "all",
        "--arch",
        "x86_64",
    ]))?);
    assert_eq!(
        r.stderr.matches("already here and verified").count(),
        3,
        "{}",
        r.stderr
    );
    Ok(())
}

#[test]
fn concurrent_uploaders_file_store() -> Result<()> {
    let (_td, store) = store_dir()?;
    let arches = ["x86_64", "aarch64"];
    let mut wds = Vec::new();
    for i in 0..16 {
        let t = TestWorkdir::new()?;
        t.add_build(&format!("{}.0", i / 2 + 1), arches[i % 2])?;
        wds.push(t);
    }
    for round in 0..10 {
        let dir = store.join(round.to_string());
        std::fs::create_dir_all(&dir)?;
        let children = wds
            .iter()
            .map(|t| {
                cosa("cosa-upload", t)
                    .args(["--url", dir.as_str()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .context("starting cosa-upload")
            })
            .collect::<Result<Vec<_>>>()?;
        for c in children {
            let o = c.wait_with_output()?;
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
        let b = read_store_builds(&dir)?;
        for i in 0..16 {
            assert!(
                b.has(&format!("{}.0", i / 2 + 1), arches[i % 2]),
                "round {round}: {:?}",
                b.builds
            );
        }
    }
    Ok(())
}

#[test]
fn prune_tombstones_then_deletes() -> Result<()> {
    let (_td, store) = store_dir()?;
    let t = TestWorkdir::new()?;
    for id in ["1", "2", "3", "4"] {
        make_build(&t, id, "x86_64", &[100])?;
        ok(run(cosa("cosa-upload", &t).args(["--url", store.as_str()]))?);
    }
    let r = ok(run(bin("cosa-upload").args([
        "prune",
        "--url",
        store.as_str(),
        "--keep-last-n",
        "2",
        "--dry-run",
    ]))?);
    assert_eq!(r.stdout, "pruned=2,1\n");
    assert!(store.join("1/x86_64/meta.json").exists());
    let r = ok(run(bin("cosa-upload").args([
        "prune",
        "--url",
        store.as_str(),
        "--keep-last-n",
        "2",
    ]))?);
    assert_eq!(r.stdout, "pruned=2,1\n");
    let b = read_store_builds(&store)?;
    let ids: Vec<_> = b.builds.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["4", "3"]);
    let tomb: Vec<_> = b.extra["tombstone-builds"]
        .as_array()
        .context("tombstone-builds")?
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(tomb, ["2", "1"]);
    assert!(!store.join("1").exists() && !store.join("2").exists());
    assert!(store.join("3/x86_64/meta.json").exists());
    Ok(())
}

#[test]
fn fetch_guards_local_builds_and_moves_latest() -> Result<()> {
    let (_td, store) = store_dir()?;
    let t = TestWorkdir::new()?;
    make_build(&t, "1", "x86_64", &[10])?;
    make_build(&t, "2", "x86_64", &[10])?;
    ok(run(cosa("cosa-upload", &t).args([
        "--url",
        store.as_str(),
        "--build",
        "1",
    ]))?);
    ok(run(cosa("cosa-upload", &t).args([
        "--url",
        store.as_str(),
        "--build",
        "2",
    ]))?);

    // A work directory with a build the store lacks is not overwritten.
    let t2 = TestWorkdir::new()?;
    t2.add_build("9", "x86_64")?;
    let r = run(cosa("cosa-fetch", &t2).args(["--url", store.as_str(), "--arch", "x86_64"]))?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("9/x86_64"), "{}", r.stderr);
    assert!(t2.wd.read_builds()?.has("9", "x86_64"));
    ok(run(cosa("cosa-fetch", &t2).args([
        "--url",
        store.as_str(),
        "--arch",
        "x86_64",
        "--force",
    ]))?);
    assert_eq!(t2.wd.latest_id()?.as_deref(), Some("2"));

    // An older build does not move latest.
    let t3 = TestWorkdir::new()?;
    let r = ok(run(cosa("cosa-fetch", &t3).args([
        "--url",
        store.as_str(),
        "--arch",
        "x86_64",
        "--build",
        "1",
    ]))?);
    assert!(r.stdout.contains("latest=false"), "{}", r.stdout);
    assert_eq!(t3.wd.latest_id()?, None);
    assert!(t3.wd.meta_path("1", "x86_64")?.exists());
    // Metadata only by default.
    assert!(
        !t3.wd
            .build_arch_dir("1", "x86_64")?
            .join("example-os-1-a0.x86_64.raw")
            .exists()
    );
    Ok(())
}

#[test]
fn dry_run_artifact_subset_and_find_build_for_arch() -> Result<()> {
    let (_td, store) = store_dir()?;
    let t = TestWorkdir::new()?;
    make_build(&t, "1", "x86_64", &[10, 20])?;
    let r = ok(run(cosa("cosa-upload", &t).args([
        "--url",
        store.as_str(),
        "--dry-run",
    ]))?);
    assert!(r.stderr.contains("would upload"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_dir(&store)?.count(),
        0,
        "--dry-run wrote to the store"
    );

    // Only a1: the store's meta.json lists only what the store has.
    ok(run(cosa("cosa-upload", &t).args([
        "--url",
        store.as_str(),
        "--artifact",
        "a1",
    ]))?);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("1/x86_64/meta.json"))?)?;
    let keys: Vec<_> = m["images"]
        .as_object()
        .context("images")?
        .keys()
        .cloned()
        .collect();
    assert_eq!(keys, ["a1"]);
    let r = run(cosa("cosa-upload", &t).args(["--url", store.as_str(), "--artifact", "nope"]))?;
    assert!(r.error_line().contains("nope"), "{}", r.stderr);

    // Build 2 for aarch64 only: the newest x86_64 build is 1.
    let t2 = TestWorkdir::new()?;
    make_build(&t2, "2", "aarch64", &[10])?;
    ok(run(
        cosa("cosa-upload", &t2).args(["--url", store.as_str()])
    )?);
    let t3 = TestWorkdir::new()?;
    let r = run(cosa("cosa-fetch", &t3).args(["--url", store.as_str(), "--arch", "x86_64"]))?;
    assert!(
        r.error_line().contains("--find-build-for-arch"),
        "{}",
        r.stderr
    );
    let r = ok(run(cosa("cosa-fetch", &t3).args([
        "--url",
        store.as_str(),
        "--arch",
        "x86_64",
        "--find-build-for-arch",
    ]))?);
    assert!(r.stdout.contains("build=1\n"), "{}", r.stdout);
    let r = ok(run(cosa("cosa-fetch", &t3).args([
        "--url",
        store.as_str(),
        "--arch",
        "all",
    ]))?);
    assert!(
        r.stdout.contains("build=2\narches=aarch64\n"),
        "{}",
        r.stdout
    );
    Ok(())
}

#[test]
fn decompress() -> Result<()> {
    let (_td, store) = store_dir()?;
    let t = TestWorkdir::new()?;
    let meta = make_build(&t, "1", "x86_64", &[100_000])?;
    // Compress a0 as `cosa compress` would, and record it in meta.json.
    let dir = t.wd.build_arch_dir("1", "x86_64")?;
    let raw = &meta.images["a0"].path;
    let st = Command::new("xz")
        .args(["-k", "-T1"])
        .arg(dir.join(raw))
        .status()?;
    assert!(st.success());
    std::fs::remove_file(dir.join(raw))?;
    let xz = format!("{raw}.xz");
    let data = std::fs::read(dir.join(&xz))?;
    let mut m = meta.clone();
    let a = m.images.get_mut("a0").context("a0")?;
    a.uncompressed_sha256 = Some(a.sha256.clone());
    a.uncompressed_size = a.size;
    a.path = xz.clone();
    a.sha256 = hex::encode(Sha256::digest(&data));
    a.size = Some(data.len() as u64);
    let lock = t.wd.lock()?;
    t.wd.write_meta(&m, "x86_64", &lock)?;
    drop(lock);
    ok(run(cosa("cosa-upload", &t).args(["--url", store.as_str()]))?);

    let t2 = TestWorkdir::new()?;
    ok(run(cosa("cosa-fetch", &t2).args([
        "--url",
        store.as_str(),
        "--arch",
        "x86_64",
        "--artifact",
        "a0",
        "--decompress",
    ]))?);
    let d2 = t2.wd.build_arch_dir("1", "x86_64")?;
    assert!(!d2.join(&xz).exists());
    let got = t2.wd.read_meta("1", "x86_64")?;
    assert_eq!(got.images["a0"].path, *raw);
    assert_eq!(got.images["a0"].sha256, meta.images["a0"].sha256);
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(d2.join(raw))?)),
        meta.images["a0"].sha256
    );
    Ok(())
}

#[test]
fn hostile_store_contents() -> Result<()> {
    let (_td, store) = store_dir()?;
    let t = TestWorkdir::new()?;
    make_build(&t, "1", "x86_64", &[10])?;
    ok(run(cosa("cosa-upload", &t).args(["--url", store.as_str()]))?);
    let fetch = |t: &TestWorkdir| {
        run(cosa("cosa-fetch", t).args([
            "--url",
            store.as_str(),
            "--arch",
            "x86_64",
            "--artifact",
            "all",
        ]))
    };

    // Traversal in an artifact path of the store's meta.json.
    let mp = store.join("1/x86_64/meta.json");
    let good = std::fs::read(&mp)?;
    let mut m: serde_json::Value = serde_json::from_slice(&good)?;
    m["images"]["a0"]["path"] = "../../../../escape".into();
    std::fs::write(&mp, serde_json::to_vec(&m)?)?;
    let t2 = TestWorkdir::new()?;
    let r = fetch(&t2)?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("images.a0"), "{}", r.stderr);
    // A meta.json for another build.
    m["images"]["a0"]["path"] = "x".into();
    m["buildid"] = "2".into();
    std::fs::write(&mp, serde_json::to_vec(&m)?)?;
    assert!(fetch(&t2)?.error_line().contains("buildid"));
    std::fs::write(&mp, &good)?;

    // Traversal in builds.json.
    let bp = store.join("builds.json");
    std::fs::write(
        &bp,
        r#"{"schema-version":"1.0.0","builds":[{"id":"../../..","arches":["x86_64"]}]}"#,
    )?;
    let r = fetch(&t2)?;
    assert!(r.error_line().contains("invalid build ID"), "{}", r.stderr);
    // Garbage.
    std::fs::write(&bp, "{\"schema-version\": \"1.0.0\", \"builds\": [")?;
    assert!(fetch(&t2)?.error_line().contains("builds.json:1:"));
    // Nothing was written outside the work directory's builds/.
    assert!(
        !t2.root()
            .parent()
            .context("parent")?
            .join("escape")
            .exists()
    );
    assert!(t2.wd.read_builds()?.builds.is_empty());

    // An unknown scheme, and a missing store.
    let r = run(cosa("cosa-fetch", &t2).args(["--url", "ftp://h/x"]))?;
    assert!(r.error_line().contains("ftp://"));
    let r = run(cosa("cosa-upload", &t).args(["--url", "/nonexistent/store"]))?;
    assert!(r.error_line().contains("no such directory"), "{}", r.stderr);
    Ok(())
}
