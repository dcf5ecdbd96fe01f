//! `cosa-extend upload-aws` against moto (S3 and EC2) behind the loopback
//! ImportSnapshot stub ([`crate::ec2_stub`]): the whole flow and its meta.json
//! record, idempotent reruns after injected failures, and bad input.

use std::process::Command;

use anyhow::{Context, Result};
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::Filter;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{Run, TestWorkdir, bin, minimal_meta, run};
use crate::ec2_stub::{Ec2Stub, ImportMode};
use crate::schema::schema_errors;
use crate::store_servers::{BUCKET, Kind, S3Server};
use crate::store_util::bytes;

const ID: &str = "1.20261207.0";
const ARCH: &str = "x86_64";
const NAME: &str = "example-os-1.20261207.0-x86_64";
const DENIED_KEY: &str = "AKIACOSADENIED000001";

struct Fx {
    t: TestWorkdir,
    s3: S3Server,
    stub: Ec2Stub,
    rt: tokio::runtime::Runtime,
    vmdk: Vec<u8>,
}

impl Fx {
    /// moto, the stub in front of it, and a build whose `aws` image is a small
    /// (not bootable) vmdk file recorded with its sha256 and size.
    fn new() -> Result<Option<Fx>> {
        let Some(s3) = S3Server::start(Kind::Moto)? else {
            return Ok(None);
        };
        let stub = Ec2Stub::start(s3.endpoint.trim_start_matches("http://"))?;
        let t = TestWorkdir::new()?;
        let vmdk = bytes(9, 3 << 20);
        let lock = t.wd.lock()?;
        let dir = t.wd.build_arch_dir(ID, ARCH)?;
        std::fs::create_dir_all(&dir)?;
        let mut meta = minimal_meta(ID, ARCH);
        // The schema wants an ostree image; a stand-in file is enough here.
        let ostree = bytes(10, 4096);
        for (key, ext, data) in [("aws", "vmdk", &vmdk), ("ostree", "tar", &ostree)] {
            let file = format!("example-os-{ID}-{key}.{ARCH}.{ext}");
            std::fs::write(dir.join(&file), data)?;
            meta.images.insert(
                key.into(),
                cosa::meta::Artifact {
                    path: file,
                    sha256: hex::encode(Sha256::digest(data)),
                    size: Some(data.len() as u64),
                    uncompressed_sha256: None,
                    uncompressed_size: None,
                    skip_compression: None,
                    extra: Default::default(),
                },
            );
        }
        t.wd.write_meta(&meta, ARCH, &lock)?;
        let mut b = t.wd.read_builds()?;
        b.insert(ID, ARCH)?;
        t.wd.write_builds(&b, &lock)?;
        t.wd.set_latest(Some(ID), &lock)?;
        drop(lock);
        Ok(Some(Fx {
            t,
            s3,
            stub,
            rt: tokio::runtime::Runtime::new()?,
            vmdk,
        }))
    }

    fn cmd(&self, key: &str, args: &[&str]) -> Command {
        let mut c = bin("cosa-extend");
        self.s3
            .env_with(&mut c, key, "cosa-test-secret-never-printed");
        c.env("AWS_ENDPOINT_URL_EC2", &self.stub.endpoint)
            .arg("--workdir")
            .arg(self.t.root())
            .args(["upload-aws", "--poll-interval", "0.01"])
            .args(args);
        c
    }

    fn upload(&self, args: &[&str]) -> Result<Run> {
        run(&mut self.cmd(self.s3.key, args))
    }

    fn meta_bytes(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.t.wd.meta_path(ID, ARCH)?)?)
    }

    /// meta.json's `amis` as (region, image, snapshot), checked against the schema.
    fn amis(&self) -> Result<Vec<(String, String, String)>> {
        let doc: Value = serde_json::from_slice(&self.meta_bytes()?)?;
        assert_eq!(schema_errors(&doc)?, Vec::<String>::new());
        let Some(a) = doc.get("amis") else {
            return Ok(Vec::new());
        };
        let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok(a.as_array()
            .context("amis is not an array")?
            .iter()
            .map(|v| (s(v, "name"), s(v, "hvm"), s(v, "snapshot")))
            .collect())
    }

    /// EC2 in `region`, straight to moto (not through the stub).
    fn ec2(&self, region: &str) -> aws_sdk_ec2::Client {
        let conf = aws_sdk_ec2::Config::builder()
            .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
            .endpoint_url(&self.s3.endpoint)
            .region(Region::new(region.to_string()))
            .credentials_provider(Credentials::new(
                self.s3.key,
                self.s3.secret,
                None,
                None,
                "t",
            ))
            .build();
        aws_sdk_ec2::Client::from_conf(conf)
    }

    /// Our images named NAME in `region`.
    fn images(&self, region: &str) -> Result<Vec<aws_sdk_ec2::types::Image>> {
        let out = self.rt.block_on(
            self.ec2(region)
                .describe_images()
                .owners("self")
                .filters(Filter::builder().name("name").values(NAME).build())
                .send(),
        )?;
        Ok(out.images().to_vec())
    }

    fn tags_of(&self, region: &str, id: &str) -> Result<Vec<(String, String)>> {
        let out = self.rt.block_on(
            self.ec2(region)
                .describe_tags()
                .filters(Filter::builder().name("resource-id").values(id).build())
                .send(),
        )?;
        let mut v: Vec<(String, String)> = out
            .tags()
            .iter()
            .map(|t| {
                (
                    t.key().unwrap_or_default().to_string(),
                    t.value().unwrap_or_default().to_string(),
                )
            })
            .collect();
        v.sort();
        Ok(v)
    }

    fn launch_groups(&self, region: &str, id: &str) -> Result<Vec<String>> {
        let out = self.rt.block_on(
            self.ec2(region)
                .describe_image_attribute()
                .image_id(id)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send(),
        )?;
        Ok(out
            .launch_permissions()
            .iter()
            .filter_map(|p| p.group().map(|g| g.as_str().to_string()))
            .collect())
    }

    fn volume_groups(&self, region: &str, snapshot: &str) -> Result<Vec<String>> {
        let out = self.rt.block_on(
            self.ec2(region)
                .describe_snapshot_attribute()
                .snapshot_id(snapshot)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .send(),
        )?;
        Ok(out
            .create_volume_permissions()
            .iter()
            .filter_map(|p| p.group().map(|g| g.as_str().to_string()))
            .collect())
    }
}

fn our_tags() -> Vec<(String, String)> {
    vec![
        ("Name".into(), NAME.into()),
        ("cosa-build-id".into(), ID.into()),
    ]
}

#[test]
fn publishes_copies_and_resumes_without_duplicates() -> Result<()> {
    let Some(fx) = Fx::new()? else { return Ok(()) };
    let args = [
        "--bucket",
        &format!("s3://{BUCKET}/amis"),
        "--region",
        "us-east-1",
        "--copy-to-region",
        "eu-west-1,us-west-2",
        "--public",
    ];
    // First run: the copy to us-west-2 is refused.
    fx.stub.state().refuse_copy_to = Some("us-west-2".into());
    let r = fx.upload(&args)?;
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = r.error_line();
    assert!(
        line.contains("us-west-2") && line.contains("ResourceLimitExceeded"),
        "{line}"
    );
    let amis = fx.amis()?;
    let regions: Vec<&str> = amis.iter().map(|a| a.0.as_str()).collect();
    assert_eq!(regions, ["us-east-1", "eu-west-1"], "{amis:?}");
    let after_failure = amis.clone();

    // The import: the vmdk went to the bucket under the prefix, one task, polled
    // until it completed, and its snapshot is the one registered and recorded.
    let tasks = fx.stub.state().tasks.clone();
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(
        (task.bucket.as_str(), task.description.as_str()),
        (BUCKET, NAME)
    );
    let obj = fx.rt.block_on(
        fx.s3
            .sdk()
            .get_object()
            .bucket(BUCKET)
            .key(&task.key)
            .send(),
    )?;
    assert!(task.key.starts_with("amis/example-os-"), "{}", task.key);
    let body = fx.rt.block_on(obj.body.collect())?.into_bytes();
    assert!(body.as_ref() == fx.vmdk.as_slice(), "uploaded vmdk differs");
    let snap = task.snapshot.clone().context("import did not complete")?;
    assert_eq!(amis[0].2, snap);
    let reg = fx.stub.calls("RegisterImage", Some("us-east-1"));
    assert_eq!(reg.len(), 1);
    for (k, v) in [
        ("Name", NAME),
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("EnaSupport", "true"),
        ("BootMode", "uefi-preferred"),
        ("ImdsSupport", "v2.0"),
        ("RootDeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snap.as_str()),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
    ] {
        assert_eq!(reg[0].param(k), Some(v), "RegisterImage {k}");
    }
    // Polled with progress until done: at least the 2 polls the stub needs.
    assert!(fx.stub.calls("DescribeImportSnapshotTasks", None).len() >= 2);

    // Tags and launch permissions in the regions done; nothing in us-west-2.
    for (region, image, snapshot) in &amis {
        let imgs = fx.images(region)?;
        assert_eq!(imgs.len(), 1, "{region}");
        assert_eq!(imgs[0].image_id(), Some(image.as_str()));
        assert_eq!(fx.tags_of(region, image)?, our_tags(), "{region} image");
        assert_eq!(
            fx.tags_of(region, snapshot)?,
            our_tags(),
            "{region} snapshot"
        );
        assert_eq!(fx.launch_groups(region, image)?, ["all"], "{region}");
        assert_eq!(fx.volume_groups(region, snapshot)?, ["all"], "{region}");
    }
    assert!(fx.images("us-west-2")?.is_empty());
    let copy = fx.stub.calls("CopyImage", Some("eu-west-1"));
    assert_eq!(copy.len(), 1);
    assert_eq!(copy[0].param("SourceRegion"), Some("us-east-1"));
    assert_eq!(copy[0].param("SourceImageId"), Some(amis[0].1.as_str()));

    // Rerun without the injection: only us-west-2 is new.
    fx.stub.state().refuse_copy_to = None;
    let r = fx.upload(&args)?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let amis = fx.amis()?;
    assert_eq!(&amis[..2], &after_failure[..]);
    assert_eq!(amis.len(), 3);
    assert_eq!(amis[2].0, "us-west-2");
    assert!(
        r.stdout.contains(&format!("ami-us-west-2={}", amis[2].1)),
        "{}",
        r.stdout
    );
    for region in ["us-east-1", "eu-west-1", "us-west-2"] {
        assert_eq!(fx.images(region)?.len(), 1, "{region}: duplicate image");
    }
    assert_eq!(fx.tags_of("us-west-2", &amis[2].1)?, our_tags());
    assert_eq!(fx.launch_groups("us-west-2", &amis[2].1)?, ["all"]);
    assert_eq!(fx.stub.calls("ImportSnapshot", None).len(), 1);
    assert_eq!(fx.stub.calls("RegisterImage", None).len(), 1);
    assert_eq!(fx.stub.calls("CopyImage", Some("eu-west-1")).len(), 1);
    assert_eq!(fx.stub.calls("CopyImage", Some("us-west-2")).len(), 2);

    // A third run changes nothing at all.
    let before = fx.meta_bytes()?;
    let calls = fx.stub.state().calls.len();
    let r = fx.upload(&args)?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fx.meta_bytes()?, before);
    let new: Vec<String> = fx.stub.state().calls[calls..]
        .iter()
        .map(|c| c.action.clone())
        .filter(|a| ["ImportSnapshot", "RegisterImage", "CopyImage"].contains(&a.as_str()))
        .collect();
    assert!(new.is_empty(), "{new:?}");
    Ok(())
}

#[test]
fn failed_and_unfinished_imports_then_resume() -> Result<()> {
    let Some(fx) = Fx::new()? else { return Ok(()) };
    // image.yaml's aws keys are the defaults.
    std::fs::write(
        fx.t.wd.config_dir().join("image.yaml"),
        "aws-volume-type: io2\naws-x86-boot-mode: legacy-bios\naws-imdsv2-only: false\n",
    )?;
    let bucket = format!("s3://{BUCKET}");
    let args = ["--bucket", &bucket, "--region", "eu-central-1"];
    let before = fx.meta_bytes()?;

    fx.stub.state().mode = ImportMode::Fail;
    let r = fx.upload(&args)?;
    assert_eq!(r.code, 1);
    let line = r.error_line();
    assert!(
        line.contains("import failed") && line.contains("Disk validation failed"),
        "{line}"
    );
    assert_eq!(fx.meta_bytes()?, before);

    // A failed import is not reused; this one never finishes.
    fx.stub.state().mode = ImportMode::Never;
    let r = fx.upload(&[&args[..], &["--import-timeout", "0.3"]].concat())?;
    assert_eq!(r.code, 1);
    let line = r.error_line();
    assert!(
        line.contains("not finished after") && line.contains("--import-timeout"),
        "{line}"
    );
    assert!(
        r.stderr.contains("active"),
        "no progress shown: {}",
        r.stderr
    );
    // The second import found the vmdk in the bucket with the same sha256.
    assert!(
        r.stderr.contains("already there with the same sha256"),
        "{}",
        r.stderr
    );
    assert_eq!(fx.meta_bytes()?, before);
    assert_eq!(fx.stub.calls("ImportSnapshot", None).len(), 2);
    assert!(fx.images("eu-central-1")?.is_empty());

    // The import finishes meanwhile: the rerun waits for it instead of importing again.
    fx.stub.state().mode = ImportMode::CompleteAfter(1);
    let r = fx.upload(&args)?;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fx.stub.calls("ImportSnapshot", None).len(), 2);
    let tasks = fx.stub.state().tasks.clone();
    let snap = tasks[1]
        .snapshot
        .clone()
        .context("second import not completed")?;
    let amis = fx.amis()?;
    assert_eq!(amis.len(), 1);
    assert_eq!(
        (amis[0].0.as_str(), amis[0].2.as_str()),
        ("eu-central-1", snap.as_str())
    );
    let reg = fx.stub.calls("RegisterImage", None);
    assert_eq!(reg.len(), 1);
    assert_eq!(
        reg[0].param("BlockDeviceMapping.1.Ebs.VolumeType"),
        Some("io2")
    );
    assert_eq!(reg[0].param("BootMode"), Some("legacy-bios"));
    assert_eq!(reg[0].param("ImdsSupport"), None);
    // Not --public: no launch permission for all.
    assert!(fx.launch_groups("eu-central-1", &amis[0].1)?.is_empty());
    assert!(fx.volume_groups("eu-central-1", &amis[0].2)?.is_empty());
    assert!(fx.stub.calls("ModifyImageAttribute", None).is_empty());
    Ok(())
}

#[test]
fn bad_input_one_line_and_meta_unchanged() -> Result<()> {
    let Some(fx) = Fx::new()? else { return Ok(()) };
    let before = fx.meta_bytes()?;
    let good = format!("s3://{BUCKET}/p");
    let check = |r: Run, want: &str| -> Result<()> {
        assert_eq!(r.code, 1, "{want}: {}", r.stderr);
        let line = r.error_line();
        assert!(line.contains(want), "want {want:?}: {line}");
        assert!(!r.stderr.contains("never-printed"), "secret in the output");
        assert_eq!(fx.meta_bytes()?, before, "{want}: meta.json changed");
        Ok(())
    };
    check(
        fx.upload(&["--bucket", "s3://no-such-bucket/p", "--region", "us-east-1"])?,
        "s3://no-such-bucket: no such bucket",
    )?;
    check(
        fx.upload(&["--bucket", "/tmp/x", "--region", "us-east-1"])?,
        "not an s3:// URL",
    )?;
    fx.stub.state().denied_key = Some(DENIED_KEY.into());
    check(
        run(&mut fx.cmd(DENIED_KEY, &["--bucket", &good, "--region", "us-east-1"]))?,
        "EC2 us-east-1 DescribeImages example-os-1.20261207.0-x86_64: access denied (AuthFailure",
    )?;
    check(
        fx.upload(&[
            "--bucket",
            &good,
            "--region",
            "us-east-1",
            "--volume-type",
            "fast",
        ])?,
        "--volume-type \"fast\": not an EBS volume type",
    )?;
    std::fs::write(
        fx.t.wd.config_dir().join("image.yaml"),
        "aws-x86-boot-mode: bios\n",
    )?;
    check(
        fx.upload(&["--bucket", &good, "--region", "us-east-1"])?,
        "image.yaml: aws-x86-boot-mode \"bios\"",
    )?;
    std::fs::remove_file(fx.t.wd.config_dir().join("image.yaml"))?;
    assert!(fx.stub.calls("ImportSnapshot", None).is_empty());
    assert!(fx.images("us-east-1")?.is_empty());

    // A build without an aws image.
    fx.t.add_build("2.20261207.0", ARCH)?;
    let before2 = std::fs::read(fx.t.wd.meta_path("2.20261207.0", ARCH)?)?;
    let r = fx.upload(&["--bucket", &good, "--region", "us-east-1"])?;
    assert_eq!(r.code, 1);
    assert!(
        r.error_line().contains("the build has no aws image"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read(fx.t.wd.meta_path("2.20261207.0", ARCH)?)?,
        before2
    );
    Ok(())
}
