//! Stores: where build directories live between CI jobs.
//!
//! A store holds coreos-assembler's `builds/` layout under a prefix, as
//! `cosa buildupload` writes it: `<prefix>/builds.json` and
//! `<prefix>/<id>/<arch>/{meta.json, artifacts...}`. A store URL names that prefix:
//!
//! - `file:///srv/builds` or a plain path: a local or mounted directory;
//! - `s3://bucket/prefix`: S3 or an S3-compatible server (aws-sdk-s3; the standard
//!   credential chain, `AWS_ENDPOINT_URL` or `--endpoint-url`, see [`s3`]);
//! - `https://host/path` (or `http://`): read-only, e.g. a bucket's public website;
//! - `gh-release://owner/repo/tag`: the assets of a GitHub release (see [`ghrelease`]).
//!
//! [`Store`] is the parsed URL plus options; [`Store::connect`] gives a [`Client`],
//! whose operations are async and take keys relative to the prefix. Keys are only
//! ever built from validated names ([`key`]), so a hostile builds.json or meta.json
//! cannot address anything outside the prefix, and nothing read from a store becomes
//! a local path without the same validation.
//!
//! builds.json is updated with a read-modify-write that never loses a concurrent
//! writer's entry: see [`index`].

pub mod awsconfig;
pub mod direct;
pub mod file;
pub mod ghrelease;
pub mod http;
pub mod index;
pub mod retry;
pub mod s3;
pub mod transfer;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use camino::{Utf8Path, Utf8PathBuf};

use crate::builds::BuildsJson;
use crate::names::{validate_arch, validate_build_id, validate_file_name};

pub use file::FileStore;

/// The store's index.
pub const BUILDS_JSON: &str = "builds.json";

/// `Cache-Control` for artifacts (immutable once written), as coreos-assembler sets it.
pub const CACHE_ARTIFACT: &str = "max-age=31536000";
/// `Cache-Control` for metadata (meta.json, builds.json, other small files).
pub const CACHE_METADATA: &str = "max-age=300";

/// How aws-sdk-s3 computes and checks checksums (see [`s3`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumMode {
    /// `when-required` with a custom endpoint (third-party servers), `when-supported` on AWS.
    #[default]
    Auto,
    /// Only where the S3 API requires one: works with Garage, Ceph, R2, B2, ...
    WhenRequired,
    /// The SDK's default: a CRC32 on every request (aws-chunked uploads).
    WhenSupported,
}

/// Options that apply to every backend that supports them.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// S3 endpoint (overrides `AWS_ENDPOINT_URL`); implies path-style requests.
    pub endpoint_url: Option<String>,
    pub checksums: ChecksumMode,
    /// Requests in flight at once (parts of one file, or several files).
    pub jobs: usize,
    /// Multipart part size and ranged-download chunk size, in bytes.
    pub part_size: u64,
    /// Longest wait for a server's answer to a request before it is retried
    /// (`COSA_STORE_READ_TIMEOUT`, seconds; default [`READ_TIMEOUT`]).
    pub read_timeout: std::time::Duration,
}

/// How long a request may wait for its answer by default: a stalled server is
/// retried, never waited on for ever.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn read_timeout_from_env() -> std::time::Duration {
    std::env::var("COSA_STORE_READ_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map(std::time::Duration::from_secs)
        .unwrap_or(READ_TIMEOUT)
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            checksums: ChecksumMode::Auto,
            jobs: 8,
            part_size: 16 << 20,
            read_timeout: read_timeout_from_env(),
        }
    }
}

/// The command-line options for a store, shared by cosa-fetch and cosa-upload.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// The store: s3://BUCKET/PREFIX, file:///PATH (or a plain path), https://HOST/PATH (read-only).
    #[arg(long, value_name = "URL", required = true)]
    pub url: Option<String>,
    /// S3 endpoint for S3-compatible servers (default: $AWS_ENDPOINT_URL, else AWS); path-style.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// S3 checksums: `auto` is `when-required` with a custom endpoint, else `when-supported`.
    #[arg(long, value_enum, default_value_t = ChecksumMode::Auto)]
    pub s3_checksums: ChecksumMode,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: u16,
}

impl StoreArgs {
    pub fn open(&self) -> Result<Store> {
        let opts = StoreOptions {
            endpoint_url: self.endpoint_url.clone(),
            checksums: self.s3_checksums,
            jobs: usize::from(self.jobs),
            ..StoreOptions::default()
        };
        let url = self.url.as_deref().context("--url is required")?;
        Store::open_with(url, opts)
    }
}

/// Where a store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(Utf8PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    /// Base URL, ending in `/`.
    Http(reqwest::Url),
    GhRelease {
        owner: String,
        repo: String,
        tag: String,
    },
}

/// A store: its location and options. Cheap to make; [`Store::connect`] does the I/O.
#[derive(Debug, Clone)]
pub struct Store {
    pub location: Location,
    pub options: StoreOptions,
}

impl Store {
    /// Open a store from its URL with default options.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, StoreOptions::default())
    }

    pub fn open_with(url: &str, options: StoreOptions) -> Result<Self> {
        Ok(Self {
            location: parse_url(url)?,
            options,
        })
    }

    /// The URL, without credentials, for messages.
    pub fn display(&self) -> String {
        match &self.location {
            Location::File(p) => format!("file://{p}"),
            Location::S3 { bucket, prefix } if prefix.is_empty() => format!("s3://{bucket}"),
            Location::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            Location::Http(u) => redact_url(u),
            Location::GhRelease { owner, repo, tag } => {
                format!("gh-release://{owner}/{repo}/{tag}")
            }
        }
    }

    /// Connect: load credentials and configuration (S3), check nothing yet.
    pub async fn connect(&self) -> Result<Client> {
        Ok(match &self.location {
            Location::File(p) => Client::File(FileStore::new(p.clone())),
            Location::S3 { bucket, prefix } => Client::S3(
                s3::S3Store::connect(bucket.clone(), prefix.clone(), &self.options).await?,
            ),
            Location::Http(u) => Client::Http(http::HttpStore::new(u.clone())?),
            Location::GhRelease { owner, repo, tag } => Client::Gh(
                ghrelease::GhReleaseStore::connect(owner.clone(), repo.clone(), tag.clone())?,
            ),
        })
    }

    /// The store's builds.json, or `None` when the store has none yet (blocking).
    pub fn read_builds(&self) -> Result<Option<BuildsJson>> {
        block_on(async {
            let c = self.connect().await?;
            c.check_access().await?;
            index::read(&c).await.map(|o| o.map(|(b, _)| b))
        })
    }
}

/// Run a future to completion on a new multi-threaded runtime (for the binaries).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        // Building a runtime fails only when threads cannot be made; use the caller's.
        Err(_) => futures::executor::block_on(f),
    }
}

fn parse_url(url: &str) -> Result<Location> {
    if url.is_empty() {
        bail!("store URL is empty");
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            bail!("store URL {url:?}: a file:// URL needs an absolute path (file:///...)");
        }
        return Ok(Location::File(Utf8PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            bail!("store URL s3://{bucket}: not a valid bucket name");
        }
        let prefix = prefix.trim_matches('/');
        for part in prefix.split('/').filter(|p| !p.is_empty()) {
            if part == "." || part == ".." {
                bail!(
                    "store URL s3://{bucket}/{prefix}: '.' and '..' are not allowed in the prefix"
                );
            }
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        });
    }
    if let Some(rest) = url.strip_prefix("gh-release://") {
        let parts: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
        let ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match parts.as_slice() {
            [o, r, t] if ok(o) && ok(r) && ok(t) => {
                return Ok(Location::GhRelease {
                    owner: o.to_string(),
                    repo: r.to_string(),
                    tag: t.to_string(),
                });
            }
            _ => bail!("store URL {url:?}: expected gh-release://OWNER/REPO/TAG"),
        }
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        let mut u = reqwest::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("store URL {}: {e}", redact_str(url)))?;
        if !u.path().ends_with('/') {
            let p = format!("{}/", u.path());
            u.set_path(&p);
        }
        return Ok(Location::Http(u));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        bail!(
            "store URL {}: the {scheme}:// store is not supported (supported: s3://, file://, https://, gh-release://, plain paths)",
            redact_str(url)
        );
    }
    Ok(Location::File(Utf8PathBuf::from(url)))
}

/// A URL for messages: no user, password or query string (which may hold a token).
pub fn redact_url(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    if u.query().is_some() {
        u.set_query(Some("REDACTED"));
    }
    u.to_string()
}

fn redact_str(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => redact_url(&u),
        Err(_) => match url.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://..."),
            None => "(unparsable URL)".into(),
        },
    }
}

/// Keys inside a store, built only from validated names.
pub mod key {
    use super::*;

    /// `<id>/<arch>/<file>`.
    pub fn arch_file(id: &str, arch: &str, file: &str) -> Result<String> {
        validate_build_id(id)?;
        validate_arch(arch)?;
        validate_file_name(file)?;
        Ok(format!("{id}/{arch}/{file}"))
    }

    /// `<id>/<file>`: files beside the arch directories (e.g. release.json).
    pub fn build_file(id: &str, file: &str) -> Result<String> {
        validate_build_id(id)?;
        validate_file_name(file)?;
        Ok(format!("{id}/{file}"))
    }

    /// `<id>/`: everything of one build.
    pub fn build_prefix(id: &str) -> Result<String> {
        validate_build_id(id)?;
        Ok(format!("{id}/"))
    }

    /// Parse `<id>/<arch>/meta.json` from a listing; anything else (or invalid names) is `None`.
    pub fn parse_meta_key(key: &str) -> Option<(&str, &str)> {
        let mut it = key.split('/');
        let (id, arch, file) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || file != "meta.json" {
            return None;
        }
        (validate_build_id(id).is_ok() && validate_arch(arch).is_ok()).then_some((id, arch))
    }
}

/// What a HEAD tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: Option<String>,
    /// The sha256 cosa-upload recorded with the object (S3 user metadata `sha256`).
    pub sha256: Option<String>,
}

/// A small object read whole, with its version tag for a conditional write.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Bytes,
    pub etag: Option<String>,
}

/// A listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// A write's precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// Create only (`If-None-Match: *`).
    IfAbsent,
    /// Replace only this version (`If-Match: <etag>`).
    IfMatch(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutResult {
    Done,
    PreconditionFailed,
}

/// Headers and metadata of an object we write.
#[derive(Debug, Clone)]
pub struct PutMeta {
    pub cache_control: &'static str,
    pub content_type: &'static str,
    pub sha256: Option<String>,
    /// S3 canned ACL (`private`, `public-read`, ...); sent only when set.
    pub acl: Option<String>,
}

impl PutMeta {
    pub fn metadata(file: &str, acl: Option<&str>) -> Self {
        Self {
            cache_control: CACHE_METADATA,
            content_type: content_type(file),
            sha256: None,
            acl: acl.map(str::to_string),
        }
    }
    pub fn artifact(file: &str, sha256: &str, acl: Option<&str>) -> Self {
        Self {
            cache_control: CACHE_ARTIFACT,
            content_type: content_type(file),
            sha256: Some(sha256.to_string()),
            acl: acl.map(str::to_string),
        }
    }
}

/// The content type coreos-assembler's buildupload sets, by extension.
pub fn content_type(file: &str) -> &'static str {
    let ext = file.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "json" => "application/json",
        "tar" => "application/x-tar",
        "xz" => "application/x-xz",
        "gz" => "application/gzip",
        "zst" => "application/zstd",
        "iso" => "application/x-iso9660-image",
        _ => "application/octet-stream",
    }
}

/// A connected store. Every method takes keys relative to the store's prefix.
#[derive(Clone)]
pub enum Client {
    File(FileStore),
    S3(s3::S3Store),
    Http(http::HttpStore),
    Gh(ghrelease::GhReleaseStore),
}

impl Client {
    /// The full URL of a key, for messages.
    pub fn describe(&self, key: &str) -> String {
        match self {
            Self::File(f) => f.path(key).to_string(),
            Self::S3(s) => s.describe(key),
            Self::Http(h) => h.describe(key),
            Self::Gh(g) => g.describe(key),
        }
    }

    /// Fail early, with one clear line, when the store cannot be used at all
    /// (missing bucket or directory, bad credentials, unreachable endpoint).
    pub async fn check_access(&self) -> Result<()> {
        match self {
            Self::File(f) => f.check_access(),
            Self::S3(s) => s.check_access().await,
            Self::Gh(g) => g.check_access().await,
            Self::Http(_) => Ok(()),
        }
    }

    pub fn check_writable(&self) -> Result<()> {
        match self {
            Self::Http(h) => bail!(
                "{}: an http(s):// store is read-only; upload to s3:// or file:// instead",
                h.describe("")
            ),
            _ => Ok(()),
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self {
            Self::File(f) => f.head(key),
            Self::S3(s) => s.head(key).await,
            Self::Http(h) => h.head(key).await,
            Self::Gh(g) => g.head(key).await,
        }
    }

    /// Read a small object whole (at most `max` bytes); `None` when absent.
    pub async fn get_small(&self, key: &str, max: u64) -> Result<Option<Fetched>> {
        match self {
            Self::File(f) => f.get_small(key, max),
            Self::S3(s) => s.get_small(key, max).await,
            Self::Http(h) => h.get_small(key, max).await,
            Self::Gh(g) => retry::retry(|| g.get_small(key, max)).await,
        }
    }

    /// Whether [`Client::get_range`] is efficient (several at once).
    pub fn ranged(&self) -> bool {
        !matches!(self, Self::Http(_) | Self::Gh(_))
    }

    /// Exactly bytes `start..start+len` of an object, in one or more segments.
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<Bytes>> {
        match self {
            Self::File(f) => f.get_range(key, start, len).await.map(|b| vec![b]),
            Self::S3(s) => s.get_range(key, start, len).await,
            Self::Http(h) => h.get_range(key, start, len).await.map(|b| vec![b]),
            Self::Gh(g) => bail!(
                "{}: ranged reads are not used on GitHub releases",
                g.describe(key)
            ),
        }
    }

    /// A stream of an object's bytes from `start` (http(s) only: the others are
    /// read with [`Client::get_range`]).
    pub async fn get_stream(&self, key: &str, start: u64) -> Result<transfer::ByteChunks> {
        match self {
            Self::Http(h) => h.get_stream(key, start).await,
            Self::Gh(g) => g.get_stream(key, start).await,
            _ => bail!(
                "{}: streamed reads are for http(s) stores",
                self.describe(key)
            ),
        }
    }

    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        meta: &PutMeta,
        pre: Precondition,
    ) -> Result<PutResult> {
        self.check_writable()?;
        match self {
            Self::File(f) => f.put_bytes(key, &bytes, meta, &pre),
            Self::S3(s) => s.put_bytes(key, bytes, meta, &pre).await,
            Self::Gh(g) => g.put_bytes(key, bytes, meta, &pre).await,
            Self::Http(_) => unreachable_read_only(),
        }
    }

    /// Upload a local file (multipart with parallel parts when it is big). When
    /// `meta` records a sha256, the file is hashed again while it is sent and the
    /// object only becomes visible (PUT sent, multipart upload completed) once the
    /// file proved to match it (S3: the very bytes sent are hashed).
    pub async fn put_file(&self, key: &str, path: &Utf8Path, meta: &PutMeta) -> Result<()> {
        self.check_writable()?;
        let check = || meta.sha256.as_deref().map(|s| LocalCheck::start(path, s));
        match self {
            Self::File(f) => {
                LocalCheck::wait_opt(check()).await?;
                f.put_file(key, path, meta).await
            }
            Self::S3(s) => s.put_file(key, path, meta).await,
            Self::Gh(g) => {
                LocalCheck::wait_opt(check()).await?;
                g.put_file(key, path, meta).await
            }
            Self::Http(_) => unreachable_read_only(),
        }
    }

    /// Every object whose key starts with `prefix` (relative to the store).
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        match self {
            Self::File(f) => f.list(prefix),
            Self::S3(s) => s.list(prefix).await,
            Self::Gh(g) => g.list(prefix).await,
            Self::Http(h) => bail!("{}: an http(s):// store cannot be listed", h.describe("")),
        }
    }

    pub async fn delete(&self, keys: &[String]) -> Result<()> {
        self.check_writable()?;
        match self {
            Self::File(f) => f.delete(keys),
            Self::S3(s) => s.delete(keys).await,
            Self::Gh(g) => g.delete(keys).await,
            Self::Http(_) => unreachable_read_only(),
        }
    }

    /// Whether the store's conditional writes are known to be atomic (AWS S3, and the
    /// file store's lock), so that no listing is needed to verify builds.json.
    pub fn atomic_conditional_writes(&self) -> bool {
        match self {
            Self::File(_) => true,
            Self::S3(s) => !s.custom_endpoint(),
            Self::Http(_) | Self::Gh(_) => false,
        }
    }

    /// Whether writes with a [`Precondition`] are honoured (probed once per client on S3).
    pub async fn conditional_writes(&self) -> Result<bool> {
        match self {
            Self::File(_) => Ok(true),
            Self::S3(s) => s.conditional_writes().await,
            Self::Http(_) | Self::Gh(_) => Ok(false),
        }
    }
}

/// A local file hashed (off the async threads) while it is being sent, so that a
/// file changed or corrupted since the build is never published under the sha256
/// its meta.json records.
pub struct LocalCheck {
    path: Utf8PathBuf,
    sha256: String,
    task: tokio::task::JoinHandle<Result<(String, u64)>>,
}

impl LocalCheck {
    pub fn start(path: &Utf8Path, sha256: &str) -> Self {
        let p = path.to_owned();
        Self {
            path: path.to_owned(),
            sha256: sha256.to_string(),
            task: tokio::task::spawn_blocking(move || crate::fsutil::sha256_file(&p)),
        }
    }

    /// Wait for the hash: an error when the file is not what meta.json says.
    pub async fn wait(self) -> Result<()> {
        let (got, _) = self
            .task
            .await
            .context("hashing task failed")?
            .with_context(|| format!("hashing {}", self.path))?;
        check_sent(&self.path, &got, Some(&self.sha256))
    }

    pub async fn wait_opt(check: Option<Self>) -> Result<()> {
        match check {
            Some(c) => c.wait().await,
            None => Ok(()),
        }
    }
}

/// The sha256 of a file as it was read for sending, against the one meta.json records.
pub fn check_sent(path: &Utf8Path, got: &str, recorded: Option<&str>) -> Result<()> {
    match recorded {
        Some(want) if want != got => bail!(
            "{path}: sha256 is {got} but meta.json records {want}: the file changed since it was built; not uploaded"
        ),
        _ => Ok(()),
    }
}

fn unreachable_read_only<T>() -> Result<T> {
    Err(anyhow::anyhow!("an http(s):// store is read-only"))
}

/// Read a small JSON document from the store: `None` when absent.
pub async fn read_json_doc(client: &Client, key: &str) -> Result<Option<Fetched>> {
    client
        .get_small(key, crate::parse::MAX_JSON_BYTES)
        .await
        .with_context(|| format!("reading {}", client.describe(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() -> Result<()> {
        assert_eq!(
            parse_url("s3://b/some/prefix/")?,
            Location::S3 {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            parse_url("s3://b")?,
            Location::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(parse_url("s3://b/x/../y").is_err());
        assert!(parse_url("s3:///x").is_err());
        assert_eq!(parse_url("/srv/b")?, Location::File("/srv/b".into()));
        assert_eq!(parse_url("file:///srv/b")?, Location::File("/srv/b".into()));
        assert!(parse_url("file://rel").is_err());
        let e = parse_url("ftp://user:hunter2@x/y").unwrap_err().to_string();
        assert!(e.contains("ftp://") && !e.contains("hunter2"), "{e}");
        match parse_url("https://u:hunter2@h/p?tok=sekrit")? {
            Location::Http(u) => {
                let s = redact_url(&u);
                assert!(!s.contains("hunter2") && !s.contains("sekrit"), "{s}");
                assert!(u.path().ends_with("/p/"), "{u}");
            }
            other => panic!("{other:?}"),
        }
        Ok(())
    }

    #[test]
    fn keys_refuse_traversal() {
        assert!(key::arch_file("1", "x86_64", "meta.json").is_ok());
        assert!(key::arch_file("..", "x86_64", "meta.json").is_err());
        assert!(key::arch_file("1", "x86_64", "../../x").is_err());
        assert_eq!(
            key::parse_meta_key("1.0/x86_64/meta.json"),
            Some(("1.0", "x86_64"))
        );
        assert_eq!(key::parse_meta_key("../x86_64/meta.json"), None);
        assert_eq!(key::parse_meta_key("1/x86_64/other.json"), None);
        assert_eq!(key::parse_meta_key("1/x86_64/y/meta.json"), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("meta.json"), "application/json");
        assert_eq!(content_type("a.x86_64.qcow2.xz"), "application/x-xz");
        assert_eq!(content_type("a-ostree.x86_64.tar"), "application/x-tar");
        assert_eq!(content_type("a.raw"), "application/octet-stream");
    }
}
