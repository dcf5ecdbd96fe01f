//! `cosa-changed` as CI runs it.

use anyhow::Result;

use crate::common::{TestWorkdir, bin, file_store, run};

fn changed(t: &TestWorkdir, args: &[&str]) -> Result<crate::common::Run> {
    run(bin("cosa-changed")
        .arg("--workdir")
        .arg(t.root().as_str())
        .args(args))
}

#[test]
fn since_compares_latest() -> Result<()> {
    let t = TestWorkdir::new()?;
    // No builds at all: nothing changed since "none".
    let r = changed(&t, &["--since", "none"])?;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "changed=false\nbuild=\nprevious=\n"),
        "{}",
        r.stderr
    );
    t.add_build("1.0", "x86_64")?;
    let r = changed(&t, &["--since", "none"])?;
    assert_eq!(r.stdout, "changed=true\nbuild=1.0\nprevious=\n");
    let r = changed(&t, &["--since", "1.0"])?;
    assert_eq!(r.stdout, "changed=false\nbuild=1.0\nprevious=1.0\n");
    t.add_build("1.1", "x86_64")?;
    let r = changed(&t, &["--since", "1.0"])?;
    assert_eq!(r.stdout, "changed=true\nbuild=1.1\nprevious=1.0\n");
    Ok(())
}

#[test]
fn github_output_dotenv_json_and_exit_code() -> Result<()> {
    let t = TestWorkdir::new()?;
    t.add_build("1.0", "x86_64")?;
    let gh = t.root().join("gh-output");
    std::fs::write(&gh, "earlier=step\n")?;
    let env = t.root().join("cosa.env");
    let r = run(bin("cosa-changed").env("GITHUB_OUTPUT", gh.as_str()).args([
        "--workdir",
        t.root().as_str(),
        "--since",
        "0.9",
        "--dotenv",
        env.as_str(),
    ]))?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Appended, not overwritten: other steps write the same file.
    assert_eq!(
        std::fs::read_to_string(&gh)?,
        "earlier=step\nchanged=true\nbuild=1.0\nprevious=0.9\n"
    );
    assert_eq!(
        std::fs::read_to_string(&env)?,
        "COSA_CHANGED=true\nCOSA_BUILD=1.0\nCOSA_PREVIOUS=0.9\n"
    );
    let r = changed(&t, &["--since", "1.0", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(
        v,
        serde_json::json!({"changed": false, "build": "1.0", "previous": "1.0"})
    );
    // --exit-code: 3 when unchanged, 0 when changed; both distinct from errors (1).
    assert_eq!(changed(&t, &["--since", "1.0", "--exit-code"])?.code, 3);
    assert_eq!(changed(&t, &["--since", "0.9", "--exit-code"])?.code, 0);
    // COSA_WORKDIR stands in for --workdir.
    let r = run(bin("cosa-changed")
        .env("COSA_WORKDIR", t.root().as_str())
        .args(["--since", "1.0"]))?;
    assert_eq!(r.stdout, "changed=false\nbuild=1.0\nprevious=1.0\n");
    Ok(())
}

#[test]
fn against_a_file_store() -> Result<()> {
    let t = TestWorkdir::new()?;
    t.add_build("1.0", "x86_64")?;
    t.add_build("1.1", "x86_64")?;
    let store = t.root().join("store");
    // Empty store: changed.
    std::fs::create_dir_all(&store)?;
    let url = format!("file://{store}");
    let r = changed(&t, &["--against", &url, "--arch", "x86_64"])?;
    assert_eq!(
        r.stdout, "changed=true\nbuild=1.1\nprevious=\n",
        "{}",
        r.stderr
    );
    // Store has an older build only: changed, previous is the store's latest.
    file_store(&store, &[("1.0", "x86_64")])?;
    let r = changed(&t, &["--against", &url, "--arch", "x86_64"])?;
    assert_eq!(r.stdout, "changed=true\nbuild=1.1\nprevious=1.0\n");
    // Store has 1.1 but for another arch only: still changed for x86_64.
    file_store(&store, &[("1.0", "x86_64"), ("1.1", "aarch64")])?;
    assert!(
        changed(&t, &["--against", &url, "--arch", "x86_64"])?
            .stdout
            .starts_with("changed=true")
    );
    // Store has our latest: unchanged. A plain path works as a URL too.
    file_store(&store, &[("1.0", "x86_64"), ("1.1", "x86_64")])?;
    let r = changed(&t, &["--against", store.as_str(), "--arch", "x86_64"])?;
    assert_eq!(r.stdout, "changed=false\nbuild=1.1\nprevious=1.1\n");
    Ok(())
}

#[test]
fn bad_input_gives_one_clear_line() -> Result<()> {
    let t = TestWorkdir::new()?;
    t.add_build("1.0", "x86_64")?;
    let store = t.root().join("store");

    // Missing store directory.
    let r = changed(&t, &["--against", &format!("file://{store}")])?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("no such directory"), "{}", r.stderr);
    assert!(r.stdout.is_empty());

    // Malformed builds.json in the store names file, line and column.
    std::fs::create_dir_all(&store)?;
    std::fs::write(
        store.join("builds.json"),
        "{\n  \"schema-version\": \"1.0.0\",\n  \"builds\": [,]\n}\n",
    )?;
    let r = changed(&t, &["--against", store.as_str()])?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("builds.json:3:"), "{}", r.stderr);

    // Traversal in a store's builds.json.
    std::fs::write(
        store.join("builds.json"),
        r#"{"schema-version":"1.0.0","builds":[{"id":"../../etc","arches":["x86_64"]}]}"#,
    )?;
    let r = changed(&t, &["--against", store.as_str()])?;
    assert!(r.error_line().contains("invalid build ID"), "{}", r.stderr);

    // Unsupported store scheme.
    let r = changed(&t, &["--against", "ftp://x/y"])?;
    assert!(r.error_line().contains("ftp://"), "{}", r.stderr);

    // Traversal in --since.
    let r = changed(&t, &["--since", "../x"])?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("invalid build ID"));

    // Dangling latest.
    std::fs::remove_dir_all(t.wd.build_dir("1.0")?)?;
    let r = changed(&t, &["--since", "none"])?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("does not exist"), "{}", r.stderr);

    // Missing work directory.
    let r = run(bin("cosa-changed").args(["--workdir", "/nonexistent/wd", "--since", "none"]))?;
    assert_eq!(r.code, 1);
    assert!(r.error_line().contains("/nonexistent/wd"));

    // Usage errors are exit code 2.
    assert_eq!(changed(&t, &["--bogus"])?.code, 2);
    assert_eq!(changed(&t, &[])?.code, 2);
    Ok(())
}

#[test]
fn github_annotation_on_error() -> Result<()> {
    let t = TestWorkdir::new()?;
    let r = run(bin("cosa-changed").env("GITHUB_ACTIONS", "true").args([
        "--workdir",
        t.root().as_str(),
        "--since",
        "a/b",
    ]))?;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("::error::") && l.contains("a/b")),
        "{}",
        r.stderr
    );
    Ok(())
}
