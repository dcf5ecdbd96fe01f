//! The AWS SDK configuration every AWS client here shares (the S3 store, EC2 for
//! `cosa-extend upload-aws`): the SDK's standard credential chain (environment,
//! shared config and credentials files, `AWS_PROFILE`, SSO, web identity, ECS, IMDS)
//! and its endpoint overrides (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`,
//! `endpoint_url` in the profile), plus an explicit `--endpoint-url`.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// Load the shared configuration; `endpoint_url` overrides every service's endpoint.
pub async fn load(endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(ep) = endpoint_url {
        loader = loader.endpoint_url(ep);
    }
    loader.load().await
}

/// The retry policy of every request: the SDK's standard mode (bounded, exponential
/// backoff), 5 attempts.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(5)
        .with_initial_backoff(Duration::from_millis(200))
}

/// The timeouts of every request: the SDK sets no read timeout, so a server that
/// stops answering would hang the run.
pub fn timeout_config(read_timeout: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(read_timeout)
        .build()
}

/// Whether `var` is set and not empty.
pub fn env_set(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty())
}
