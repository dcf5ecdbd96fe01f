//! OVA files for VMware and VirtualBox: a ustar tar holding the OVF descriptor
//! `coreos.ovf` first and then `disk.vmdk` (a stream-optimized VMDK), as
//! coreos-assembler makes them (OVF 1.x requires the descriptor to come first).
//!
//! The VMware descriptor carries image.yaml's `vmware-hw-version` (virtual hardware
//! family `vmx-<n>`), `vmware-os-type` (guest OS) and `vmware-secure-boot` (EFI
//! firmware with secure boot on); defaults are coreos-assembler's (13,
//! `rhel7_64Guest`, true). Both descriptors offer the Ignition guestinfo properties
//! (`guestinfo.ignition.config.data` and its `.encoding`).

use std::io::Write;

use anyhow::{Context, Result};
use camino::Utf8Path;

use super::archive::{self, HashWriter, TarEntry};
use super::platforms::OvaFlavor;
use crate::image::config::ImageConfig;

pub const DEFAULT_VMWARE_HW_VERSION: u32 = 13;
pub const DEFAULT_VMWARE_OS_TYPE: &str = "rhel7_64Guest";
pub const DEFAULT_VMWARE_SECURE_BOOT: bool = true;
/// Virtual machine defaults (coreos-assembler's).
pub const CPUS: u32 = 2;
pub const MEMORY_MIB: u32 = 4096;

/// What goes into the descriptor.
#[derive(Debug, Clone)]
pub struct OvfParams {
    pub flavor: OvaFlavor,
    /// The VM's name (the build's `name` and version).
    pub name: String,
    pub product: String,
    pub vendor: String,
    pub version: String,
    pub vmdk_size: u64,
    pub capacity: u64,
    pub hw_version: u32,
    pub os_type: String,
    pub secure_boot: bool,
}

impl OvfParams {
    /// Fill the VMware keys from image.yaml, with coreos-assembler's defaults.
    pub fn vmware_from(cfg: &ImageConfig) -> (u32, String, bool) {
        (
            cfg.vmware_hw_version.unwrap_or(DEFAULT_VMWARE_HW_VERSION),
            cfg.vmware_os_type
                .clone()
                .unwrap_or_else(|| DEFAULT_VMWARE_OS_TYPE.to_string()),
            cfg.vmware_secure_boot.unwrap_or(DEFAULT_VMWARE_SECURE_BOOT),
        )
    }
}

/// Escape text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => o.push(c),
        }
    }
    o
}

const VMDK_FORMAT: &str =
    "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized";

/// The OVF descriptor.
pub fn ovf(p: &OvfParams) -> String {
    let e = xml_escape;
    let (system_type, scsi, nic, os_section, extra_config) = match p.flavor {
        OvaFlavor::Vmware => {
            let mut cfg = String::new();
            if p.secure_boot {
                cfg.push_str(
                    "      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>\n",
                );
                cfg.push_str(
                    "      <vmw:Config ovf:required=\"false\" vmw:key=\"uefi.secureBoot.enabled\" vmw:value=\"true\"/>\n",
                );
            }
            (
                format!("vmx-{:02}", p.hw_version),
                "lsilogic",
                "VmxNet3",
                format!(
                    "    <OperatingSystemSection ovf:id=\"80\" ovf:version=\"7\" vmw:osType=\"{}\">\n      <Info>The kind of installed guest operating system</Info>\n    </OperatingSystemSection>\n",
                    e(&p.os_type)
                ),
                cfg,
            )
        }
        OvaFlavor::Virtualbox => (
            "virtualbox-2.2".to_string(),
            "lsilogic",
            "E1000",
            "    <OperatingSystemSection ovf:id=\"80\">\n      <Info>The kind of installed guest operating system</Info>\n      <Description>RedHat_64</Description>\n      <vbox:OSType ovf:required=\"false\">RedHat_64</vbox:OSType>\n    </OperatingSystemSection>\n".to_string(),
            String::new(),
        ),
    };
    let mut s = String::new();
    s.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    s.push_str(concat!(
        "<Envelope xmlns=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:cim=\"http://schemas.dmtf.org/wbem/wscim/1/common\"",
        " xmlns:ovf=\"http://schemas.dmtf.org/ovf/envelope/1\"",
        " xmlns:rasd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData\"",
        " xmlns:vssd=\"http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData\"",
        " xmlns:vmw=\"http://www.vmware.com/schema/ovf\"",
        " xmlns:vbox=\"http://www.virtualbox.org/ovf/machine\"",
        " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
    ));
    s.push_str(&format!(
        "  <References>\n    <File ovf:href=\"disk.vmdk\" ovf:id=\"file1\" ovf:size=\"{}\"/>\n  </References>\n",
        p.vmdk_size
    ));
    s.push_str(&format!(
        "  <DiskSection>\n    <Info>Virtual disk information</Info>\n    <Disk ovf:capacity=\"{}\" ovf:capacityAllocationUnits=\"byte\" ovf:diskId=\"vmdisk1\" ovf:fileRef=\"file1\" ovf:format=\"{VMDK_FORMAT}\" ovf:populatedSize=\"{}\"/>\n  </DiskSection>\n",
        p.capacity, p.vmdk_size
    ));
    s.push_str("  <NetworkSection>\n    <Info>The list of logical networks</Info>\n    <Network ovf:name=\"VM Network\">\n      <Description>The VM Network network</Description>\n    </Network>\n  </NetworkSection>\n");
    s.push_str(&format!(
        "  <VirtualSystem ovf:id=\"{}\">\n    <Info>A virtual machine</Info>\n    <Name>{}</Name>\n",
        e(&p.name),
        e(&p.name)
    ));
    s.push_str(&os_section);
    s.push_str("    <VirtualHardwareSection ovf:transport=\"com.vmware.guestInfo\">\n      <Info>Virtual hardware requirements</Info>\n");
    s.push_str(&format!(
        "      <System>\n        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>\n        <vssd:InstanceID>0</vssd:InstanceID>\n        <vssd:VirtualSystemIdentifier>{}</vssd:VirtualSystemIdentifier>\n        <vssd:VirtualSystemType>{system_type}</vssd:VirtualSystemType>\n      </System>\n",
        e(&p.name)
    ));
    let item = |body: String| format!("      <Item>\n{body}      </Item>\n");
    s.push_str(&item(format!(
        "        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>\n        <rasd:Description>Number of Virtual CPUs</rasd:Description>\n        <rasd:ElementName>{CPUS} virtual CPU(s)</rasd:ElementName>\n        <rasd:InstanceID>1</rasd:InstanceID>\n        <rasd:ResourceType>3</rasd:ResourceType>\n        <rasd:VirtualQuantity>{CPUS}</rasd:VirtualQuantity>\n"
    )));
    s.push_str(&item(format!(
        "        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>\n        <rasd:Description>Memory Size</rasd:Description>\n        <rasd:ElementName>{MEMORY_MIB} MB of memory</rasd:ElementName>\n        <rasd:InstanceID>2</rasd:InstanceID>\n        <rasd:ResourceType>4</rasd:ResourceType>\n        <rasd:VirtualQuantity>{MEMORY_MIB}</rasd:VirtualQuantity>\n"
    )));
    s.push_str(&item(format!(
        "        <rasd:Address>0</rasd:Address>\n        <rasd:Description>SCSI Controller</rasd:Description>\n        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>\n        <rasd:InstanceID>3</rasd:InstanceID>\n        <rasd:ResourceSubType>{scsi}</rasd:ResourceSubType>\n        <rasd:ResourceType>6</rasd:ResourceType>\n"
    )));
    s.push_str(&item(
        "        <rasd:AddressOnParent>0</rasd:AddressOnParent>\n        <rasd:ElementName>Hard disk 0</rasd:ElementName>\n        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>\n        <rasd:InstanceID>4</rasd:InstanceID>\n        <rasd:Parent>3</rasd:Parent>\n        <rasd:ResourceType>17</rasd:ResourceType>\n".to_string(),
    ));
    s.push_str(&item(format!(
        "        <rasd:AddressOnParent>7</rasd:AddressOnParent>\n        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n        <rasd:Connection>VM Network</rasd:Connection>\n        <rasd:ElementName>Network adapter 1</rasd:ElementName>\n        <rasd:InstanceID>5</rasd:InstanceID>\n        <rasd:ResourceSubType>{nic}</rasd:ResourceSubType>\n        <rasd:ResourceType>10</rasd:ResourceType>\n"
    )));
    s.push_str(&extra_config);
    s.push_str("    </VirtualHardwareSection>\n");
    s.push_str(&format!(
        "    <ProductSection>\n      <Info>Information about the installed software</Info>\n      <Product>{}</Product>\n      <Vendor>{}</Vendor>\n      <Version>{}</Version>\n",
        e(&p.product),
        e(&p.vendor),
        e(&p.version)
    ));
    for (key, label) in [
        ("guestinfo.ignition.config.data", "Ignition config data"),
        (
            "guestinfo.ignition.config.data.encoding",
            "Ignition config data encoding",
        ),
    ] {
        s.push_str(&format!(
            "      <Property ovf:userConfigurable=\"true\" ovf:type=\"string\" ovf:key=\"{key}\" ovf:value=\"\">\n        <Label>{label}</Label>\n      </Property>\n"
        ));
    }
    s.push_str("    </ProductSection>\n  </VirtualSystem>\n</Envelope>\n");
    s
}

/// Write the OVA to `out`: `coreos.ovf`, then the VMDK as `disk.vmdk`. Returns
/// (sha256, size) of the OVA.
pub fn write_ova(
    out: &Utf8Path,
    vmdk: &Utf8Path,
    params: &OvfParams,
    mtime: u64,
) -> Result<(String, u64)> {
    let f = std::fs::File::create(out).with_context(|| format!("creating {out}"))?;
    let mut w = HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
    let descriptor = ovf(params);
    (|| -> Result<()> {
        archive::tar_bytes(&mut w, "coreos.ovf", 0o644, mtime, descriptor.as_bytes())?;
        let mut src = std::fs::File::open(vmdk).with_context(|| format!("opening {vmdk}"))?;
        archive::tar_member(
            &mut w,
            &TarEntry {
                name: "disk.vmdk",
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: params.vmdk_size,
                mtime,
                kind: b'0',
            },
            &mut src,
        )?;
        w.write_all(&archive::TAR_END)?;
        w.flush()?;
        Ok(())
    })()
    .with_context(|| format!("writing {out}"))
    .map_err(|e| super::derive::explain_full(e, out))?;
    let (sum, len, bw) = w.finish();
    bw.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {out}"))?;
    Ok((sum, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(flavor: OvaFlavor) -> OvfParams {
        OvfParams {
            flavor,
            name: "example-os 1 <x&y>".into(),
            product: "p".into(),
            vendor: "v".into(),
            version: "1".into(),
            vmdk_size: 123,
            capacity: 3 << 30,
            hw_version: 17,
            os_type: "fedora64Guest".into(),
            secure_boot: true,
        }
    }

    #[test]
    fn descriptors_parse_and_carry_the_settings() {
        let x = ovf(&params(OvaFlavor::Vmware));
        let doc = roxmltree::Document::parse(&x).unwrap();
        let ovf_ns = "http://schemas.dmtf.org/ovf/envelope/1";
        let os = doc
            .descendants()
            .find(|n| n.has_tag_name((ovf_ns, "OperatingSystemSection")))
            .unwrap();
        assert_eq!(
            os.attribute(("http://www.vmware.com/schema/ovf", "osType")),
            Some("fedora64Guest")
        );
        assert!(x.contains("<vssd:VirtualSystemType>vmx-17<"));
        assert!(x.contains("uefi.secureBoot.enabled\" vmw:value=\"true\""));
        assert!(x.contains("example-os 1 &lt;x&amp;y&gt;"));
        let disk = doc
            .descendants()
            .find(|n| n.has_tag_name((ovf_ns, "Disk")))
            .unwrap();
        assert_eq!(disk.attribute((ovf_ns, "capacity")), Some("3221225472"));
        let mut p = params(OvaFlavor::Vmware);
        p.secure_boot = false;
        assert!(!ovf(&p).contains("secureBoot"));
        let v = ovf(&params(OvaFlavor::Virtualbox));
        roxmltree::Document::parse(&v).unwrap();
        assert!(v.contains("virtualbox-2.2") && !v.contains("vmx-"));
    }
}
