//! cosa-upload and cosa-fetch through a fault-injecting HTTP proxy on loopback, in
//! front of a real S3 server (s3s-fs; moto for a subset): connection resets (before
//! and after the server applied the request), 500, 503 SlowDown, stalls shorter and
//! longer than the client's read timeout, and bodies cut short, at each step of an
//! upload and a fetch (artifact, meta.json, builds.json; matched by method and key).
//!
//! A fault that fires a few times must end in success (bounded retries with backoff);
//! one that never stops must end in exactly one `error:` line naming the object,
//! after a bounded number of requests. Either way the store is consistent afterwards
//! (every builds.json entry has its meta.json and artifacts with matching sha256),
//! no local file sits half-written under its final name, and a rerun without
//! faults succeeds.
//!
//! The proxy is bounded: it serves at most [`MAX_CONNECTIONS`] connections, stalls
//! at most [`STALL_LONG`], and stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use camino::Utf8Path;

use crate::common::{Run, TestWorkdir, bin, run};
use crate::consistency::{check_s3_store, check_workdir};
use crate::store_servers::{Kind, S3Server};
use crate::store_util::{assert_same_tree, make_build};

/// The S3 client's read timeout in these tests (`COSA_STORE_READ_TIMEOUT`, seconds).
const READ_TIMEOUT_SECS: u64 = 3;
/// A stall the client waits out.
const STALL_SHORT: Duration = Duration::from_millis(1500);
/// A stall the client gives up on (then the request still reaches the server).
const STALL_LONG: Duration = Duration::from_secs(2 * READ_TIMEOUT_SECS);
/// The proxy stops accepting after this many connections.
const MAX_CONNECTIONS: usize = 2000;
/// A fault that "never stops" fires this many times (more than any retry budget).
const ALWAYS: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// TCP RST before the request reaches the server.
    Reset,
    /// The server applies the request, then the client's connection is reset.
    ResetAfter,
    /// 500 InternalError.
    Error500,
    /// 503 SlowDown.
    SlowDown,
    /// No answer for [`STALL_SHORT`], then the server's answer.
    StallShort,
    /// No answer for [`STALL_LONG`] (past the read timeout), then the request goes on.
    StallLong,
    /// The server's answer with half its body, then the connection closed.
    Truncate,
}

const FAULTS: [Fault; 7] = [
    Fault::Reset,
    Fault::ResetAfter,
    Fault::Error500,
    Fault::SlowDown,
    Fault::StallShort,
    Fault::StallLong,
    Fault::Truncate,
];

struct Rule {
    methods: &'static [&'static str],
    suffix: String,
    fault: Fault,
    left: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// "METHOD path" of every request.
    log: Vec<String>,
    fired: usize,
}

impl State {
    fn take(&mut self, method: &str, path: &str) -> Option<Fault> {
        self.log.push(format!("{method} {path}"));
        let r = self.rules.iter_mut().find(|r| {
            r.left > 0 && r.methods.contains(&method) && path.ends_with(r.suffix.as_str())
        })?;
        r.left -= 1;
        self.fired += 1;
        Some(r.fault)
    }
}

/// The fault-injecting proxy: plain HTTP/1.1 on 127.0.0.1, one request per
/// connection (answers carry `Connection: close`), forwarded to `upstream`.
pub struct Proxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Proxy {
    pub fn start(upstream: &str) -> Result<Self> {
        let upstream = upstream
            .strip_prefix("http://")
            .context("upstream must be http://")?
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut served = 0;
            while !sp.load(Ordering::SeqCst) && served < MAX_CONNECTIONS {
                match listener.accept() {
                    Ok((conn, _)) => {
                        served += 1;
                        let (st, up) = (st.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = handle(conn, &up, &st);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(Self { url, state, stop })
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    pub fn inject(&self, methods: &'static [&'static str], suffix: &str, fault: Fault, n: usize) {
        self.with(|s| {
            s.rules.push(Rule {
                methods,
                suffix: suffix.to_string(),
                fault,
                left: n,
            })
        });
    }

    pub fn clear(&self) {
        self.with(|s| s.rules.clear());
    }

    pub fn fired(&self) -> usize {
        self.with(|s| s.fired)
    }

    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }
}

fn read_head(r: &mut impl BufRead) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            return Ok(lines);
        }
        let l = l.trim_end_matches(['\r', '\n']).to_string();
        if l.is_empty() {
            return Ok(lines);
        }
        lines.push(l);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// The request body as sent (chunked framing kept).
fn read_body(r: &mut impl BufRead, head: &[String]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    if let Some(n) = header(head, "content-length") {
        let n: usize = n.parse()?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else if header(head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            body.extend_from_slice(l.as_bytes());
            let size = l.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size, 16)?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    r.read_line(&mut t)?;
                    body.extend_from_slice(t.as_bytes());
                    if t.trim().is_empty() {
                        return Ok(body);
                    }
                }
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            r.read_exact(&mut body[start..])?;
        }
    }
    Ok(body)
}

fn reset(conn: &TcpStream) {
    let _ = socket2::SockRef::from(conn).set_linger(Some(Duration::ZERO));
}

fn s3_error(conn: &mut TcpStream, status: &str, code: &str) -> Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the test proxy</Message></Error>"
    );
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn handle(mut client: TcpStream, upstream: &str, state: &Mutex<State>) -> Result<()> {
    client.set_nonblocking(false)?;
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut r = BufReader::new(client.try_clone()?);
    let head = read_head(&mut r)?;
    let Some(first) = head.first() else {
        return Ok(());
    };
    let mut parts = first.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts
        .next()
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let fault = state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(&method, &path);
    if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = read_body(&mut r, &head)?;
    match fault {
        Some(Fault::Reset) => {
            reset(&client);
            return Ok(());
        }
        Some(Fault::Error500) => {
            return s3_error(&mut client, "500 Internal Server Error", "InternalError");
        }
        Some(Fault::SlowDown) => return s3_error(&mut client, "503 Slow Down", "SlowDown"),
        Some(Fault::StallShort) => std::thread::sleep(STALL_SHORT),
        Some(Fault::StallLong) => std::thread::sleep(STALL_LONG),
        _ => {}
    }
    let mut up = TcpStream::connect(upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = Vec::new();
    for l in head.iter().filter(|l| {
        !l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
    }) {
        req.extend_from_slice(l.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"Connection: close\r\n\r\n");
    req.extend_from_slice(&body);
    up.write_all(&req)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    // Drop interim 100 Continue answers: the client had ours.
    while resp.starts_with(b"HTTP/1.1 100") {
        let Some(end) = find(&resp, b"\r\n\r\n") else {
            break;
        };
        resp.drain(..end + 4);
    }
    if fault == Some(Fault::ResetAfter) {
        reset(&client);
        return Ok(());
    }
    let end = find(&resp, b"\r\n\r\n").context("no response head")?;
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let body = &resp[end + 4..];
    let mut out = Vec::new();
    for l in head.split("\r\n").filter(|l| {
        !l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection"))
    }) {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    let n = if fault == Some(Fault::Truncate) {
        body.len() / 2
    } else {
        body.len()
    };
    out.extend_from_slice(&body[..n]);
    client.write_all(&out)?;
    client.flush()?;
    let _ = client.shutdown(std::net::Shutdown::Write);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Where in an upload or a fetch a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    UploadArtifact,
    UploadMeta,
    UploadReadBuilds,
    UploadWriteBuilds,
    FetchBuilds,
    FetchMeta,
    FetchArtifact,
}

const ARTIFACT: &str = "example-os-1.0-a0.x86_64.raw";

impl Step {
    fn upload(self) -> bool {
        matches!(
            self,
            Self::UploadArtifact
                | Self::UploadMeta
                | Self::UploadReadBuilds
                | Self::UploadWriteBuilds
        )
    }
    fn methods(self) -> &'static [&'static str] {
        match self {
            Self::UploadArtifact => &["PUT", "POST"],
            Self::UploadMeta | Self::UploadWriteBuilds => &["PUT"],
            _ => &["GET"],
        }
    }
    /// The key suffix the fault matches, and what the error line must name.
    fn key(self) -> &'static str {
        match self {
            Self::UploadArtifact | Self::FetchArtifact => ARTIFACT,
            Self::UploadMeta | Self::FetchMeta => "x86_64/meta.json",
            _ => "builds.json",
        }
    }
}

struct Case<'a> {
    s: &'a S3Server,
    rt: &'a tokio::runtime::Runtime,
    prefix: String,
    /// The build to upload: a 17 MiB artifact (a multipart upload) and a small one.
    src: TestWorkdir,
}

fn cosa(s: &S3Server, name: &str, root: &Utf8Path, endpoint: &str) -> Command {
    let mut c = bin(name);
    s.env(&mut c)
        .env("COSA_STORE_READ_TIMEOUT", READ_TIMEOUT_SECS.to_string())
        .arg("--workdir")
        .arg(root.as_str())
        .args(["--endpoint-url", endpoint]);
    c
}

impl<'a> Case<'a> {
    fn new(s: &'a S3Server, rt: &'a tokio::runtime::Runtime, n: usize) -> Result<Self> {
        let src = TestWorkdir::new()?;
        make_build(&src, "1.0", "x86_64", &[17 << 20, 1000])?;
        Ok(Self {
            s,
            rt,
            prefix: format!("case{n}/builds"),
            src,
        })
    }

    fn upload(&self, endpoint: &str) -> Result<Run> {
        run(cosa(self.s, "cosa-upload", self.src.root(), endpoint)
            .args(["--url", &self.s.url(&self.prefix)]))
    }

    fn fetch(&self, dst: &TestWorkdir, endpoint: &str) -> Result<Run> {
        run(cosa(self.s, "cosa-fetch", dst.root(), endpoint).args([
            "--url",
            &self.s.url(&self.prefix),
            "--arch",
            "x86_64",
            "--artifact",
            "all",
        ]))
    }

    /// No file of `dst`'s arch directory sits under its final name with other bytes
    /// than the source's (temporaries are dot-files).
    fn no_half_written(&self, dst: &TestWorkdir) -> Result<()> {
        let src = self.src.wd.build_arch_dir("1.0", "x86_64")?;
        let dir = dst.wd.build_arch_dir("1.0", "x86_64")?;
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type()?.is_file() {
                continue;
            }
            ensure!(
                std::fs::read(dir.join(&name))? == std::fs::read(src.join(&name))?,
                "{name} sits half-written (or different) under its final name"
            );
        }
        Ok(())
    }

    /// Run `step` with `fault` firing `times` times; check the outcome. Returns whether
    /// the run succeeded.
    fn run(&self, step: Step, fault: Fault, times: usize) -> Result<bool> {
        let proxy = Proxy::start(&self.s.endpoint)?;
        let what = format!("{step:?} {fault:?} x{times}");
        let dst = TestWorkdir::new()?;
        let r = if step.upload() {
            proxy.inject(step.methods(), step.key(), fault, times);
            self.upload(&proxy.url)?
        } else {
            let r = self.upload(&self.s.endpoint)?;
            ensure!(r.code == 0, "{what}: plain upload failed: {}", r.stderr);
            proxy.inject(step.methods(), step.key(), fault, times);
            self.fetch(&dst, &proxy.url)?
        };
        ensure!(
            proxy.fired() >= 1,
            "{what}: the fault never fired: {:?}",
            proxy.requests()
        );
        ensure!(
            !r.stderr.contains("panicked"),
            "{what}: panic:\n{}",
            r.stderr
        );
        let requests = proxy.requests().len();
        if fault == Fault::StallLong {
            // The client gave up at its read timeout and asked again.
            let asked = proxy
                .requests()
                .iter()
                .filter(|l| {
                    l.ends_with(step.key()) && step.methods().iter().any(|m| l.starts_with(m))
                })
                .count();
            ensure!(asked >= 2, "{what}: waited out a stall instead of retrying");
        }
        ensure!(
            requests < 200,
            "{what}: {requests} requests: unbounded retries"
        );
        if r.code != 0 {
            ensure!(r.code == 1, "{what}: exit code {}:\n{}", r.code, r.stderr);
            let line = r.error_line();
            ensure!(
                line.contains(step.key().rsplit('/').next().unwrap_or("")),
                "{what}: the error does not name the object: {line}"
            );
        }
        // The store is consistent whatever happened.
        let stored = check_s3_store(self.rt, self.s, &self.prefix).context(what.clone())?;
        if step.upload() && r.code == 0 {
            ensure!(
                stored.is_some_and(|b| b.has("1.0", "x86_64")),
                "{what}: upload succeeded but builds.json lacks the build"
            );
        }
        if !step.upload() {
            check_workdir(dst.root()).context(what.clone())?;
            self.no_half_written(&dst).context(what.clone())?;
            if r.code == 0 {
                assert_same_tree(
                    &self.src.wd.build_arch_dir("1.0", "x86_64")?,
                    &dst.wd.build_arch_dir("1.0", "x86_64")?,
                )?;
            }
        }
        // A rerun without faults completes the job.
        proxy.clear();
        let r2 = if step.upload() {
            self.upload(&proxy.url)?
        } else {
            self.fetch(&dst, &proxy.url)?
        };
        ensure!(r2.code == 0, "{what}: rerun failed:\n{}", r2.stderr);
        check_s3_store(self.rt, self.s, &self.prefix)?;
        if !step.upload() {
            check_workdir(dst.root())?;
            assert_same_tree(
                &self.src.wd.build_arch_dir("1.0", "x86_64")?,
                &dst.wd.build_arch_dir("1.0", "x86_64")?,
            )?;
        }
        eprintln!(
            "fault {what}: exit {} after {requests} requests (fired {})",
            r.code,
            proxy.fired()
        );
        Ok(r.code == 0)
    }
}

/// Every fault at `step`: a few times (must succeed), then without end (must fail
/// with one error line, bounded).
fn step(kind: Kind, step: Step) -> Result<()> {
    let Some(s) = S3Server::start(kind)? else {
        return Ok(());
    };
    let rt = tokio::runtime::Runtime::new()?;
    let mut n = 0;
    for fault in FAULTS {
        // A PUT's answer has no body to cut short.
        if fault == Fault::Truncate && step.upload() && step != Step::UploadReadBuilds {
            continue;
        }
        // A stall past the read timeout costs READ_TIMEOUT per firing: once is enough.
        let times = if fault == Fault::StallLong { 1 } else { 2 };
        n += 1;
        let ok = Case::new(&s, &rt, n)?.run(step, fault, times)?;
        ensure!(
            ok,
            "{step:?} {fault:?} x{times}: a transient fault must be retried"
        );
    }
    for fault in [Fault::SlowDown, Fault::Reset] {
        n += 1;
        let ok = Case::new(&s, &rt, n)?.run(step, fault, ALWAYS)?;
        ensure!(!ok, "{step:?} {fault:?} forever: succeeded?");
    }
    Ok(())
}

macro_rules! steps {
    ($($name:ident: $kind:ident $step:ident;)*) => {
        $( #[test] fn $name() -> Result<()> { step(Kind::$kind, Step::$step) } )*
    };
}

steps! {
    upload_artifact_s3s: S3sFs UploadArtifact;
    upload_meta_s3s: S3sFs UploadMeta;
    upload_read_builds_s3s: S3sFs UploadReadBuilds;
    upload_write_builds_s3s: S3sFs UploadWriteBuilds;
    fetch_builds_s3s: S3sFs FetchBuilds;
    fetch_meta_s3s: S3sFs FetchMeta;
    fetch_artifact_s3s: S3sFs FetchArtifact;
    upload_write_builds_moto: Moto UploadWriteBuilds;
    fetch_artifact_moto: Moto FetchArtifact;
}
