//! A store in the assets of one GitHub release (`gh-release://OWNER/REPO/TAG`),
//! through octocrab.
//!
//! A release's assets are flat, so a key `<id>/<arch>/<file>` is stored as the asset
//! `<id>--<arch>--<file>` (`builds.json` as itself); keys with `--` in a component
//! or characters GitHub would rename are refused. The sha256 of an artifact is the
//! asset's label (`sha256:<hex>`). Uploads stream the file (GitHub's limit is 2 GiB
//! per asset); downloads stream from the asset's download redirect.
//!
//! The release must exist (create it in the workflow, e.g. `gh release create`).
//! Token: `GITHUB_TOKEN` (or `GH_TOKEN`); API: `GITHUB_API_URL` (GitHub Enterprise,
//! tests), default `https://api.github.com`. The token never appears in messages.
//!
//! GitHub has no conditional writes and replacing an asset is delete + upload:
//! builds.json is uploaded under a temporary name, the old one deleted and the new
//! one renamed, so a reader may briefly find none; concurrent uploaders are
//! reconciled by the listing loop of [`super::index`], but one uploader at a time
//! (a CI concurrency group) is the supported use.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use camino::Utf8Path;
use futures::TryStreamExt;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::retry::transient;
use super::transfer::ByteChunks;
use super::{Fetched, Listed, ObjectInfo, Precondition, PutMeta, PutResult};

/// GitHub's per-asset size limit.
pub const MAX_ASSET: u64 = 2 << 30;

#[derive(Clone)]
pub struct GhReleaseStore {
    crab: octocrab::Octocrab,
    owner: String,
    repo: String,
    tag: String,
    release: std::sync::Arc<tokio::sync::OnceCell<Release>>,
}

impl std::fmt::Debug for GhReleaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GhReleaseStore({})", self.describe(""))
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Release {
    id: u64,
    upload_url: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Asset {
    id: u64,
    name: String,
    #[serde(default)]
    label: Option<String>,
    size: u64,
}

type Resp = http::Response<http_body_util::combinators::BoxBody<Bytes, octocrab::Error>>;

/// Asset name of a key.
pub fn asset_name(key: &str) -> Result<String> {
    if key.split('/').any(|c| c.contains("--") || c.is_empty())
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '+'))
    {
        bail!("{key}: cannot be stored as a GitHub release asset name");
    }
    Ok(key.replace('/', "--"))
}

fn key_of(asset: &str) -> String {
    asset.replace("--", "/")
}

impl GhReleaseStore {
    pub fn connect(owner: String, repo: String, tag: String) -> Result<Self> {
        let mut b = octocrab::Octocrab::builder();
        if let Some(t) = ["GITHUB_TOKEN", "GH_TOKEN"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        {
            b = b.personal_token(t);
        }
        if let Some(api) = std::env::var("GITHUB_API_URL")
            .ok()
            .filter(|v| !v.is_empty())
        {
            b = b
                .base_uri(api.as_str())
                .map_err(|e| anyhow!("GITHUB_API_URL {api:?}: {e}"))?;
        }
        let crab = b
            .build()
            .map_err(|e| anyhow!("creating a GitHub client: {e}"))?;
        Ok(Self {
            crab,
            owner,
            repo,
            tag,
            release: Default::default(),
        })
    }

    pub fn describe(&self, key: &str) -> String {
        format!(
            "gh-release://{}/{}/{}/{key}",
            self.owner, self.repo, self.tag
        )
    }

    fn what(&self) -> String {
        format!("release {} of {}/{}", self.tag, self.owner, self.repo)
    }

    async fn request(&self, req: http::Request<octocrab::OctoBody>, what: &str) -> Result<Resp> {
        let r = self
            .crab
            .execute(req)
            .await
            .map_err(|e| transient(format!("{what}: {e}")))?;
        let s = r.status();
        if s.is_server_error() || s.as_u16() == 429 {
            return Err(transient(format!("{what}: HTTP {s}")));
        }
        Ok(r)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        uri: &str,
        what: &str,
    ) -> Result<Option<T>> {
        let req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .body(octocrab::OctoBody::empty())
            .context("building a request")?;
        let r = self.request(req, what).await?;
        let s = r.status();
        if s.as_u16() == 404 {
            return Ok(None);
        }
        if s.as_u16() == 401 || s.as_u16() == 403 {
            bail!("{what}: HTTP {s} (check GITHUB_TOKEN and its permissions)");
        }
        if !s.is_success() {
            bail!("{what}: HTTP {s}");
        }
        let body = r
            .into_body()
            .collect()
            .await
            .map_err(|e| transient(format!("{what}: {e}")))?
            .to_bytes();
        Ok(Some(crate::parse::json_from_slice(&body, what)?))
    }

    async fn release(&self) -> Result<&Release> {
        self.release
            .get_or_try_init(|| async {
                let uri = format!(
                    "/repos/{}/{}/releases/tags/{}",
                    self.owner, self.repo, self.tag
                );
                self.get_json(&uri, &self.what())
                    .await?
                    .with_context(|| format!("{}: no such release (create it first)", self.what()))
            })
            .await
    }

    pub async fn check_access(&self) -> Result<()> {
        self.release().await.map(|_| ())
    }

    async fn assets(&self) -> Result<Vec<Asset>> {
        let id = self.release().await?.id;
        let mut out = Vec::new();
        for page in 1.. {
            let uri = format!(
                "/repos/{}/{}/releases/{id}/assets?per_page=100&page={page}",
                self.owner, self.repo
            );
            let batch: Vec<Asset> = self
                .get_json(&uri, &format!("listing the assets of {}", self.what()))
                .await?
                .unwrap_or_default();
            let n = batch.len();
            out.extend(batch);
            if n < 100 {
                break;
            }
        }
        Ok(out)
    }

    async fn asset(&self, key: &str) -> Result<Option<Asset>> {
        let name = asset_name(key)?;
        Ok(self.assets().await?.into_iter().find(|a| a.name == name))
    }

    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        Ok(self.asset(key).await?.map(|a| ObjectInfo {
            size: a.size,
            etag: None,
            sha256: a
                .label
                .as_deref()
                .and_then(|l| l.strip_prefix("sha256:"))
                .map(str::to_string),
        }))
    }

    async fn download(&self, asset: &Asset, start: u64, what: &str) -> Result<Resp> {
        let uri = format!(
            "/repos/{}/{}/releases/assets/{}",
            self.owner, self.repo, asset.id
        );
        let mut req =
            http::Request::get(uri).header(http::header::ACCEPT, "application/octet-stream");
        if start > 0 {
            req = req.header(http::header::RANGE, format!("bytes={start}-"));
        }
        let r = self
            .request(
                req.body(octocrab::OctoBody::empty())
                    .context("building a request")?,
                what,
            )
            .await?;
        if !r.status().is_success() {
            bail!("{what}: HTTP {}", r.status());
        }
        if start > 0 && r.status().as_u16() != 206 {
            bail!("{what}: the server ignored a range request");
        }
        Ok(r)
    }

    pub async fn get_small(&self, key: &str, max: u64) -> Result<Option<Fetched>> {
        let what = self.describe(key);
        let Some(a) = self.asset(key).await? else {
            return Ok(None);
        };
        if a.size > max {
            bail!("{what}: larger than the {max}-byte limit for this kind of file");
        }
        let r = self.download(&a, 0, &what).await?;
        let body = r
            .into_body()
            .collect()
            .await
            .map_err(|e| transient(format!("{what}: {e}")))?
            .to_bytes();
        if body.len() as u64 != a.size {
            return Err(transient(format!("{what}: truncated body")));
        }
        Ok(Some(Fetched {
            bytes: body,
            etag: None,
        }))
    }

    pub async fn get_stream(&self, key: &str, start: u64) -> Result<ByteChunks> {
        let what = self.describe(key);
        let a = self
            .asset(key)
            .await?
            .with_context(|| format!("{what}: not in the release"))?;
        let r = self.download(&a, start, &what).await?;
        let stream = http_body_util::BodyDataStream::new(r.into_body())
            .map_err(move |e| transient(format!("{what}: reading the body: {e}")));
        Ok(Box::pin(stream))
    }

    async fn upload(
        &self,
        name: &str,
        body: octocrab::OctoBody,
        len: u64,
        meta: &PutMeta,
    ) -> Result<()> {
        let what = format!("uploading {name} to {}", self.what());
        if len > MAX_ASSET {
            bail!("{what}: {len} bytes, over GitHub's 2 GiB limit per asset");
        }
        let rel = self.release().await?;
        let base = rel
            .upload_url
            .split('{')
            .next()
            .unwrap_or(&rel.upload_url)
            .to_string();
        let mut uri = reqwest::Url::parse(&base).map_err(|e| anyhow!("{what}: upload_url: {e}"))?;
        uri.query_pairs_mut().append_pair("name", name);
        if let Some(s) = &meta.sha256 {
            uri.query_pairs_mut()
                .append_pair("label", &format!("sha256:{s}"));
        }
        let req = http::Request::post(uri.as_str())
            .header(http::header::CONTENT_TYPE, meta.content_type)
            .header(http::header::CONTENT_LENGTH, len)
            .header(http::header::ACCEPT, "application/vnd.github+json")
            .body(body)
            .context("building a request")?;
        let r = self.request(req, &what).await?;
        if !r.status().is_success() {
            bail!("{what}: HTTP {}", r.status());
        }
        Ok(())
    }

    async fn delete_asset(&self, a: &Asset) -> Result<()> {
        let uri = format!(
            "/repos/{}/{}/releases/assets/{}",
            self.owner, self.repo, a.id
        );
        let what = format!("deleting {} from {}", a.name, self.what());
        let req = http::Request::delete(uri)
            .body(octocrab::OctoBody::empty())
            .context("building a request")?;
        let r = self.request(req, &what).await?;
        if !r.status().is_success() && r.status().as_u16() != 404 {
            bail!("{what}: HTTP {}", r.status());
        }
        Ok(())
    }

    async fn rename_asset(&self, a: &Asset, name: &str) -> Result<()> {
        let uri = format!(
            "/repos/{}/{}/releases/assets/{}",
            self.owner, self.repo, a.id
        );
        let what = format!("renaming {} to {name} in {}", a.name, self.what());
        let body = serde_json::to_vec(&serde_json::json!({ "name": name }))?;
        let req = http::Request::patch(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(octocrab::OctoBody::from(body))
            .context("building a request")?;
        let r = self.request(req, &what).await?;
        if !r.status().is_success() {
            bail!("{what}: HTTP {}", r.status());
        }
        Ok(())
    }

    /// Upload under a temporary name, then replace the asset `name` with it.
    async fn replace(
        &self,
        name: &str,
        body: octocrab::OctoBody,
        len: u64,
        meta: &PutMeta,
    ) -> Result<()> {
        let tmp = format!("{name}.cosa-tmp-{:08x}", fastrand::u32(..));
        self.upload(&tmp, body, len, meta).await?;
        let assets = self.assets().await?;
        let new = assets
            .iter()
            .find(|a| a.name == tmp)
            .with_context(|| format!("{tmp}: missing right after its upload to {}", self.what()))?;
        if let Some(old) = assets.iter().find(|a| a.name == name) {
            self.delete_asset(old).await?;
        }
        self.rename_asset(new, name).await
    }

    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: Bytes,
        meta: &PutMeta,
        pre: &Precondition,
    ) -> Result<PutResult> {
        if *pre != Precondition::None {
            bail!(
                "{}: GitHub releases have no conditional writes",
                self.describe(key)
            );
        }
        let name = asset_name(key)?;
        let len = bytes.len() as u64;
        self.replace(&name, octocrab::OctoBody::from(bytes), len, meta)
            .await?;
        Ok(PutResult::Done)
    }

    pub async fn put_file(&self, key: &str, path: &Utf8Path, meta: &PutMeta) -> Result<()> {
        let name = asset_name(key)?;
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {path}"))?;
        let len = file
            .metadata()
            .await
            .with_context(|| format!("reading {path}"))?
            .len();
        let frames = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_ok(http_body::Frame::data);
        let body = octocrab::OctoBody::new(http_body_util::StreamBody::new(frames));
        self.replace(&name, body, len, meta).await
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>> {
        Ok(self
            .assets()
            .await?
            .into_iter()
            .filter(|a| !a.name.contains(".cosa-tmp-"))
            .map(|a| Listed {
                key: key_of(&a.name),
                size: a.size,
            })
            .filter(|l| l.key.starts_with(prefix))
            .collect())
    }

    pub async fn delete(&self, keys: &[String]) -> Result<()> {
        let assets = self.assets().await?;
        for k in keys {
            let name = asset_name(k)?;
            if let Some(a) = assets.iter().find(|a| a.name == name) {
                self.delete_asset(a).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() -> Result<()> {
        assert_eq!(asset_name("builds.json")?, "builds.json");
        assert_eq!(
            asset_name("1.0/x86_64/os-1.0-qemu.x86_64.qcow2")?,
            "1.0--x86_64--os-1.0-qemu.x86_64.qcow2"
        );
        assert_eq!(key_of("1.0--x86_64--meta.json"), "1.0/x86_64/meta.json");
        assert!(asset_name("1--2/x86_64/meta.json").is_err());
        assert!(asset_name("1/x86_64/a b").is_err());
        Ok(())
    }
}
