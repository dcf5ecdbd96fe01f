//! builds.json in a store, under concurrent writers.
//!
//! coreos-assembler's buildupload overwrites the store's builds.json with its local
//! copy (last writer wins; pipelines wrap it in a Jenkins lock). Here every change
//! is a read-modify-write of the store's own builds.json that never loses another
//! writer's entry:
//!
//! - **file stores**: under an exclusive `flock` on `<root>/.builds.json.lock`.
//! - **AWS S3** (conditional writes, atomic): the new document is written with
//!   `If-Match: <etag read>` (`If-None-Match: *` when there was none); a 412/409
//!   means someone else wrote first: read again, reapply, retry (bounded, jittered
//!   backoff).
//! - **S3-compatible servers** (a custom endpoint): conditional writes are used when
//!   the server honours them (probed once per run: moto, s3s-fs do; Garage ignores
//!   them), but they are not trusted to be atomic (s3s-fs checks, then writes: two
//!   writers can both pass), so the index is also reconciled with a listing. Every
//!   uploader writes its `<id>/<arch>/meta.json` before it touches builds.json, then
//!   loops: read builds.json, list `*/*/meta.json`, add every listed build missing
//!   from the index (except tombstoned ones), apply its own change, write if anything
//!   changed, and go round again; it stops when a read finds nothing to add. The
//!   last writer's final read sees its own document (nobody wrote after it) and a
//!   listing that holds every uploader's meta.json (each was written before that
//!   uploader's first index write), so the final index is complete. This needs
//!   read-after-write and list-after-write consistency, which S3, moto, s3s-fs and
//!   Garage provide.
//! - **GitHub releases**: the listing loop, without conditional writes.
//!
//! A prune racing an upload on a store without atomic conditional writes can be
//! undone (the uploader may write back an index read before the prune; the pruned
//! build's objects are deleted regardless): prune there when no upload runs.

use std::collections::HashSet;

use anyhow::{Result, bail};
use bytes::Bytes;
use serde_json::Value;

use super::retry::backoff;
use super::{BUILDS_JSON, Client, Precondition, PutMeta, PutResult, key, read_json_doc};
use crate::builds::BuildsJson;

/// Rounds of read-modify-write before giving up (each lost round means another
/// writer succeeded, so this bounds the number of concurrent writers we outlast).
pub const MAX_ROUNDS: u32 = 100;

/// A change to the index.
#[derive(Debug, Clone)]
pub enum Change {
    /// Record these (id, arch) pairs (already present ones are left alone).
    Add(Vec<(String, String)>),
    /// Remove these builds, recording them in `tombstone-builds`.
    Remove(Vec<String>),
}

impl Change {
    /// Apply to `b`; whether anything changed.
    fn apply(&self, b: &mut BuildsJson) -> Result<bool> {
        let mut changed = false;
        match self {
            Self::Add(pairs) => {
                for (id, arch) in pairs {
                    if !b.has(id, arch) {
                        b.insert(id, arch)?;
                        changed = true;
                    }
                }
            }
            Self::Remove(ids) => {
                for id in ids {
                    if let Some(e) = b.remove(id) {
                        b.add_tombstone(e)?;
                        changed = true;
                    }
                }
            }
        }
        Ok(changed)
    }
}

/// The store's builds.json and its ETag; `None` when it has none.
pub async fn read(client: &Client) -> Result<Option<(BuildsJson, Option<String>)>> {
    let Some(f) = read_json_doc(client, BUILDS_JSON).await? else {
        return Ok(None);
    };
    let b = BuildsJson::parse(&f.bytes, &client.describe(BUILDS_JSON))?;
    Ok(Some((b, f.etag)))
}

/// How builds.json is updated on a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    /// Send `If-Match`/`If-None-Match` (the store honours them).
    pub conditional: bool,
    /// Also merge the listing and go round until a read finds nothing to add (the
    /// store's conditional writes are absent or not known to be atomic).
    pub verify_listing: bool,
}

/// Apply `change` to the store's builds.json; returns the document written (or found).
pub async fn update(client: &Client, change: &Change) -> Result<BuildsJson> {
    client.check_writable()?;
    if let Client::File(f) = client {
        let _lock = f.lock()?;
        let mut b = read(client).await?.map(|(b, _)| b).unwrap_or_default();
        if change.apply(&mut b)? {
            put(client, &b, Precondition::None).await?;
        }
        return Ok(b);
    }
    // Nothing to do (e.g. a rerun): no write, no probe.
    if let Some((mut b, _)) = read(client).await?
        && !change.apply(&mut b)?
    {
        return Ok(b);
    }
    let conditional = client.conditional_writes().await?;
    let strategy = Strategy {
        conditional,
        verify_listing: !(conditional && client.atomic_conditional_writes()),
    };
    update_with(client, change, strategy).await
}

async fn put(client: &Client, b: &BuildsJson, pre: Precondition) -> Result<PutResult> {
    let meta = PutMeta::metadata(BUILDS_JSON, None);
    client
        .put_bytes(BUILDS_JSON, Bytes::from(b.to_json_bytes()?), &meta, pre)
        .await
}

/// Builds (id, arch) whose meta.json is in the store, sorted.
async fn listed_builds(client: &Client) -> Result<Vec<(String, String)>> {
    let mut v: Vec<_> = client
        .list("")
        .await?
        .iter()
        .filter_map(|l| key::parse_meta_key(&l.key))
        .map(|(i, a)| (i.to_string(), a.to_string()))
        .collect();
    v.sort();
    Ok(v)
}

fn tombstoned(b: &BuildsJson) -> HashSet<String> {
    match b.extra.get("tombstone-builds") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|e| e.get("id").and_then(Value::as_str))
            .map(str::to_string)
            .collect(),
        _ => HashSet::new(),
    }
}

/// The read-modify-write loop (see the module documentation).
pub async fn update_with(
    client: &Client,
    change: &Change,
    strategy: Strategy,
) -> Result<BuildsJson> {
    for round in 0..MAX_ROUNDS {
        let cur = read(client).await?;
        let mut b = cur.as_ref().map(|(b, _)| b.clone()).unwrap_or_default();
        let mut changed = false;
        if strategy.verify_listing {
            let dead = tombstoned(&b);
            for (id, arch) in listed_builds(client).await? {
                if !dead.contains(&id) && !b.has(&id, &arch) {
                    b.insert(&id, &arch)?;
                    changed = true;
                }
            }
        }
        changed |= change.apply(&mut b)?;
        if !changed {
            return Ok(b);
        }
        let pre = match (&cur, strategy.conditional) {
            (_, false) => Precondition::None,
            (None, true) => Precondition::IfAbsent,
            (Some((_, Some(etag))), true) => Precondition::IfMatch(etag.clone()),
            (Some((_, None)), true) => {
                tracing::debug!("no ETag on builds.json: writing it unconditionally");
                Precondition::None
            }
        };
        match put(client, &b, pre).await? {
            PutResult::PreconditionFailed => {
                tracing::debug!("builds.json changed since it was read; retrying ({round})");
                tokio::time::sleep(backoff(round.min(3))).await;
            }
            PutResult::Done if !strategy.verify_listing => return Ok(b),
            PutResult::Done => {
                tracing::debug!("builds.json written; verifying against the listing ({round})");
                // Let concurrent writers land before reading back.
                tokio::time::sleep(backoff(0)).await;
            }
        }
    }
    bail!(
        "{}: builds.json still changing after {MAX_ROUNDS} rounds",
        client.describe(BUILDS_JSON)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes() -> Result<()> {
        let mut b = BuildsJson::default();
        let add = Change::Add(vec![
            ("1".into(), "x86_64".into()),
            ("1".into(), "aarch64".into()),
        ]);
        assert!(add.apply(&mut b)?);
        assert!(!add.apply(&mut b)?, "adding twice changes nothing");
        let rm = Change::Remove(vec!["1".into()]);
        assert!(rm.apply(&mut b)?);
        assert!(b.builds.is_empty());
        assert_eq!(tombstoned(&b), HashSet::from(["1".to_string()]));
        assert!(!rm.apply(&mut b)?);
        Ok(())
    }
}
