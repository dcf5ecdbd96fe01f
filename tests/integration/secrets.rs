//! No secret in any output at any log level: every binary runs at trace level (`-vv`
//! and `RUST_LOG=trace`) as in GitHub Actions, with AWS keys, a session token and a
//! GitHub token set to distinctive values, and with URLs carrying credentials
//! (`http://user:pass@...`, `?X-Amz-Signature=...`), against loopback servers that
//! really receive signed and authenticated requests. Stdout, stderr, the step summary
//! and `$GITHUB_OUTPUT` are searched for every secret.

use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use camino::{Utf8Path, Utf8PathBuf};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::{Run, TestWorkdir, bin, run, utf8};
use crate::example;
use crate::http::Server;
use crate::store_servers::{Kind, S3Server};
use crate::store_util::make_build;

const SESSION_TOKEN: &str = "COSA-SESSION-TOKEN-FwoGZXIvYXdzEJr-never-printed";
const GITHUB_TOKEN: &str = "ghp_COSAGITHUBTOKEN0123456789abcdefNEVER";
const URL_USER: &str = "cosauser";
const URL_PASS: &str = "COSA-URL-PASSWORD-hunter2";
const URL_SIG: &str = "c0sa5ec7e75169a7u7e0123456789abcdef0123456789abcdef0123456789ab";
const REPO_PASS: &str = "COSA-REPO-PASSWORD-swordfish";

/// The secrets to look for; the access key ID is the server's (it must sign for real).
fn secrets(s3: Option<&S3Server>) -> Vec<String> {
    let mut v: Vec<String> = [SESSION_TOKEN, GITHUB_TOKEN, URL_PASS, URL_SIG, REPO_PASS]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(s) = s3 {
        v.push(s.key.to_string());
        v.push(s.secret.to_string());
    }
    v
}

/// GitHub Actions files a binary writes to.
struct Ci {
    _td: tempfile::TempDir,
    dir: Utf8PathBuf,
}

impl Ci {
    fn new() -> Result<Self> {
        let td = tempfile::tempdir()?;
        let dir = utf8(td.path())?;
        Ok(Self { _td: td, dir })
    }

    /// Trace level, GitHub Actions outputs, every secret in the environment.
    fn cmd(&self, name: &str) -> Command {
        let mut c = bin(name);
        c.arg("-vv")
            .env("RUST_LOG", "trace")
            .env("GITHUB_ACTIONS", "true")
            .env("GITHUB_OUTPUT", self.dir.join("output"))
            .env("GITHUB_STEP_SUMMARY", self.dir.join("summary"))
            .env("GITHUB_TOKEN", GITHUB_TOKEN)
            .env("GH_TOKEN", GITHUB_TOKEN);
        c
    }

    /// Every byte the runs wrote to the CI files.
    fn files(&self) -> Result<String> {
        let mut all = String::new();
        for f in ["output", "summary"] {
            if let Ok(t) = std::fs::read(self.dir.join(f)) {
                all.push_str(&String::from_utf8_lossy(&t));
            }
        }
        Ok(all)
    }
}

fn check(what: &str, r: &Run, ci: &Ci, secrets: &[String]) -> Result<()> {
    let files = ci.files()?;
    for s in secrets {
        for (where_, text) in [
            ("stdout", &r.stdout),
            ("stderr", &r.stderr),
            ("CI files", &files),
        ] {
            if let Some(i) = text.find(s.as_str()) {
                let from = text[..i].rfind('\n').map_or(0, |n| n + 1);
                let to = text[i..].find('\n').map_or(text.len(), |n| i + n);
                anyhow::bail!("{what}: {s:?} in {where_}: {}", &text[from..to]);
            }
        }
    }
    ensure!(
        !r.stderr.contains("panicked"),
        "{what}: panic:\n{}",
        r.stderr
    );
    // The run really logged at trace level (otherwise the search proves little).
    ensure!(
        r.stderr.contains("TRACE") || r.stderr.contains("DEBUG"),
        "{what}: no debug/trace output:\n{}",
        r.stderr
    );
    Ok(())
}

fn ok(what: &str, r: &Run) -> Result<()> {
    ensure!(r.code == 0, "{what} failed:\n{}", r.stderr);
    Ok(())
}

/// cosa-upload, cosa-fetch and cosa-changed against s3s-fs (SigV4 checked) and moto
/// (which takes the session token), over http:// with credentials in the URL, and
/// against a GitHub release API that sees the token.
#[test]
fn store_binaries_at_trace_level_print_no_secret() -> Result<()> {
    let mut total_bytes = 0usize;
    for kind in [Kind::S3sFs, Kind::Moto] {
        let Some(s) = S3Server::start(kind)? else {
            continue;
        };
        let secrets = secrets(Some(&s));
        let ci = Ci::new()?;
        let t = TestWorkdir::new()?;
        make_build(&t, "1.0", "x86_64", &[1 << 20, 100])?;
        let url = s.url("secrets/builds");
        let with_env = |c: &mut Command| {
            s.env(c);
            // s3s-fs rejects a session token it did not issue; moto takes it.
            if kind == Kind::Moto {
                c.env("AWS_SESSION_TOKEN", SESSION_TOKEN);
            }
        };
        let mut c = ci.cmd("cosa-upload");
        with_env(&mut c);
        let r = run(c.args(["--workdir", t.root().as_str(), "--url", &url]))?;
        ok("cosa-upload", &r)?;
        check("cosa-upload", &r, &ci, &secrets)?;
        total_bytes += r.stderr.len();

        let t2 = TestWorkdir::new()?;
        let mut c = ci.cmd("cosa-fetch");
        with_env(&mut c);
        let r = run(c.args(["--workdir", t2.root().as_str(), "--url", &url]))?;
        ok("cosa-fetch", &r)?;
        check("cosa-fetch", &r, &ci, &secrets)?;

        let mut c = ci.cmd("cosa-changed");
        with_env(&mut c);
        let r = run(c.args(["--workdir", t.root().as_str(), "--against", &url]))?;
        ok("cosa-changed", &r)?;
        check("cosa-changed", &r, &ci, &secrets)?;

        // Bad credentials: the failure path prints no secret either.
        let mut c = ci.cmd("cosa-fetch");
        with_env(&mut c);
        c.env("AWS_SECRET_ACCESS_KEY", URL_PASS);
        let r = run(c.args(["--workdir", t2.root().as_str(), "--url", &url]))?;
        if kind.checks_credentials() {
            ensure!(r.code == 1, "bad secret accepted:\n{}", r.stderr);
        }
        check("cosa-fetch with a bad secret", &r, &ci, &secrets)?;
        total_bytes += r.stderr.len();
    }

    // http:// store with user:password and a presigned-style query.
    let ci = Ci::new()?;
    let td = tempfile::tempdir()?;
    let store = utf8(td.path())?;
    let t = TestWorkdir::new()?;
    make_build(&t, "1.0", "x86_64", &[1000])?;
    ok(
        "upload to a file store",
        &run(bin("cosa-upload").args(["--workdir", t.root().as_str(), "--url", store.as_str()]))?,
    )?;
    let server = Server::start(store.clone())?;
    let cred_url = format!(
        "{}/?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={URL_SIG}",
        server
            .url
            .replace("http://", &format!("http://{URL_USER}:{URL_PASS}@"))
    );
    let secrets = secrets(None);
    let t2 = TestWorkdir::new()?;
    let r = run(ci
        .cmd("cosa-fetch")
        .args(["--workdir", t2.root().as_str(), "--url", &cred_url]))?;
    ok("cosa-fetch over http with credentials", &r)?;
    check("cosa-fetch over http", &r, &ci, &secrets)?;
    ensure!(
        !server.requests().is_empty(),
        "the http store saw no request"
    );
    let r =
        run(ci
            .cmd("cosa-changed")
            .args(["--workdir", t.root().as_str(), "--against", &cred_url]))?;
    ok("cosa-changed over http", &r)?;
    check("cosa-changed over http", &r, &ci, &secrets)?;
    // A store that is not there: the error names it, without the credentials.
    let gone = cred_url.replace(server.url.trim_start_matches("http://"), "127.0.0.1:9");
    let r = run(ci
        .cmd("cosa-fetch")
        .args(["--workdir", t2.root().as_str(), "--url", &gone]))?;
    ensure!(r.code == 1, "unreachable store:\n{}", r.stderr);
    check("cosa-fetch of an unreachable store", &r, &ci, &secrets)?;
    let r = run(ci
        .cmd("cosa-upload")
        .args(["--workdir", t.root().as_str(), "--url", &cred_url]))?;
    ensure!(r.code == 1, "upload to http:// accepted:\n{}", r.stderr);
    check("cosa-upload to http", &r, &ci, &secrets)?;

    // gh-release: the fake API sees the token, the output never does.
    let rt = tokio::runtime::Runtime::new()?;
    let gh = rt.block_on(MockServer::start());
    let seen = SeenTokens::default();
    rt.block_on(Mock::given(any()).respond_with(seen.clone()).mount(&gh));
    for (name, wd) in [("cosa-upload", &t), ("cosa-fetch", &t2)] {
        let r = run(ci.cmd(name).env("GITHUB_API_URL", gh.uri()).args([
            "--workdir",
            wd.root().as_str(),
            "--url",
            "gh-release://o/r/t",
        ]))?;
        ensure!(
            r.code == 1,
            "{name} against a missing release:\n{}",
            r.stderr
        );
        check(&format!("{name} gh-release"), &r, &ci, &secrets)?;
    }
    let seen = seen.0.lock().map(|v| v.clone()).unwrap_or_default();
    ensure!(
        seen.iter().any(|a| a.contains(GITHUB_TOKEN)),
        "the token was never sent: {seen:?}"
    );
    eprintln!("searched {total_bytes} bytes of S3 trace output");
    Ok(())
}

/// Authorization headers the fake GitHub API received; it knows no release.
#[derive(Clone, Default)]
struct SeenTokens(Arc<Mutex<Vec<String>>>);

impl Respond for SeenTokens {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        if let Some(a) = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            && let Ok(mut v) = self.0.lock()
        {
            v.push(a.to_string());
        }
        ResponseTemplate::new(404).set_body_json(serde_json::json!({"message": "Not Found"}))
    }
}

/// cosa-compose (its repo's URL carrying a password), cosa-image and cosa-extend at
/// trace level with every secret in the environment.
#[test]
fn build_binaries_at_trace_level_print_no_secret() -> Result<()> {
    let td = tempfile::Builder::new()
        .prefix("cosa-secrets.")
        .tempdir_in("/var/tmp")?;
    let root = utf8(td.path())?.join("w");
    let served = utf8(td.path())?.join("served");
    example::publish(&example::repo(&[])?, &served)?;
    let server = Server::start(served)?;
    let repo_url = server
        .url
        .replace("http://", &format!("http://{URL_USER}:{REPO_PASS}@"));
    example::init_workdir(&root, &repo_url)?;
    let ci = Ci::new()?;
    let secrets = secrets(None);
    let with_aws = |c: &mut Command| {
        c.env("AWS_ACCESS_KEY_ID", "AKIACOSANEVERPRINTED1")
            .env("AWS_SECRET_ACCESS_KEY", URL_SIG)
            .env("AWS_SESSION_TOKEN", SESSION_TOKEN);
    };
    let mut all = secrets.clone();
    all.push("AKIACOSANEVERPRINTED1".into());
    let steps: [(&str, &[&str]); 3] = [
        ("cosa-compose", &[]),
        ("cosa-image", &["--platform", "qemu"]),
        ("cosa-extend", &["--platform", "openstack"]),
    ];
    for (name, args) in steps {
        let mut c = ci.cmd(name);
        with_aws(&mut c);
        let r = run(c.arg("--workdir").arg(root.as_str()).args(args))?;
        ok(name, &r)?;
        check(name, &r, &ci, &all)?;
    }
    ensure!(
        server.requests().iter().any(|p| p.contains("repodata")),
        "compose never fetched from the repo"
    );
    check_summary_written(&ci.dir)?;
    Ok(())
}

fn check_summary_written(dir: &Utf8Path) -> Result<()> {
    let out = std::fs::read_to_string(dir.join("output")).context("no $GITHUB_OUTPUT")?;
    ensure!(out.contains("build="), "$GITHUB_OUTPUT: {out}");
    Ok(())
}
