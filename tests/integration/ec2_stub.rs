//! A loopback EC2 endpoint for the upload-aws tests: a reverse proxy in front of
//! moto that answers the two actions moto lacks, ImportSnapshot and
//! DescribeImportSnapshotTasks, with the responses the EC2 API reference documents,
//! and forwards every other request to moto unchanged.
//!
//! An import task completes after a number of DescribeImportSnapshotTasks calls
//! that name it; its snapshot is then a real one in moto (CreateVolume +
//! CreateSnapshot in the caller's region), so RegisterImage, tags and
//! DescribeSnapshots work on it. Injections: imports that fail or never finish,
//! an access key EC2 refuses (AuthFailure), and CopyImage into a region refused.
//! Every request is logged (action, region, parameters) for the tests to check.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};

/// How imports end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Completed on the n-th DescribeImportSnapshotTasks that names the task.
    CompleteAfter(u32),
    /// Fails (status `deleted`, as AWS reports a rejected disk).
    Fail,
    /// Stays active forever.
    Never,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    pub region: String,
    pub params: Vec<(String, String)>,
}

impl Call {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub region: String,
    pub description: String,
    pub bucket: String,
    pub key: String,
    polls: u32,
    pub snapshot: Option<String>,
    failed: bool,
}

pub struct State {
    pub mode: ImportMode,
    pub denied_key: Option<String>,
    pub refuse_copy_to: Option<String>,
    pub tasks: Vec<Task>,
    pub calls: Vec<Call>,
}

pub struct Ec2Stub {
    pub endpoint: String,
    state: Arc<Mutex<State>>,
}

impl Ec2Stub {
    /// Listen on a free loopback port, forwarding to moto at `upstream` (host:port).
    pub fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State {
            mode: ImportMode::CompleteAfter(2),
            denied_key: None,
            refuse_copy_to: None,
            tasks: Vec::new(),
            calls: Vec::new(),
        }));
        let (st, up) = (state.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (st, up) = (st.clone(), up.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve(conn, &st, &up) {
                        eprintln!("ec2 stub: {e:#}");
                    }
                });
            }
        });
        Ok(Self { endpoint, state })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls of `action` (in `region` when given).
    pub fn calls(&self, action: &str, region: Option<&str>) -> Vec<Call> {
        self.state()
            .calls
            .iter()
            .filter(|c| c.action == action && region.is_none_or(|r| c.region == r))
            .cloned()
            .collect()
    }
}

struct Request {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.as_str())
    }
    /// Access key and region from the SigV4 `Credential=KEY/date/region/ec2/...`.
    fn credential(&self) -> (String, String) {
        let auth = self.header("authorization").unwrap_or("");
        let cred = auth
            .split("Credential=")
            .nth(1)
            .and_then(|s| s.split([',', ' ']).next())
            .unwrap_or("");
        let mut it = cred.split('/');
        let key = it.next().unwrap_or("").to_string();
        let region = it.nth(1).unwrap_or("us-east-1").to_string();
        (key, region)
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some(Request {
        path,
        headers,
        body,
    }))
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (url_decode(k), url_decode(v))
        })
        .collect()
}

fn respond(w: &mut TcpStream, status: u16, body: &str) -> Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    w.flush()?;
    Ok(())
}

/// EC2's error document.
fn error_xml(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        request_id()
    )
}

fn request_id() -> String {
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        fastrand::u32(..),
        fastrand::u64(..1 << 48)
    )
}

/// Send a request to moto (HTTP/1.0, so the reply ends at EOF); status and body.
fn forward(
    upstream: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(upstream)
        .with_context(|| format!("connecting to moto at {upstream}"))?;
    write!(s, "POST {path} HTTP/1.0\r\nHost: {upstream}\r\n")?;
    for (k, v) in headers {
        if ["host", "content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|h| k.eq_ignore_ascii_case(h))
        {
            continue;
        }
        write!(s, "{k}: {v}\r\n")?;
    }
    write!(
        s,
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("moto: no end of headers")?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("moto: no status")?;
    Ok((status, resp[split + 4..].to_vec()))
}

fn xml_field(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].to_string())
}

/// A real snapshot in moto in `region`, made with the caller's Authorization header.
fn make_snapshot(upstream: &str, req: &Request, region: &str, description: &str) -> Result<String> {
    let call = |body: String| -> Result<String> {
        let (status, out) = forward(upstream, "/", &req.headers, body.as_bytes())?;
        let out = String::from_utf8_lossy(&out).into_owned();
        if status != 200 {
            bail!("moto: {status}: {out}");
        }
        Ok(out)
    };
    let v = call(format!(
        "Action=CreateVolume&Version=2016-11-15&AvailabilityZone={region}a&Size=1"
    ))?;
    let vol = xml_field(&v, "volumeId").context("moto CreateVolume: no volumeId")?;
    let s = call(format!(
        "Action=CreateSnapshot&Version=2016-11-15&VolumeId={vol}&Description={}",
        description.replace(' ', "+")
    ))?;
    xml_field(&s, "snapshotId").context("moto CreateSnapshot: no snapshotId")
}

fn task_xml(t: &Task, mode: ImportMode) -> String {
    let (status, progress, message) = if t.failed {
        (
            "deleted",
            "",
            "ClientError: Disk validation failed [Unsupported VMDK File Format]",
        )
    } else if t.snapshot.is_some() {
        ("completed", "", "")
    } else if mode == ImportMode::Never || t.polls == 0 {
        ("active", "19", "pending")
    } else {
        ("active", "56", "converting")
    };
    let opt = |tag: &str, v: &str| {
        if v.is_empty() {
            String::new()
        } else {
            format!("<{tag}>{v}</{tag}>")
        }
    };
    format!(
        "<description>{d}</description><importTaskId>{id}</importTaskId>\
         <snapshotTaskDetail><description>{d}</description><diskImageSize>1048576.0</diskImageSize>\
         <format>VMDK</format>{p}{snap}<status>{status}</status>{m}\
         <userBucket><s3Bucket>{b}</s3Bucket><s3Key>{k}</s3Key></userBucket></snapshotTaskDetail>",
        d = t.description,
        id = t.id,
        p = opt("progress", progress),
        snap = opt("snapshotId", t.snapshot.as_deref().unwrap_or("")),
        m = opt("statusMessage", message),
        b = t.bucket,
        k = t.key,
    )
}

fn serve(conn: TcpStream, st: &Arc<Mutex<State>>, upstream: &str) -> Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r)? {
        let params = form(&req.body);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let action = get("Action");
        let (key, region) = req.credential();
        let lock = || st.lock().unwrap_or_else(|e| e.into_inner());
        let (denied, refuse_copy, mode) = {
            let mut s = lock();
            s.calls.push(Call {
                action: action.clone(),
                region: region.clone(),
                params: params.clone(),
            });
            (
                s.denied_key.as_deref() == Some(key.as_str()),
                s.refuse_copy_to.as_deref() == Some(region.as_str()),
                s.mode,
            )
        };
        let ns = "xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"";
        if denied {
            respond(
                &mut w,
                401,
                &error_xml(
                    "AuthFailure",
                    "AWS was not able to validate the provided access credentials",
                ),
            )?;
            continue;
        }
        match action.as_str() {
            "ImportSnapshot" => {
                let t = Task {
                    id: format!("import-snap-{:017x}", fastrand::u64(..1 << 60)),
                    region,
                    description: get("Description"),
                    bucket: get("DiskContainer.UserBucket.S3Bucket"),
                    key: get("DiskContainer.UserBucket.S3Key"),
                    polls: 0,
                    snapshot: None,
                    failed: false,
                };
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ImportSnapshotResponse {ns}>\
                     <requestId>{}</requestId>{}</ImportSnapshotResponse>",
                    request_id(),
                    task_xml(&t, mode)
                );
                lock().tasks.push(t);
                respond(&mut w, 200, &body)?;
            }
            "DescribeImportSnapshotTasks" => {
                let ids: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("ImportTaskId."))
                    .map(|(_, v)| v.clone())
                    .collect();
                let mut items = String::new();
                let mut s = lock();
                let mut unknown = None;
                for id in &ids {
                    if !s.tasks.iter().any(|t| &t.id == id && t.region == region) {
                        unknown = Some(id.clone());
                    }
                }
                if let Some(id) = unknown {
                    drop(s);
                    respond(
                        &mut w,
                        400,
                        &error_xml(
                            "InvalidConversionTaskId.Malformed",
                            &format!("The import task ID '{id}' is not valid"),
                        ),
                    )?;
                    continue;
                }
                let mut todo = Vec::new();
                for t in s.tasks.iter_mut().filter(|t| t.region == region) {
                    if !ids.is_empty() && !ids.contains(&t.id) {
                        continue;
                    }
                    if !ids.is_empty() && t.snapshot.is_none() && !t.failed {
                        t.polls += 1;
                        match mode {
                            ImportMode::Fail => t.failed = true,
                            ImportMode::CompleteAfter(n) if t.polls >= n => todo.push(t.id.clone()),
                            _ => {}
                        }
                    }
                }
                drop(s);
                for id in todo {
                    let snap = make_snapshot(
                        upstream,
                        &req,
                        &region,
                        &format!("Created by ImportSnapshot({id})"),
                    )?;
                    let mut s = lock();
                    if let Some(t) = s.tasks.iter_mut().find(|t| t.id == id) {
                        t.snapshot = Some(snap);
                    }
                }
                let s = lock();
                for t in s.tasks.iter().filter(|t| t.region == region) {
                    if ids.is_empty() || ids.contains(&t.id) {
                        items.push_str(&format!("<item>{}</item>", task_xml(t, s.mode)));
                    }
                }
                drop(s);
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeImportSnapshotTasksResponse {ns}>\
                     <requestId>{}</requestId><importSnapshotTaskSet>{items}</importSnapshotTaskSet>\
                     </DescribeImportSnapshotTasksResponse>",
                    request_id()
                );
                respond(&mut w, 200, &body)?;
            }
            "CopyImage" if refuse_copy => {
                respond(
                    &mut w,
                    400,
                    &error_xml(
                        "ResourceLimitExceeded",
                        "You have reached your quota of concurrent AMI copies in this region",
                    ),
                )?;
            }
            _ => {
                let (status, body) = forward(upstream, &req.path, &req.headers, &req.body)?;
                write!(
                    w,
                    "HTTP/1.1 {status} X\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                w.write_all(&body)?;
                w.flush()?;
            }
        }
    }
    Ok(())
}
