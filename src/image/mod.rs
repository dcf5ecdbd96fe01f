//! Disk images from a build's OSTree commit: `cosa-image`.

pub mod config;
