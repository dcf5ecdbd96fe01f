//! EC2 in one region (aws-sdk-ec2): the calls `upload-aws` makes, each one
//! error-mapped to one line naming the region and the object, and the waits
//! (snapshot import, image availability) bounded by a timeout.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use aws_config::SdkConfig;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, Image,
    ImageState, ImdsSupportValues, LaunchPermission, LaunchPermissionModifications, OperationType,
    ResourceType, SnapshotDiskContainer, Tag, TagSpecification, UserBucket, VolumeType,
};

/// The root device of every image (as coreos-assembler's ore registers them).
pub const ROOT_DEVICE: &str = "/dev/xvda";

/// EC2 in one region.
#[derive(Clone)]
pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    pub region: String,
}

/// Error codes that mean the credentials (or their permissions) are refused.
const DENIED: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "Blocked",
    "OptInRequired",
];

/// One line for a failed call: `<what>: <code>: <message>`, access denials said so.
pub fn ec2_err<E, R>(e: SdkError<E, R>, what: &str) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let one_line = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    match (e.code(), e.message()) {
        (Some(code), msg) if DENIED.contains(&code) => anyhow!(
            "{what}: access denied ({code}: {}); check the AWS credentials and their EC2 permissions",
            one_line(msg.unwrap_or("no message"))
        ),
        (Some(code), msg) => anyhow!("{what}: {code}: {}", one_line(msg.unwrap_or("no message"))),
        _ => anyhow!("{what}: {}", one_line(&DisplayErrorContext(e).to_string())),
    }
}

/// The state of a snapshot import task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportState {
    /// Still running: status, progress (percent), status message.
    Active {
        status: String,
        progress: Option<String>,
        message: Option<String>,
    },
    Completed {
        snapshot: String,
    },
    /// Deleted or failed, with AWS's reason.
    Failed {
        message: String,
    },
}

/// A snapshot import task found by its description.
#[derive(Debug, Clone)]
pub struct ImportTask {
    pub id: String,
    pub state: ImportState,
}

/// What to register.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub snapshot: &'a str,
    pub architecture: ArchitectureValues,
    pub boot_mode: BootModeValues,
    pub volume_type: VolumeType,
    pub imds_v2_only: bool,
}

fn tags(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs
        .iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn task_state(d: Option<&aws_sdk_ec2::types::SnapshotTaskDetail>) -> ImportState {
    let status = d.and_then(|d| d.status()).unwrap_or("unknown").to_string();
    let message = d.and_then(|d| d.status_message()).map(str::to_string);
    match status.as_str() {
        "completed" => match d.and_then(|d| d.snapshot_id()) {
            Some(s) => ImportState::Completed {
                snapshot: s.to_string(),
            },
            None => ImportState::Failed {
                message: "completed without a snapshot ID".into(),
            },
        },
        "deleted" | "deleting" | "error" | "failed" => ImportState::Failed {
            message: message.unwrap_or(status),
        },
        _ => ImportState::Active {
            status,
            progress: d.and_then(|d| d.progress()).map(str::to_string),
            message,
        },
    }
}

/// The snapshot of an image's root device.
pub fn root_snapshot(img: &Image) -> Option<String> {
    let root = img.root_device_name().unwrap_or(ROOT_DEVICE);
    let bdms = img.block_device_mappings();
    bdms.iter()
        .find(|b| b.device_name() == Some(root))
        .or_else(|| bdms.iter().find(|b| b.ebs().is_some()))
        .and_then(|b| b.ebs())
        .and_then(|e| e.snapshot_id())
        .map(str::to_string)
}

impl Ec2 {
    pub fn new(sdk: &SdkConfig, region: &str) -> Self {
        let conf = aws_sdk_ec2::config::Builder::from(sdk)
            .region(Region::new(region.to_string()))
            .retry_config(crate::store::awsconfig::retry_config())
            .timeout_config(crate::store::awsconfig::timeout_config(
                crate::store::READ_TIMEOUT,
            ))
            .build();
        Self {
            client: aws_sdk_ec2::Client::from_conf(conf),
            region: region.to_string(),
        }
    }

    fn what(&self, action: &str, object: &str) -> String {
        format!("EC2 {} {action} {object}", self.region)
    }

    /// Our images (owner self) named `name`; the newest first.
    pub async fn images_named(&self, name: &str) -> Result<Vec<Image>> {
        let out = self
            .client
            .describe_images()
            .owners("self")
            .filters(filter("name", name))
            .send()
            .await
            .map_err(|e| ec2_err(e, &self.what("DescribeImages", name)))?;
        let mut v: Vec<Image> = out
            .images()
            .iter()
            .filter(|i| i.name() == Some(name))
            .filter(|i| i.state() != Some(&ImageState::Deregistered))
            .cloned()
            .collect();
        v.sort_by(|a, b| b.creation_date().cmp(&a.creation_date()));
        Ok(v)
    }

    pub async fn image(&self, id: &str) -> Result<Image> {
        let out = self
            .client
            .describe_images()
            .image_ids(id)
            .send()
            .await
            .map_err(|e| ec2_err(e, &self.what("DescribeImages", id)))?;
        out.images()
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("{}: no such image", self.what("DescribeImages", id)))
    }

    /// A completed snapshot of ours tagged `Name=<name>`.
    pub async fn snapshot_named(&self, name: &str) -> Result<Option<String>> {
        let out = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .filters(filter("tag:Name", name))
            .send()
            .await
            .map_err(|e| ec2_err(e, &self.what("DescribeSnapshots", name)))?;
        Ok(out
            .snapshots()
            .iter()
            .find(|s| s.state().is_some_and(|st| st.as_str() == "completed"))
            .and_then(|s| s.snapshot_id())
            .map(str::to_string))
    }

    /// The import tasks whose description is `description` (running or completed
    /// first: a failed one is never reused).
    pub async fn import_tasks(&self, description: &str) -> Result<Vec<ImportTask>> {
        let out = self
            .client
            .describe_import_snapshot_tasks()
            .send()
            .await
            .map_err(|e| ec2_err(e, &self.what("DescribeImportSnapshotTasks", description)))?;
        let mut v: Vec<ImportTask> = out
            .import_snapshot_tasks()
            .iter()
            .filter(|t| t.description() == Some(description))
            .filter_map(|t| {
                Some(ImportTask {
                    id: t.import_task_id()?.to_string(),
                    state: task_state(t.snapshot_task_detail()),
                })
            })
            .collect();
        v.sort_by_key(|t| match t.state {
            ImportState::Completed { .. } => 0,
            ImportState::Active { .. } => 1,
            ImportState::Failed { .. } => 2,
        });
        Ok(v)
    }

    /// Start importing `s3://bucket/key` (a vmdk) as a snapshot; the task ID.
    pub async fn import_snapshot(
        &self,
        description: &str,
        bucket: &str,
        key: &str,
        tag_pairs: &[(String, String)],
    ) -> Result<String> {
        let what = self.what("ImportSnapshot", &format!("s3://{bucket}/{key}"));
        let out = self
            .client
            .import_snapshot()
            .description(description)
            .disk_container(
                SnapshotDiskContainer::builder()
                    .description(description)
                    .format("VMDK")
                    .user_bucket(UserBucket::builder().s3_bucket(bucket).s3_key(key).build())
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::ImportSnapshotTask)
                    .set_tags(Some(tags(tag_pairs)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| ec2_err(e, &what))?;
        out.import_task_id()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{what}: no import task ID in the response"))
    }

    /// Wait for an import task to finish; its snapshot. Progress is logged when it
    /// changes; an import still running after `timeout` is an error (it keeps running
    /// in AWS and a rerun picks it up).
    pub async fn wait_import(
        &self,
        task: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<String> {
        let what = self.what("import", task);
        let start = Instant::now();
        let mut last = None;
        loop {
            let out = self
                .client
                .describe_import_snapshot_tasks()
                .import_task_ids(task)
                .send()
                .await
                .map_err(|e| ec2_err(e, &self.what("DescribeImportSnapshotTasks", task)))?;
            let t = out
                .import_snapshot_tasks()
                .iter()
                .find(|t| t.import_task_id() == Some(task))
                .ok_or_else(|| anyhow!("{what}: no such import task"))?;
            match task_state(t.snapshot_task_detail()) {
                ImportState::Completed { snapshot } => {
                    tracing::info!("{what}: completed, snapshot {snapshot}");
                    return Ok(snapshot);
                }
                ImportState::Failed { message } => bail!("{what}: the import failed: {message}"),
                ImportState::Active {
                    status,
                    progress,
                    message,
                } => {
                    let now = (status, progress, message);
                    if last.as_ref() != Some(&now) {
                        tracing::info!(
                            "{what}: {} {}% {}",
                            now.0,
                            now.1.as_deref().unwrap_or("0"),
                            now.2.as_deref().unwrap_or("")
                        );
                        last = Some(now);
                    }
                }
            }
            if start.elapsed() >= timeout {
                bail!(
                    "{what}: not finished after {}s (--import-timeout); it goes on in AWS, and a rerun waits for it",
                    timeout.as_secs_f64()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Register an HVM image with ENA from a snapshot; its ID.
    pub async fn register(&self, r: &Registration<'_>) -> Result<String> {
        let what = self.what("RegisterImage", r.name);
        let mut req = self
            .client
            .register_image()
            .name(r.name)
            .description(r.description)
            .architecture(r.architecture.clone())
            .virtualization_type("hvm")
            .ena_support(true)
            .sriov_net_support("simple")
            .boot_mode(r.boot_mode.clone())
            .root_device_name(ROOT_DEVICE)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(ROOT_DEVICE)
                    .ebs(
                        EbsBlockDevice::builder()
                            .snapshot_id(r.snapshot)
                            .volume_type(r.volume_type.clone())
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            );
        if r.imds_v2_only {
            req = req.imds_support(ImdsSupportValues::V20);
        }
        let out = req.send().await.map_err(|e| ec2_err(e, &what))?;
        out.image_id()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{what}: no image ID in the response"))
    }

    /// Copy an image from `source_region` into this region; the new image's ID.
    pub async fn copy_from(
        &self,
        source_region: &str,
        source_image: &str,
        name: &str,
        description: &str,
    ) -> Result<String> {
        let what = self.what("CopyImage", &format!("{source_region}/{source_image}"));
        let out = self
            .client
            .copy_image()
            .source_region(source_region)
            .source_image_id(source_image)
            .name(name)
            .description(description)
            .send()
            .await
            .map_err(|e| ec2_err(e, &what))?;
        out.image_id()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{what}: no image ID in the response"))
    }

    /// Wait until an image is available; the image.
    pub async fn wait_available(
        &self,
        id: &str,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Image> {
        let start = Instant::now();
        loop {
            let img = self.image(id).await?;
            match img.state() {
                Some(ImageState::Available) => return Ok(img),
                Some(s @ (ImageState::Failed | ImageState::Invalid | ImageState::Deregistered)) => {
                    let reason = img
                        .state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given");
                    bail!("EC2 {} image {id}: {} ({reason})", self.region, s.as_str())
                }
                _ => {}
            }
            if start.elapsed() >= timeout {
                bail!(
                    "EC2 {} image {id}: not available after {}s",
                    self.region,
                    timeout.as_secs_f64()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    pub async fn tag(&self, resources: &[&str], tag_pairs: &[(String, String)]) -> Result<()> {
        let mut req = self.client.create_tags().set_tags(Some(tags(tag_pairs)));
        for r in resources {
            req = req.resources(*r);
        }
        req.send()
            .await
            .map_err(|e| ec2_err(e, &self.what("CreateTags", &resources.join(" "))))?;
        Ok(())
    }

    /// Let everyone launch the image and create volumes from its snapshot.
    pub async fn make_public(&self, image: &str, snapshot: &str) -> Result<()> {
        self.client
            .modify_image_attribute()
            .image_id(image)
            .launch_permission(
                LaunchPermissionModifications::builder()
                    .add(LaunchPermission::builder().group("all".into()).build())
                    .build(),
            )
            .send()
            .await
            .map_err(|e| ec2_err(e, &self.what("ModifyImageAttribute", image)))?;
        self.client
            .modify_snapshot_attribute()
            .snapshot_id(snapshot)
            .attribute("createVolumePermission".into())
            .operation_type(OperationType::Add)
            .group_names("all")
            .send()
            .await
            .map_err(|e| ec2_err(e, &self.what("ModifySnapshotAttribute", snapshot)))?;
        Ok(())
    }
}
