//! Disk images (being written).
