//! cosa-fetch from an http(s):// store: a loopback server that serves a store
//! directory and injects faults (503 storms, bodies cut short), and checks that
//! fetches retry a bounded number of times, resume, and never print credentials.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use camino::Utf8PathBuf;

use crate::common::{Run, TestWorkdir, bin, run, utf8};
use crate::store_util::{assert_same_tree, make_build};

#[derive(Default)]
struct Faults {
    /// Path -> how many more requests get a 503.
    unavailable: HashMap<String, usize>,
    /// Path -> how many more responses are cut at half their body.
    truncate: HashMap<String, usize>,
    /// (method, path, range) of every request.
    log: Vec<(String, String, Option<String>)>,
}

struct FaultServer {
    url: String,
    faults: Arc<Mutex<Faults>>,
}

impl FaultServer {
    fn start(root: Utf8PathBuf) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f2 = faults.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (root, f) = (root.clone(), f2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &f);
                });
            }
        });
        Ok(Self {
            url: format!("http://127.0.0.1:{}/store/", addr.port()),
            faults,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Faults) -> T) -> T {
        let mut g = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
}

fn serve(mut conn: TcpStream, root: &Utf8PathBuf, faults: &Mutex<Faults>) -> Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/");
    let path = path.split('?').next().unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    let (fail, cut) = {
        let mut f = faults.lock().unwrap_or_else(|e| e.into_inner());
        f.log.push((method.clone(), path.clone(), range.clone()));
        let fail = f
            .unavailable
            .get_mut(&path)
            .filter(|n| **n > 0)
            .map(|n| *n -= 1)
            .is_some();
        let cut = !fail
            && method == "GET"
            && f.truncate
                .get_mut(&path)
                .filter(|n| **n > 0)
                .map(|n| *n -= 1)
                .is_some();
        (fail, cut)
    };
    if fail {
        conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let rel = path.strip_prefix("/store/").unwrap_or("");
    let file = root.join(rel);
    if rel.split('/').any(|c| c == "..") || !file.is_file() {
        conn.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let body = std::fs::read(&file)?;
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|s| *s <= body.len());
    let (status, slice) = match start {
        Some(s) => ("206 Partial Content", &body[s..]),
        None => ("200 OK", &body[..]),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        slice.len()
    )?;
    if method != "HEAD" {
        let n = if cut { slice.len() / 2 } else { slice.len() };
        conn.write_all(&slice[..n])?;
    }
    Ok(())
}

/// A store with build 1.0 (artifacts of 3 MiB and 10 bytes), served over HTTP.
fn setup() -> Result<(tempfile::TempDir, TestWorkdir, FaultServer)> {
    let td = tempfile::tempdir()?;
    let store = utf8(td.path())?;
    let t = TestWorkdir::new()?;
    make_build(&t, "1.0", "x86_64", &[3 << 20, 10])?;
    let r =
        run(bin("cosa-upload").args(["--workdir", t.root().as_str(), "--url", store.as_str()]))?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let s = FaultServer::start(store)?;
    Ok((td, t, s))
}

fn fetch(t: &TestWorkdir, url: &str) -> Result<Run> {
    run(bin("cosa-fetch").args([
        "--workdir",
        t.root().as_str(),
        "--url",
        url,
        "--arch",
        "x86_64",
        "--artifact",
        "all",
    ]))
}

#[test]
fn fetch_over_http_with_503s_and_cut_bodies() -> Result<()> {
    let (_td, t, s) = setup()?;
    let big = "/store/1.0/x86_64/example-os-1.0-a0.x86_64.raw";
    s.with(|f| {
        f.unavailable.insert("/store/builds.json".into(), 3);
        f.unavailable
            .insert("/store/1.0/x86_64/meta.json".into(), 2);
        f.unavailable.insert(big.into(), 2);
        f.truncate.insert(big.into(), 2);
    });
    let t2 = TestWorkdir::new()?;
    let r = fetch(&t2, &s.url)?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_same_tree(
        &t.wd.build_arch_dir("1.0", "x86_64")?,
        &t2.wd.build_arch_dir("1.0", "x86_64")?,
    )?;
    assert_eq!(t2.wd.latest_id()?.as_deref(), Some("1.0"));
    // The cut body was continued with a Range request, not fetched again whole.
    let ranges = s.with(|f| {
        f.log
            .iter()
            .filter(|(_, p, r)| p == big && r.is_some())
            .count()
    });
    assert!(ranges >= 1, "no resumed request");
    Ok(())
}

#[test]
fn a_503_storm_fails_after_bounded_retries() -> Result<()> {
    let (_td, _t, s) = setup()?;
    s.with(|f| f.unavailable.insert("/store/builds.json".into(), 1000));
    let t2 = TestWorkdir::new()?;
    let r = fetch(&t2, &s.url)?;
    assert_eq!(r.code, 1);
    let line = r.error_line();
    assert!(
        line.contains("503") && line.contains("giving up after"),
        "{line}"
    );
    let tries = s.with(|f| f.log.len());
    assert!((2..=10).contains(&tries), "{tries} requests");
    Ok(())
}

#[test]
fn credentials_in_the_url_are_never_printed() -> Result<()> {
    let (_td, t, s) = setup()?;
    let url = s.url.replace("http://", "http://cosa:hunter2@") + "?token=sekrit";
    s.with(|f| f.unavailable.insert("/store/builds.json".into(), 1000));
    let t2 = TestWorkdir::new()?;
    let mut c = bin("cosa-fetch");
    c.args(["-vv", "--workdir", t2.root().as_str(), "--url", &url]);
    let r = run(&mut c)?;
    assert_eq!(r.code, 1);
    for secret in ["hunter2", "sekrit"] {
        assert!(
            !r.stderr.contains(secret) && !r.stdout.contains(secret),
            "{secret} printed:\n{}",
            r.stderr
        );
    }
    // Read-only: uploading there is refused.
    let r = run(bin("cosa-upload").args(["--workdir", t.root().as_str(), "--url", &url]))?;
    assert_eq!(r.code, 1);
    let line = r.error_line();
    assert!(
        line.contains("read-only") && !line.contains("hunter2"),
        "{line}"
    );
    Ok(())
}
