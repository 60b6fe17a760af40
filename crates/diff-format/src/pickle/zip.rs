//! A minimal, read-only zip directory reader for PyTorch's checkpoint archives.
//!
//! `torch.save` writes an uncompressed ("stored") zip through its own writer, with zip64 records
//! once the archive passes 4 GiB (every SD 1.x `.ckpt` does). We only need the central directory
//! and the byte range of each stored entry, so a few hundred lines replace a zip dependency. Every
//! number read from the file is checked against the file length before use.

use super::PickleError;
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
/// The end-of-central-directory record is 22 bytes plus a comment of at most 65535 bytes.
const EOCD_SEARCH: u64 = 22 + 65_535;
/// Central directories larger than this are refused rather than allocated.
const MAX_CENTRAL_DIRECTORY: u64 = 256 * 1024 * 1024;

/// Where one stored entry's bytes lie in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Absolute offset of the first data byte.
    pub offset: u64,
    /// Length in bytes (compressed == uncompressed for stored entries).
    pub len: u64,
}

/// The entries of a zip archive by name.
#[derive(Debug, Clone)]
pub(crate) struct ZipIndex {
    pub entries: BTreeMap<String, Entry>,
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let b = buf.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

fn corrupt(path: &Path, what: impl Into<String>) -> PickleError {
    PickleError::CorruptArchive {
        path: path.to_path_buf(),
        reason: what.into(),
    }
}

fn read_at<R: Read + Seek>(
    file: &mut R,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, PickleError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(|source| io_err(path, source))?;
    let mut buf = Vec::new();
    file.take(len)
        .read_to_end(&mut buf)
        .map_err(|source| io_err(path, source))?;
    if buf.len() as u64 != len {
        return Err(corrupt(
            path,
            format!(
                "expected {len} bytes at offset {offset}, the file ends after {}",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

fn io_err(path: &Path, source: std::io::Error) -> PickleError {
    PickleError::Io {
        path: PathBuf::from(path),
        source,
    }
}

/// Reads the central directory of the zip archive `file` of length `file_len`.
pub(crate) fn read_index<R: Read + Seek>(
    file: &mut R,
    path: &Path,
    file_len: u64,
) -> Result<ZipIndex, PickleError> {
    // 1. Find the end-of-central-directory record by scanning backwards for its signature.
    let tail_len = file_len.min(EOCD_SEARCH);
    let tail_start = file_len - tail_len;
    let tail = read_at(file, path, tail_start, tail_len)?;
    let eocd_pos = (0..tail.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(&tail, i) == Some(EOCD_SIG))
        .ok_or_else(|| corrupt(path, "no end-of-central-directory record"))?;
    let eocd = &tail[eocd_pos..];
    let short = || corrupt(path, "truncated end-of-central-directory record");
    let mut count = u64::from(u16_at(eocd, 10).ok_or_else(short)?);
    let mut cd_size = u64::from(u32_at(eocd, 12).ok_or_else(short)?);
    let mut cd_offset = u64::from(u32_at(eocd, 16).ok_or_else(short)?);

    // 2. Zip64: the real numbers live in the zip64 record that the locator (just before the
    //    classic record) points at.
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let loc_pos = eocd_pos
            .checked_sub(20)
            .ok_or_else(|| corrupt(path, "zip64 locator missing"))?;
        if u32_at(&tail, loc_pos) != Some(ZIP64_LOCATOR_SIG) {
            return Err(corrupt(path, "zip64 locator missing"));
        }
        let z64_offset = u64_at(&tail, loc_pos + 8).ok_or_else(short)?;
        let rec = read_at(file, path, z64_offset, 56)?;
        if u32_at(&rec, 0) != Some(ZIP64_EOCD_SIG) {
            return Err(corrupt(
                path,
                "zip64 end-of-central-directory record missing",
            ));
        }
        count = u64_at(&rec, 32).ok_or_else(short)?;
        cd_size = u64_at(&rec, 40).ok_or_else(short)?;
        cd_offset = u64_at(&rec, 48).ok_or_else(short)?;
    }
    if cd_size > MAX_CENTRAL_DIRECTORY
        || cd_offset.checked_add(cd_size).is_none_or(|e| e > file_len)
    {
        return Err(corrupt(
            path,
            format!(
                "central directory ({cd_size} bytes at {cd_offset}) lies outside the file ({file_len} bytes)"
            ),
        ));
    }

    // 3. Walk the central directory entries.
    let cd = read_at(file, path, cd_offset, cd_size)?;
    let mut entries = BTreeMap::new();
    let mut pos = 0usize;
    for _ in 0..count {
        let bad = || corrupt(path, format!("truncated central directory entry at {pos}"));
        if u32_at(&cd, pos) != Some(CENTRAL_SIG) {
            return Err(bad());
        }
        let method = u16_at(&cd, pos + 10).ok_or_else(bad)?;
        let mut csize = u64::from(u32_at(&cd, pos + 20).ok_or_else(bad)?);
        let mut usize_ = u64::from(u32_at(&cd, pos + 24).ok_or_else(bad)?);
        let name_len = usize::from(u16_at(&cd, pos + 28).ok_or_else(bad)?);
        let extra_len = usize::from(u16_at(&cd, pos + 30).ok_or_else(bad)?);
        let comment_len = usize::from(u16_at(&cd, pos + 32).ok_or_else(bad)?);
        let mut local = u64::from(u32_at(&cd, pos + 42).ok_or_else(bad)?);
        let name_start = pos + 46;
        let name = cd.get(name_start..name_start + name_len).ok_or_else(bad)?;
        let name = String::from_utf8_lossy(name).into_owned();
        let extra = cd
            .get(name_start + name_len..name_start + name_len + extra_len)
            .ok_or_else(bad)?;
        // The zip64 extra field (id 1) carries, in this order, only the fields that overflowed.
        let mut e = 0usize;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).ok_or_else(bad)?;
            let len = usize::from(u16_at(extra, e + 2).ok_or_else(bad)?);
            let body = extra.get(e + 4..e + 4 + len).ok_or_else(bad)?;
            if id == 1 {
                let mut f = 0usize;
                let mut next = || {
                    let v = u64_at(body, f);
                    f += 8;
                    v
                };
                if usize_ == 0xFFFF_FFFF {
                    usize_ = next().ok_or_else(bad)?;
                }
                if csize == 0xFFFF_FFFF {
                    csize = next().ok_or_else(bad)?;
                }
                if local == 0xFFFF_FFFF {
                    local = next().ok_or_else(bad)?;
                }
            }
            e += 4 + len;
        }
        pos = name_start + name_len + extra_len + comment_len;
        if method != 0 {
            return Err(PickleError::UnsupportedCompression {
                path: path.to_path_buf(),
                entry: name,
                method,
            });
        }
        if csize != usize_ {
            return Err(corrupt(
                path,
                format!("stored entry `{name}` has compressed size {csize} != size {usize_}"),
            ));
        }
        // The local header repeats the name and has its own extra field (torch pads it to
        // align storages), so the data offset must be read from it.
        let header = read_at(file, path, local, 30)?;
        if u32_at(&header, 0) != Some(LOCAL_SIG) {
            return Err(corrupt(
                path,
                format!("bad local header for entry `{name}`"),
            ));
        }
        let lname = u64::from(u16_at(&header, 26).unwrap_or(0));
        let lextra = u64::from(u16_at(&header, 28).unwrap_or(0));
        let offset = local
            .checked_add(30 + lname + lextra)
            .ok_or_else(|| corrupt(path, "entry offset overflows"))?;
        if offset.checked_add(csize).is_none_or(|end| end > file_len) {
            return Err(corrupt(
                path,
                format!(
                    "entry `{name}` ({csize} bytes at {offset}) lies outside the file ({file_len} bytes)"
                ),
            ));
        }
        entries.insert(name, Entry { offset, len: csize });
    }
    Ok(ZipIndex { entries })
}

/// Reads one entry's bytes.
pub(crate) fn read_entry<R: Read + Seek>(
    file: &mut R,
    path: &Path,
    entry: Entry,
) -> Result<Vec<u8>, PickleError> {
    read_at(file, path, entry.offset, entry.len)
}
