//! Writing (and reading back) a GPT partition table on a disk image file.
//!
//! sfdisk 2.38 (Debian 12) cannot write a 4096-byte-sector table into a regular file:
//! it takes the sector size from the device and a file is always 512. A GPT is a
//! small, fully specified structure (UEFI 2.10 §5.3), so we write it ourselves for
//! both sector sizes: the protective MBR, the primary header and entry array at
//! LBA 1 and 2, the backup array and header at the end of the disk. Partition GUIDs
//! are derived from the disk GUID and the partition number, so the same layout always
//! gives the same table (CoreOS randomises them on first boot anyway).

use std::fs::File;
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result, bail};
use camino::Utf8Path;
use sha2::{Digest, Sha256};

use super::layout::Placed;

/// Number of entries in the partition entry array (the UEFI minimum is 16 KiB of entries).
const ENTRIES: u32 = 128;
const ENTRY_SIZE: u32 = 128;
const HEADER_SIZE: u32 = 92;

/// A GUID in its textual form, parsed to the 16 on-disk (mixed-endian) bytes.
pub fn guid_bytes(text: &str) -> Result<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || text.len() != 36 {
        bail!("{text:?} is not a GUID");
    }
    let raw = hex::decode(&hex).with_context(|| format!("{text:?} is not a GUID"))?;
    let mut b = [0u8; 16];
    // The first three fields are little-endian, the last two big-endian (as written).
    b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..16].copy_from_slice(&raw[8..16]);
    Ok(b)
}

/// The textual (upper-case) form of 16 on-disk GUID bytes.
pub fn guid_text(b: &[u8]) -> String {
    let h = |r: &[u8]| hex::encode_upper(r);
    format!(
        "{}-{}-{}-{}-{}",
        h(&[b[3], b[2], b[1], b[0]]),
        h(&[b[5], b[4]]),
        h(&[b[7], b[6]]),
        h(&b[8..10]),
        h(&b[10..16])
    )
}

/// A version-4-shaped GUID derived from a seed (stable across runs).
pub fn derived_guid(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let s = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

const fn crc32_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC_TABLE: [u32; 256] = crc32_table();

/// CRC-32 (IEEE 802.3), as GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c ^ 0xFFFF_FFFF
}

fn entries_sectors(sector: u64) -> u64 {
    (ENTRIES as u64 * ENTRY_SIZE as u64).div_ceil(sector)
}

/// The first and last LBA a partition may use on a disk of `total` sectors.
pub fn usable_lbas(total: u64, sector: u64) -> (u64, u64) {
    let n = entries_sectors(sector);
    (2 + n, total - 2 - n)
}

fn entry_array(parts: &[Placed], sector: u64, disk_guid: &str) -> Result<Vec<u8>> {
    let mut arr = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for p in parts {
        let n = p.spec.number;
        if n == 0 || n > ENTRIES {
            bail!("partition number {n} out of range");
        }
        if !p.offset.is_multiple_of(sector) || !p.size.is_multiple_of(sector) {
            bail!("partition {n} is not aligned to {sector}-byte sectors");
        }
        let e = &mut arr[((n - 1) * ENTRY_SIZE) as usize..(n * ENTRY_SIZE) as usize];
        e[0..16].copy_from_slice(&guid_bytes(p.spec.type_guid)?);
        let uuid = derived_guid(&format!("cosa-image {disk_guid} partition {n}"));
        e[16..32].copy_from_slice(&guid_bytes(&uuid)?);
        let first = p.offset / sector;
        let last = first + p.size / sector - 1;
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        // Attributes (48..56) stay 0.
        let name: Vec<u16> = p.spec.name.encode_utf16().collect();
        if name.len() > 36 {
            bail!(
                "partition name {:?} longer than 36 UTF-16 units",
                p.spec.name
            );
        }
        for (i, u) in name.iter().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    Ok(arr)
}

fn header(
    sector: u64,
    total: u64,
    primary: bool,
    disk_guid: &str,
    entries_crc: u32,
) -> Result<Vec<u8>> {
    let (first_usable, last_usable) = usable_lbas(total, sector);
    let n = entries_sectors(sector);
    let (my_lba, alt_lba, entries_lba) = if primary {
        (1, total - 1, 2)
    } else {
        (total - 1, 1, total - 1 - n)
    };
    let mut h = vec![0u8; sector as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
    // 16..20: header CRC, filled below; 20..24 reserved.
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(&guid_bytes(disk_guid)?);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&ENTRIES.to_le_bytes());
    h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32(&h[..HEADER_SIZE as usize]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    Ok(h)
}

fn protective_mbr(sector: u64, total: u64) -> Vec<u8> {
    let mut m = vec![0u8; sector as usize];
    let e = &mut m[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE; // GPT protective
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(total - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Write a GPT for `parts` onto `file` (a disk of `disk_size` bytes) with `sector`-byte sectors.
pub fn write(
    file: &File,
    path: &Utf8Path,
    disk_size: u64,
    sector: u64,
    disk_guid: &str,
    parts: &[Placed],
) -> Result<()> {
    if !disk_size.is_multiple_of(sector) {
        bail!("{path}: size {disk_size} is not a multiple of the {sector}-byte sector");
    }
    let total = disk_size / sector;
    let (first_usable, last_usable) = usable_lbas(total, sector);
    for p in parts {
        let first = p.offset / sector;
        let last = (p.offset + p.size) / sector - 1;
        if first < first_usable || last > last_usable {
            bail!(
                "{path}: partition {} ({}) does not fit in the usable sectors",
                p.spec.number,
                p.spec.name
            );
        }
    }
    let arr = entry_array(parts, sector, disk_guid)?;
    let crc = crc32(&arr);
    let n = entries_sectors(sector);
    let w = |buf: &[u8], lba: u64| {
        file.write_all_at(buf, lba * sector)
            .with_context(|| format!("writing the partition table of {path}"))
    };
    w(&protective_mbr(sector, total), 0)?;
    w(&header(sector, total, true, disk_guid, crc)?, 1)?;
    w(&arr, 2)?;
    w(&arr, total - 1 - n)?;
    w(&header(sector, total, false, disk_guid, crc)?, total - 1)?;
    Ok(())
}

/// A partition read back from a GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPart {
    pub number: u32,
    pub type_guid: String,
    pub uuid: String,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// A GPT read back (primary header and entries, CRCs checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadTable {
    pub disk_guid: String,
    pub parts: Vec<ReadPart>,
}

/// Read and check the primary GPT of a disk image with `sector`-byte sectors.
pub fn read(path: &Utf8Path, sector: u64) -> Result<ReadTable> {
    let f = File::open(path).with_context(|| format!("opening {path}"))?;
    let mut h = vec![0u8; sector as usize];
    f.read_exact_at(&mut h, sector)
        .with_context(|| format!("reading the GPT header of {path}"))?;
    if &h[0..8] != b"EFI PART" {
        bail!("{path}: no GPT header at LBA 1 with {sector}-byte sectors");
    }
    let mut hc = h[..HEADER_SIZE as usize].to_vec();
    let want = u32::from_le_bytes([hc[16], hc[17], hc[18], hc[19]]);
    hc[16..20].fill(0);
    if crc32(&hc) != want {
        bail!("{path}: GPT header CRC mismatch");
    }
    let u64at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let entries_lba = u64at(72);
    let mut arr = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    f.read_exact_at(&mut arr, entries_lba * sector)
        .with_context(|| format!("reading the GPT entries of {path}"))?;
    let want = u32::from_le_bytes([h[88], h[89], h[90], h[91]]);
    if crc32(&arr) != want {
        bail!("{path}: GPT entry array CRC mismatch");
    }
    let mut parts = Vec::new();
    for (i, e) in arr.chunks(ENTRY_SIZE as usize).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let lba = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let name16: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        parts.push(ReadPart {
            number: i as u32 + 1,
            type_guid: guid_text(&e[0..16]),
            uuid: guid_text(&e[16..32]),
            name: String::from_utf16_lossy(&name16),
            first_lba: lba(32),
            last_lba: lba(40),
        });
    }
    Ok(ReadTable {
        disk_guid: guid_text(&h[56..72]),
        parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guids_round_trip_mixed_endian() {
        let t = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
        let b = guid_bytes(t).unwrap();
        assert_eq!(&b[0..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(guid_text(&b), t);
        assert!(guid_bytes("nope").is_err());
        let d = derived_guid("x");
        assert_eq!(d, derived_guid("x"));
        assert_eq!(&d[14..15], "4");
    }
}
