//! The read-only http(s) backend: a store published by a web server or a bucket's
//! website endpoint (what coreos-assembler's buildfetch reads by default).
//!
//! 404, 403 and 410 mean "absent" (S3 website endpoints answer 403 for a missing
//! key). 5xx, 429, connection failures and bodies shorter than their
//! Content-Length are retried with backoff, a bounded number of times. The URL's
//! user, password and query string never appear in messages.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, ETAG, RANGE};

use super::retry::{retry, transient};
use super::transfer::ByteChunks;
use super::{Fetched, ObjectInfo, redact_url};

#[derive(Debug, Clone)]
pub struct HttpStore {
    base: reqwest::Url,
    client: reqwest::Client,
}

impl HttpStore {
    pub fn new(base: reqwest::Url) -> Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("cosa/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow!("creating an HTTP client: {e}"))?;
        Ok(Self { base, client })
    }

    /// The URL of a key, each path segment percent-encoded.
    fn url(&self, key: &str) -> Result<reqwest::Url> {
        let mut u = self.base.clone();
        {
            let mut segs = u
                .path_segments_mut()
                .map_err(|_| anyhow!("{}: not a base URL", redact_url(&self.base)))?;
            segs.pop_if_empty();
            for s in key.split('/').filter(|s| !s.is_empty()) {
                if s == ".." || s == "." {
                    bail!("store key {key:?} leaves the store");
                }
                segs.push(s);
            }
        }
        Ok(u)
    }

    pub fn describe(&self, key: &str) -> String {
        match self.url(key) {
            Ok(u) => redact_url(&u),
            Err(_) => format!("{}{key}", redact_url(&self.base)),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| {
            // reqwest's error names the URL: strip it, it may hold credentials.
            transient(format!("{what}: {}", e.without_url()))
        })?;
        let s = resp.status();
        if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS {
            return Err(transient(format!("{what}: HTTP {s}")));
        }
        Ok(resp)
    }

    fn absent(s: StatusCode) -> bool {
        matches!(
            s,
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE
        )
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let what = self.describe(key);
        let url = self.url(key)?;
        retry(|| async {
            let r = self.send(self.client.head(url.clone()), &what).await?;
            let s = r.status();
            if Self::absent(s) {
                return Ok(None);
            }
            if !s.is_success() {
                bail!("{what}: HTTP {s}");
            }
            Ok(Some(ObjectInfo {
                size: header_u64(&r, CONTENT_LENGTH).unwrap_or(0),
                etag: r
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                sha256: None,
            }))
        })
        .await
    }

    pub async fn get_small(&self, key: &str, max: u64) -> Result<Option<Fetched>> {
        let what = self.describe(key);
        let url = self.url(key)?;
        retry(|| async {
            let mut r = self.send(self.client.get(url.clone()), &what).await?;
            let s = r.status();
            if Self::absent(s) {
                return Ok(None);
            }
            if !s.is_success() {
                bail!("{what}: HTTP {s}");
            }
            let expected = header_u64(&r, CONTENT_LENGTH);
            if expected.is_some_and(|n| n > max) {
                bail!("{what}: larger than the {max}-byte limit for this kind of file");
            }
            let etag = r
                .headers()
                .get(ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut buf = Vec::new();
            while let Some(c) = r
                .chunk()
                .await
                .map_err(|e| transient(format!("{what}: reading the body: {}", e.without_url())))?
            {
                buf.extend_from_slice(&c);
                if buf.len() as u64 > max {
                    bail!("{what}: larger than the {max}-byte limit for this kind of file");
                }
            }
            if let Some(n) = expected
                && n != buf.len() as u64
            {
                return Err(transient(format!(
                    "{what}: truncated body: {} of {n} bytes",
                    buf.len()
                )));
            }
            Ok(Some(Fetched {
                bytes: Bytes::from(buf),
                etag,
            }))
        })
        .await
    }

    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        let what = self.describe(key);
        let url = self.url(key)?;
        let mut r = self
            .send(
                self.client
                    .get(url)
                    .header(RANGE, format!("bytes={start}-{}", start + len.max(1) - 1)),
                &what,
            )
            .await?;
        if r.status() != StatusCode::PARTIAL_CONTENT {
            bail!("{what}: HTTP {} to a range request", r.status());
        }
        let mut buf = Vec::new();
        while let Some(c) = r
            .chunk()
            .await
            .map_err(|e| transient(format!("{what}: reading the body: {}", e.without_url())))?
        {
            buf.extend_from_slice(&c);
        }
        if buf.len() as u64 != len {
            return Err(transient(format!("{what}: truncated body")));
        }
        Ok(Bytes::from(buf))
    }

    /// The object's bytes from `start` on. A server that ignores `Range` sends the
    /// whole object: its first `start` bytes are skipped here.
    pub async fn get_stream(&self, key: &str, start: u64) -> Result<ByteChunks> {
        let what = self.describe(key);
        let url = self.url(key)?;
        let mut req = self.client.get(url);
        if start > 0 {
            req = req.header(RANGE, format!("bytes={start}-"));
        }
        let r = self.send(req, &what).await?;
        let s = r.status();
        if Self::absent(s) {
            bail!("{what}: not found (HTTP {s})");
        }
        if !s.is_success() {
            bail!("{what}: HTTP {s}");
        }
        let skip = if start > 0 && s != StatusCode::PARTIAL_CONTENT {
            start
        } else {
            0
        };
        let stream =
            futures::stream::unfold((Some(r), skip, what), |(resp, mut skip, what)| async move {
                let mut r = resp?;
                loop {
                    return match r.chunk().await {
                        Ok(Some(mut b)) => {
                            if skip > 0 {
                                let n = skip.min(b.len() as u64);
                                skip -= n;
                                b = b.slice(n as usize..);
                                if b.is_empty() {
                                    continue;
                                }
                            }
                            Some((Ok(b), (Some(r), skip, what)))
                        }
                        Ok(None) => None,
                        Err(e) => Some((
                            Err(transient(format!(
                                "{what}: reading the body: {}",
                                e.without_url()
                            ))),
                            (None, skip, what),
                        )),
                    };
                }
            });
        Ok(Box::pin(stream))
    }
}

fn header_u64(r: &reqwest::Response, h: reqwest::header::HeaderName) -> Option<u64> {
    r.headers()
        .get(h)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
