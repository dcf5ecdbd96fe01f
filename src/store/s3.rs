//! The S3 backend (aws-sdk-s3), for AWS and S3-compatible servers.
//!
//! - Credentials: the SDK's standard chain (environment, shared config and
//!   credentials files, `AWS_PROFILE`, SSO, web identity, i.e. GitHub OIDC through
//!   `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE`, ECS, IMDS). Secrets never reach
//!   our messages: errors name the bucket and key, and the SDK redacts credentials
//!   in its own logs.
//! - Endpoint: `--endpoint-url`, else `AWS_ENDPOINT_URL(_S3)` or an `endpoint_url`
//!   in the profile. A custom endpoint implies path-style requests
//!   (`http://host/bucket/key`), which every S3-compatible server supports.
//! - Checksums: with a custom endpoint the default ([`ChecksumMode::Auto`]) is
//!   `WhenRequired` for requests and responses: since aws-sdk-rust 1.69 the SDK's
//!   default sends aws-chunked bodies with trailing CRC32s that Garage (and others)
//!   reject. Integrity does not depend on it: every artifact is verified by sha256
//!   when fetched.
//! - Retries: the SDK's standard mode (bounded, exponential backoff) for every
//!   request; a body that breaks off mid-download is retried by
//!   [`super::retry`]. Failures are errors.
//! - Big files go as multipart uploads: one thread reads the file in order, hashing
//!   it (the bytes sent are the bytes checked against meta.json), and the parts go
//!   from memory, several in flight, with payload signing off (the SDK would hash
//!   every in-memory part again for the signature; integrity is the sha256's).
//!   They are fetched as parallel ranged GETs.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectCannedAcl,
    ObjectIdentifier,
};
use bytes::{Buf, Bytes};
use camino::Utf8Path;
use futures::{StreamExt, TryStreamExt};

use super::retry::{retry, transient};
use super::{
    ChecksumMode, Fetched, Listed, ObjectInfo, Precondition, PutMeta, PutResult, StoreOptions,
};

/// Files up to this size go in one PUT; bigger ones as multipart uploads.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;

#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// Whether the SDK sends its checksums (WhenSupported).
    checksums: bool,
    custom_endpoint: bool,
    jobs: usize,
    part_size: u64,
    conditional: Arc<tokio::sync::OnceCell<bool>>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store(s3://{}/{})", self.bucket, self.prefix)
    }
}

impl S3Store {
    pub async fn connect(bucket: String, prefix: String, opts: &StoreOptions) -> Result<Self> {
        let sdk = super::awsconfig::load(opts.endpoint_url.as_deref()).await;
        let custom_endpoint =
            sdk.endpoint_url().is_some() || super::awsconfig::env_set("AWS_ENDPOINT_URL_S3");
        let mut b = aws_sdk_s3::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            // Most S3-compatible servers accept any region; AWS redirects.
            b = b.region(Region::new("us-east-1"));
        }
        if custom_endpoint {
            b = b.force_path_style(true);
        }
        let when_required = match opts.checksums {
            ChecksumMode::Auto => custom_endpoint,
            ChecksumMode::WhenRequired => true,
            ChecksumMode::WhenSupported => false,
        };
        if when_required {
            b = b
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        b = b
            .retry_config(super::awsconfig::retry_config())
            .timeout_config(super::awsconfig::timeout_config(opts.read_timeout));
        tracing::debug!(
            "s3://{bucket}/{prefix}: endpoint {}, region {}, checksums {}",
            sdk.endpoint_url().unwrap_or("AWS"),
            sdk.region().map(|r| r.as_ref()).unwrap_or("us-east-1"),
            if when_required {
                "when-required"
            } else {
                "when-supported"
            }
        );
        Ok(Self {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket,
            prefix,
            checksums: !when_required,
            custom_endpoint,
            jobs: opts.jobs.max(1),
            part_size: opts.part_size.max(5 << 20),
            conditional: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Not AWS: an S3-compatible server (whose conditional writes may not be atomic).
    pub fn custom_endpoint(&self) -> bool {
        self.custom_endpoint
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    pub fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full(key))
    }

    pub async fn check_access(&self) -> Result<()> {
        let what = format!("s3://{}", self.bucket);
        match self.client.head_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let status = status_of(&e);
                Err(match status {
                    Some(404) => anyhow!("{what}: no such bucket"),
                    Some(403) => anyhow!(
                        "{what}: access denied (check the credentials and the bucket's permissions)"
                    ),
                    Some(301) => {
                        anyhow!("{what}: the bucket is in another region (set AWS_REGION)")
                    }
                    _ => sdk_err(e, &what),
                })
            }
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let what = self.describe(key);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(o) => Ok(Some(ObjectInfo {
                size: o.content_length().map(|n| n.max(0) as u64).unwrap_or(0),
                etag: o.e_tag().map(str::to_string),
                sha256: o.metadata().and_then(|m| m.get("sha256")).cloned(),
            })),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(sdk_err(e, &what)),
        }
    }

    pub async fn get_small(&self, key: &str, max: u64) -> Result<Option<Fetched>> {
        let what = self.describe(key);
        retry(|| async {
            let o = match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(self.full(key))
                .send()
                .await
            {
                Ok(o) => o,
                Err(e) if status_of(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(sdk_err(e, &what)),
            };
            let expected = o.content_length().map(|n| n.max(0) as u64);
            if expected.is_some_and(|n| n > max) {
                anyhow::bail!("{what}: larger than the {max}-byte limit for this kind of file");
            }
            let etag = o.e_tag().map(str::to_string);
            let mut body = o.body;
            let mut buf = Vec::new();
            while let Some(chunk) = body
                .try_next()
                .await
                .map_err(|e| transient(format!("{what}: reading the body: {e}")))?
            {
                buf.extend_from_slice(&chunk);
                if buf.len() as u64 > max {
                    anyhow::bail!("{what}: larger than the {max}-byte limit for this kind of file");
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

    /// Bytes `start..start+len`, as the segments they arrived in (no copy).
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<Bytes>> {
        let what = self.describe(key);
        if len == 0 {
            return Ok(Vec::new());
        }
        let o = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .range(format!("bytes={start}-{}", start + len - 1))
            .send()
            .await
            .map_err(|e| sdk_err(e, &what))?;
        let got = o
            .body
            .collect()
            .await
            .map_err(|e| transient(format!("{what}: reading bytes {start}+{len}: {e}")))?;
        if got.remaining() as u64 != len {
            return Err(transient(format!(
                "{what}: truncated body: {} of {len} bytes at offset {start}",
                got.remaining()
            )));
        }
        Ok(got.into_segments().collect())
    }

    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        meta: &PutMeta,
        pre: &Precondition,
    ) -> Result<PutResult> {
        let what = self.describe(key);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .cache_control(meta.cache_control)
            .content_type(meta.content_type)
            .set_metadata(user_metadata(meta))
            .set_acl(meta.acl.as_deref().map(ObjectCannedAcl::from))
            .content_length(bytes.len() as i64)
            .body(ByteStream::from(bytes));
        match pre {
            Precondition::None => {}
            Precondition::IfAbsent => req = req.if_none_match("*"),
            Precondition::IfMatch(tag) => req = req.if_match(tag),
        }
        match req.send().await {
            Ok(_) => Ok(PutResult::Done),
            // 409: AWS's ConditionalRequestConflict (a concurrent conditional write won).
            Err(e) if *pre != Precondition::None && matches!(status_of(&e), Some(412 | 409)) => {
                Ok(PutResult::PreconditionFailed)
            }
            Err(e) => Err(sdk_err(e, &what)),
        }
    }

    /// Send a file: one PUT, or a multipart upload whose parts are read in order
    /// (hashed on the way, so that the bytes sent are the bytes checked against
    /// meta.json) and sent in parallel.
    pub async fn put_file(&self, key: &str, path: &Utf8Path, meta: &PutMeta) -> Result<()> {
        let what = self.describe(key);
        let size = std::fs::metadata(path)
            .with_context(|| format!("reading {path}"))?
            .len();
        if size <= MULTIPART_THRESHOLD.max(self.part_size) {
            let p = path.to_owned();
            let (sha, body) = tokio::task::spawn_blocking(move || {
                let mut body = Bytes::new();
                read_parts(&p, size, size, |_, part| {
                    body = part;
                    Ok(())
                })
                .map(|sha| (sha, body))
            })
            .await
            .context("reading task failed")??;
            super::check_sent(path, &sha, meta.sha256.as_deref())?;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.full(key))
                .cache_control(meta.cache_control)
                .content_type(meta.content_type)
                .set_metadata(user_metadata(meta))
                .set_acl(meta.acl.as_deref().map(ObjectCannedAcl::from))
                .content_length(size as i64)
                .body(ByteStream::from(body))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| sdk_err(e, &what))?;
        } else {
            self.multipart(key, path, size, meta).await?;
        }
        // The object must now be what we sent.
        match self.head(key).await? {
            Some(i) if i.size == size => Ok(()),
            Some(i) => anyhow::bail!("{what}: stored {} bytes, sent {size}", i.size),
            None => anyhow::bail!("{what}: missing right after the upload"),
        }
    }

    async fn multipart(&self, key: &str, path: &Utf8Path, size: u64, meta: &PutMeta) -> Result<()> {
        let what = self.describe(key);
        self.abort_stale(key).await;
        // At most 10 000 parts (S3's limit).
        let part_size = self.part_size.max(size.div_ceil(10_000));
        let nparts = size.div_ceil(part_size);
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .cache_control(meta.cache_control)
            .content_type(meta.content_type)
            .set_metadata(user_metadata(meta))
            .set_acl(meta.acl.as_deref().map(ObjectCannedAcl::from))
            .set_checksum_algorithm(self.checksums.then_some(ChecksumAlgorithm::Crc32))
            .send()
            .await
            .map_err(|e| sdk_err(e, &what))?;
        let upload_id = created
            .upload_id()
            .with_context(|| format!("{what}: the server returned no upload ID"))?
            .to_string();
        tracing::debug!("{what}: multipart upload of {size} bytes in {nparts} parts");
        // One reader, at most one part ahead of the uploads in flight: memory is
        // bounded by (jobs + 2) parts per file.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let p = path.to_owned();
        let reader = tokio::task::spawn_blocking(move || {
            read_parts(&p, size, part_size, |number, part| {
                // A closed channel: the uploads stopped (one failed), and their
                // error is the one to report.
                tx.blocking_send((number, part))
                    .map_err(|_| anyhow!("{p}: the upload stopped"))
            })
        });
        let parts = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|part| (part, rx))
        })
        .map(|(number, body): (i32, Bytes)| {
            let (upload_id, what) = (upload_id.clone(), what.clone());
            async move {
                let len = body.len();
                let r = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(self.full(key))
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .body(ByteStream::from(body))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| sdk_err(e, &format!("{what} (part {number}/{nparts})")))?;
                anyhow::Ok(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(r.e_tag().map(str::to_string))
                        .set_checksum_crc32(r.checksum_crc32().map(str::to_string))
                        .build(),
                )
            }
        })
        .buffer_unordered(self.jobs)
        .try_collect::<Vec<_>>()
        .await;
        // The reader ends when the parts did (a failed upload drops the receiver).
        let read = reader.await.context("reading task failed").and_then(|r| r);
        // The parts are only assembled into the object once the bytes sent proved to
        // be what meta.json says.
        let checked = match (parts, read) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(p), Ok(sha)) => super::check_sent(path, &sha, meta.sha256.as_deref()).map(|()| p),
        };
        let mut parts = match checked {
            Ok(p) if p.len() as u64 == nparts => p,
            Ok(p) => {
                self.abort(key, &upload_id).await;
                anyhow::bail!("{what}: {} of {nparts} parts were sent", p.len());
            }
            Err(e) => {
                self.abort(key, &upload_id).await;
                return Err(e);
            }
        };
        parts.sort_by_key(|p| p.part_number());
        if let Err(e) = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
        {
            self.abort(key, &upload_id).await;
            return Err(sdk_err(e, &what));
        }
        Ok(())
    }

    /// Abort the unfinished multipart uploads of `key` left by an upload that was
    /// killed (their parts would otherwise be kept, and billed, until a lifecycle
    /// rule removes them). Best effort: a server that cannot list them is left as is.
    async fn abort_stale(&self, key: &str) {
        let full = self.full(key);
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&full)
            .send()
            .await;
        match listed {
            Ok(l) => {
                for u in l.uploads() {
                    if u.key() == Some(full.as_str())
                        && let Some(id) = u.upload_id()
                    {
                        tracing::info!(
                            "{}: aborting an unfinished multipart upload from an earlier run",
                            self.describe(key)
                        );
                        self.abort(key, id).await;
                    }
                }
            }
            Err(e) => tracing::debug!(
                "{}: cannot list unfinished multipart uploads: {}",
                self.describe(key),
                DisplayErrorContext(&e)
            ),
        }
    }

    /// Abort a failed multipart upload so its parts do not linger. The upload already
    /// failed; a failed abort is reported in the log (a lifecycle rule cleans up).
    async fn abort(&self, key: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.full(key))
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(
                "{}: could not abort the failed multipart upload: {}",
                self.describe(key),
                DisplayErrorContext(&e)
            );
        }
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        let base = self.full("");
        let what = self.describe(prefix);
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(self.full(prefix))
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err(e, &format!("listing {what}")))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(rel) = k.strip_prefix(&base) else {
                    continue;
                };
                out.push(Listed {
                    key: rel.to_string(),
                    size: o.size().map(|n| n.max(0) as u64).unwrap_or(0),
                });
            }
        }
        Ok(out)
    }

    pub async fn delete(&self, keys: &[String]) -> Result<()> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.full(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .context("building a delete request")?;
            let del = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .context("building a delete request")?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(del)
                .send()
                .await
                .map_err(|e| sdk_err(e, &format!("deleting in {}", self.describe(""))))?;
            if let Some(err) = out.errors().first() {
                anyhow::bail!(
                    "deleting s3://{}/{}: {} {}",
                    self.bucket,
                    err.key().unwrap_or("?"),
                    err.code().unwrap_or(""),
                    err.message().unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// Whether the server honours `If-None-Match: *` on PUT, probed once: a probe
    /// object is created twice with it, and the second must be refused.
    pub async fn conditional_writes(&self) -> Result<bool> {
        self.conditional
            .get_or_try_init(|| async {
                let key = format!(".cosa-probe.{}.{:016x}", std::process::id(), fastrand::u64(..));
                let meta = PutMeta::metadata("probe", None);
                let first = self
                    .put_bytes(&key, Bytes::from_static(b"probe"), &meta, &Precondition::IfAbsent)
                    .await;
                let honoured = match first {
                    Ok(PutResult::Done) => {
                        let second = self
                            .put_bytes(&key, Bytes::from_static(b"probe"), &meta, &Precondition::IfAbsent)
                            .await;
                        let r = second.map(|r| r == PutResult::PreconditionFailed);
                        self.delete(std::slice::from_ref(&key)).await?;
                        r?
                    }
                    Ok(PutResult::PreconditionFailed) => true,
                    Err(e) => return Err(e),
                };
                tracing::info!(
                    "{}: {}",
                    self.describe(""),
                    if honoured {
                        "conditional writes honoured: builds.json is updated with If-Match"
                    } else {
                        "conditional writes ignored: builds.json is merged with a listing and verified"
                    }
                );
                Ok(honoured)
            })
            .await
            .copied()
    }
}

/// Read `size` bytes of `path` in order, `part_size` at a time, hashing them, and
/// hand each part (numbered from 1) to `send`; returns the sha256 of all of them.
/// One read per part into a buffer that is not zeroed first, and the bytes are sent
/// from that buffer: the file is read once, by this thread.
fn read_parts(
    path: &Utf8Path,
    size: u64,
    part_size: u64,
    mut send: impl FnMut(i32, Bytes) -> Result<()>,
) -> Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    let mut hasher = sha2::Sha256::new();
    let (mut off, mut number) = (0u64, 1i32);
    while off < size {
        let len = part_size.min(size - off);
        let mut buf = Vec::with_capacity(len as usize);
        (&mut file)
            .take(len)
            .read_to_end(&mut buf)
            .with_context(|| format!("reading {path}"))?;
        if buf.len() as u64 != len {
            anyhow::bail!(
                "{path}: shorter than the {size} bytes it had when the upload started: it changed while being sent; not uploaded"
            );
        }
        hasher.update(&buf);
        send(number, Bytes::from(buf))?;
        off += len;
        number += 1;
    }
    Ok(hex::encode(hasher.finalize()))
}

fn user_metadata(meta: &PutMeta) -> Option<HashMap<String, String>> {
    meta.sha256
        .as_ref()
        .map(|s| HashMap::from([("sha256".to_string(), s.clone())]))
}

fn status_of<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Option<u16> {
    match e {
        SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
        SdkError::ResponseError(re) => Some(re.raw().status().as_u16()),
        _ => None,
    }
}

/// One line for an SDK error: what, the HTTP status, S3's code and message. Server
/// errors and connection failures are marked transient (see [`super::retry`]).
fn sdk_err<E>(e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>, what: &str) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("");
            let msg = se.err().message().unwrap_or("");
            let hint = match (status, code) {
                (403, _) | (_, "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
                    " (check the credentials)"
                }
                (404, "NoSuchBucket") => " (no such bucket)",
                _ => "",
            };
            let text = format!("{what}: HTTP {status} {code} {msg}{hint}")
                .trim_end()
                .replace("  ", " ");
            if status >= 500 || status == 429 {
                transient(text)
            } else {
                anyhow!(text)
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            transient(format!("{what}: {}", DisplayErrorContext(&e)))
        }
        _ => anyhow!("{what}: {}", DisplayErrorContext(&e)),
    }
}
