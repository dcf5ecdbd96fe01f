//! S3 servers on loopback for the store tests: s3s-fs (real SigV4, conditional
//! writes), moto (AWS semantics, no auth) and Garage (real SigV4, ignores PUT
//! preconditions, needs WhenRequired checksums). Each test starts its own server on
//! a free 127.0.0.1 port with fixed keys, in a temporary directory, and kills it on
//! drop.
//!
//! The servers are installed by `tools/test-servers.sh` into
//! `${COSA_TEST_TOOLS:-$HOME/.cache/cosa-test-tools}/v1/`. A test whose server is
//! not installed fails when `COSA_REQUIRE_TEST_SERVERS=1` or `CI=true` (so CI never
//! passes by skipping), and is skipped with a message otherwise.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use camino::Utf8PathBuf;

use crate::common::utf8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3sFs,
    Moto,
    Garage,
}

pub const BUCKET: &str = "cosa-test";
const GARAGE_KEY: &str = "GK0123456789abcdef01234567";
const GARAGE_SECRET: &str = "5f1e9c3d7b2a4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
const KEY: &str = "AKIACOSATESTKEY00001";
const SECRET: &str = "cosa-test-secret-0123456789-never-printed";

pub fn tools_dir() -> Utf8PathBuf {
    let base = std::env::var("COSA_TEST_TOOLS")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Utf8PathBuf::from)
        .unwrap_or_else(|| {
            Utf8PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/cosa-test-tools")
        });
    base.join("v1")
}

fn required() -> bool {
    std::env::var("COSA_REQUIRE_TEST_SERVERS").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| v == "true")
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::S3sFs => "s3s-fs",
            Self::Moto => "moto",
            Self::Garage => "garage",
        }
    }
    fn binary(self) -> Utf8PathBuf {
        let t = tools_dir();
        match self {
            Self::S3sFs => t.join("bin/s3s-fs"),
            Self::Moto => t.join("moto/bin/moto_server"),
            Self::Garage => t.join("bin/garage"),
        }
    }
    /// Whether the server checks signatures (moto does not).
    pub fn checks_credentials(self) -> bool {
        self != Self::Moto
    }
    /// Whether PUT preconditions are honoured (Garage ignores them).
    pub fn conditional_writes(self) -> bool {
        self != Self::Garage
    }
}

pub struct S3Server {
    pub kind: Kind,
    child: Child,
    pub endpoint: String,
    pub region: &'static str,
    pub key: &'static str,
    pub secret: &'static str,
    _dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl S3Server {
    /// Start a server of `kind`; `None` (test skipped) when it is not installed and
    /// not required.
    pub fn start(kind: Kind) -> Result<Option<Self>> {
        let bin = kind.binary();
        if !bin.is_file() {
            let msg = format!(
                "{} is not installed ({bin}); run tools/test-servers.sh {}",
                kind.name(),
                kind.name()
            );
            if required() {
                bail!("{msg} (required: CI=true or COSA_REQUIRE_TEST_SERVERS=1)");
            }
            eprintln!("SKIPPED: {msg}");
            return Ok(None);
        }
        let dir = tempfile::Builder::new()
            .prefix("cosa-s3-")
            .tempdir_in("/var/tmp")?;
        let root = utf8(dir.path())?;
        let port = free_port()?;
        let log = std::fs::File::create(root.join("server.log"))?;
        let mut cmd;
        let (mut region, mut key, mut secret) = ("us-east-1", KEY, SECRET);
        match kind {
            Kind::S3sFs => {
                std::fs::create_dir_all(root.join("data").join(BUCKET))?;
                cmd = Command::new(&bin);
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", KEY, "--secret-key", SECRET])
                    .arg(root.join("data"));
            }
            Kind::Moto => {
                cmd = Command::new(&bin);
                cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
            Kind::Garage => {
                let rpc = free_port()?;
                region = "garage";
                key = GARAGE_KEY;
                secret = GARAGE_SECRET;
                let cfg = root.join("garage.toml");
                std::fs::write(
                    &cfg,
                    format!(
                        r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{}"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"
"#,
                        "ab".repeat(32)
                    ),
                )?;
                cmd = Command::new(&bin);
                cmd.arg("-c")
                    .arg(&cfg)
                    .args(["server", "--single-node", "--default-bucket"])
                    .env("GARAGE_DEFAULT_ACCESS_KEY", GARAGE_KEY)
                    .env("GARAGE_DEFAULT_SECRET_KEY", GARAGE_SECRET)
                    .env("GARAGE_DEFAULT_BUCKET", BUCKET)
                    .env("RUST_LOG", "warn");
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let mut s = Self {
            kind,
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            region,
            key,
            secret,
            _dir: dir,
        };
        // Ready when the port answers (and, for moto and Garage, the bucket exists);
        // a server that exits instead is an error with its log.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            s.check_alive(&root)?;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let rt = tokio::runtime::Runtime::new()?;
        if kind == Kind::Moto {
            rt.block_on(s.sdk().create_bucket().bucket(BUCKET).send())
                .context("creating the moto bucket")?;
        }
        while rt
            .block_on(s.sdk().head_bucket().bucket(BUCKET).send())
            .is_err()
        {
            s.check_alive(&root)?;
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(Some(s))
    }

    fn check_alive(&mut self, root: &camino::Utf8Path) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            let log = std::fs::read_to_string(root.join("server.log")).unwrap_or_default();
            bail!("{} exited ({st}): {log}", self.kind.name());
        }
        Ok(())
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Point a cosa binary at this server (environment only, as CI does), with no
    /// other AWS configuration and no instance metadata lookups.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        self.env_with(cmd, self.key, self.secret)
    }

    pub fn env_with<'a>(&self, cmd: &'a mut Command, key: &str, secret: &str) -> &'a mut Command {
        for k in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL_S3",
            "AWS_DEFAULT_REGION",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_REGION", self.region)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    }

    /// A plain SDK client for checking and tampering with the store from tests.
    pub fn sdk(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region))
            .credentials_provider(Credentials::new(self.key, self.secret, None, None, "test"))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}
