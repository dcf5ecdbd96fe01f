//! Bounded retries with exponential backoff and jitter.
//!
//! Only errors marked [`Transient`] (5xx, 429, connection resets, truncated bodies)
//! are retried, at most [`ATTEMPTS`] times; the last error is returned, never
//! swallowed. aws-sdk-s3 retries its own requests (standard mode); this covers what
//! it cannot: a body that breaks off mid-stream, and the http(s) backend.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

/// Attempts per operation, the first included.
pub const ATTEMPTS: u32 = 6;

/// An error worth retrying.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Transient(pub String);

/// Make a transient error.
pub fn transient(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Transient(msg.into()))
}

pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<Transient>().is_some())
}

/// The delay before attempt `n` (1-based retry count): 200 ms doubling, capped at 5 s,
/// with ±50% jitter so that concurrent clients spread out.
pub fn backoff(n: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << n.min(5)).min(5000);
    let jitter = fastrand::u64(0..=base);
    Duration::from_millis(base / 2 + jitter)
}

/// Run `f` until it succeeds, fails with a non-transient error, or [`ATTEMPTS`] ran out.
pub async fn retry<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && n + 1 < ATTEMPTS => {
                n += 1;
                let d = backoff(n);
                tracing::warn!(
                    "{e:#}; retrying in {} ms ({n}/{})",
                    d.as_millis(),
                    ATTEMPTS - 1
                );
                tokio::time::sleep(d).await;
            }
            Err(e) if is_transient(&e) => {
                return Err(e.context(format!("giving up after {ATTEMPTS} attempts")));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_not_swallowed() {
        let mut calls = 0;
        let r: Result<()> = futures::executor::block_on(async {
            // No tokio timer here: a permanent error returns at once.
            retry(|| {
                calls += 1;
                async { Err(anyhow::anyhow!("permanent")) }
            })
            .await
        });
        assert_eq!(calls, 1);
        assert!(r.is_err());
        assert!(backoff(10) <= Duration::from_millis(7500));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_retried_then_reported() {
        let mut calls = 0;
        let r: Result<()> = retry(|| {
            calls += 1;
            async { Err(transient("503 Service Unavailable")) }
        })
        .await;
        assert_eq!(calls, ATTEMPTS);
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains("giving up") && e.contains("503"), "{e}");
    }
}
