//! The write-ahead log on disk: append-only segment files of framed [`WalEntry`] records.
//! This is the shop's log of record: a write is durable when its record is synced here.
//!
//! Layout: a directory of segment files `<first LSN, 20 digits>.wal`. A segment holds
//! consecutive LSNs starting at the one in its name; the next segment starts where it
//! ends. Each record is
//!
//! ```text
//! u32 LE payload length | u32 LE CRC32C(length bytes ‖ payload) | payload
//! ```
//!
//! The payload is the entry as protobuf `pb::WalEntry` (`codec::encode_entry`); records
//! an older shop wrote in its own layout are read too (`codec::decode_entry`).
//!
//! Writing: [`SegmentLog::append`] writes a batch of records with one `write` and makes
//! them durable with ONE `fdatasync` (group commit: the caller batches). Once a segment
//! passes its size limit the next batch starts a new one (the directory is synced so the
//! new file's name is durable before anything in it is acknowledged).
//!
//! **Preallocation** (PostgreSQL's design): a segment's file is extended with written
//! zeros ahead of the records, [`PREALLOC_CHUNK`] at a time. An append then overwrites
//! blocks that already exist, so its `fdatasync` flushes data only; appending past the
//! end of the file would change its size and make every `fdatasync` also commit the
//! filesystem journal (on ext4 here: 3 device writes per sync instead of 2, and about
//! 25 % more latency; `fallocate` would not help, as its unwritten extents are converted,
//! a metadata change, on first write). One sync in a chunk's worth of writes pays for it.
//! The zeros after the last record are the log's clean end: an all-zero rest of a
//! segment is not a record.
//!
//! Recovery ([`SegmentLog::open`]) reads every segment and checks each record's length,
//! checksum, format and LSN:
//! - a bad record at the end of the LAST segment, with no valid record after it, is a torn
//!   write (the process died mid-append, before the sync that would have acknowledged it):
//!   the file is truncated there and start-up goes on;
//! - any other bad record (a valid record follows it, or it is in an older segment) is
//!   corruption of acknowledged data: start-up fails with an error naming the file and the
//!   byte offset. The log is never silently cut short.
//!
//! An in-memory index (one byte offset per record) serves reads by LSN without scanning.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{Result, ShopError};
use crate::wal::{Lsn, WalEntry};

/// Bytes of a record header (length + checksum).
const HEADER: usize = 8;
/// Largest record accepted on reading; a longer length field is corruption.
const MAX_RECORD: usize = 64 * 1024 * 1024;
/// Default size after which a new segment starts.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How far ahead of the records a segment's file is zero-filled (module docs).
pub const PREALLOC_CHUNK: u64 = 1024 * 1024;
/// Preallocation is rounded up to whole pages.
const PAGE: u64 = 4096;

/// One segment file and the offset of each of its records.
struct Segment {
    first_lsn: Lsn,
    path: PathBuf,
    file: File,
    /// Byte offset of record `first_lsn + i`.
    offsets: Vec<u64>,
    /// Bytes of valid records (where the next append goes).
    len: u64,
    /// The file's length: zeros from `len` up to here (module docs, preallocation).
    allocated: u64,
}

impl Segment {
    fn last_lsn(&self) -> Lsn {
        self.first_lsn + self.offsets.len() as u64 - 1
    }

    /// End offset of record `i` (start of the next one, or the segment's end).
    fn end_of(&self, i: usize) -> u64 {
        self.offsets.get(i + 1).copied().unwrap_or(self.len)
    }
}

/// The WAL's segment files (module docs). Not synchronized: the store holds it in a mutex.
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; never empty; the last one is appended to.
    segments: Vec<Segment>,
}

/// What recovery found (for the log line and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Segment files read.
    pub segments: usize,
    /// Records found valid.
    pub records: u64,
    /// A torn tail that was cut off: (file, offset, bytes dropped).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ShopError {
    ShopError::Unavailable(format!("WAL: cannot {what} {}: {e}", path.display()))
}

fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.wal")
}

/// The frame of one entry.
fn frame(entry: &WalEntry, out: &mut Vec<u8>) {
    let payload = codec::encode_entry(entry);
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Parses the record at `pos` of `bytes`: `Ok((entry, next pos))` or why it is bad.
fn parse_at(bytes: &[u8], pos: usize) -> std::result::Result<(WalEntry, usize), String> {
    let rest = &bytes[pos..];
    if rest.len() < HEADER {
        return Err(format!(
            "{} bytes where a record header needs 8",
            rest.len()
        ));
    }
    let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > MAX_RECORD {
        return Err(format!("record length {len} is absurd"));
    }
    if rest.len() < HEADER + len {
        return Err(format!(
            "record of {len} bytes runs past the end of the file ({} left)",
            rest.len() - HEADER
        ));
    }
    let stored = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let payload = &rest[HEADER..HEADER + len];
    if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload) != stored {
        return Err("checksum mismatch".into());
    }
    let entry = codec::decode_entry(payload).map_err(|e| format!("undecodable entry: {e}"))?;
    Ok((entry, pos + HEADER + len))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync directory", dir, e))
}

fn create_segment(dir: &Path, first_lsn: Lsn) -> Result<Segment> {
    let path = dir.join(segment_name(first_lsn));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_err("create", &path, e))?;
    sync_dir(dir)?;
    Ok(Segment {
        first_lsn,
        path,
        file,
        offsets: Vec::new(),
        len: 0,
        allocated: 0,
    })
}

impl SegmentLog {
    /// Opens (or creates, starting at LSN 1) the log in `dir` and recovers it (module
    /// docs): a torn tail is cut off, corruption before it is an error naming file and
    /// offset.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Self, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| io_err("create directory", dir, e))?;
        let mut firsts = Vec::new();
        for item in fs::read_dir(dir).map_err(|e| io_err("list", dir, e))? {
            let item = item.map_err(|e| io_err("list", dir, e))?;
            let name = item.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
                continue;
            };
            let first: Lsn = stem.parse().map_err(|_| {
                ShopError::internal(format!("WAL: unexpected file {}", item.path().display()))
            })?;
            firsts.push(first);
        }
        firsts.sort_unstable();
        let mut recovered = Recovered {
            segments: firsts.len(),
            records: 0,
            torn_tail: None,
        };
        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len().max(1));
        for (i, &first_lsn) in firsts.iter().enumerate() {
            let last_segment = i + 1 == firsts.len();
            let path = dir.join(segment_name(first_lsn));
            if let Some(prev) = segments.last() {
                if prev.first_lsn + prev.offsets.len() as u64 != first_lsn {
                    return Err(ShopError::internal(format!(
                        "WAL: {} starts at LSN {first_lsn} but the segment before it ends at {}",
                        path.display(),
                        prev.first_lsn + prev.offsets.len() as u64 - 1
                    )));
                }
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_err("open", &path, e))?;
            let bytes = fs::read(&path).map_err(|e| io_err("read", &path, e))?;
            let mut offsets = Vec::new();
            let mut pos = 0usize;
            while pos < bytes.len() {
                let expected = first_lsn + offsets.len() as u64;
                let bad = match parse_at(&bytes, pos) {
                    Ok((entry, next)) if entry.lsn == expected => {
                        offsets.push(pos as u64);
                        pos = next;
                        continue;
                    }
                    Ok((entry, _)) => format!("LSN {} where {expected} was expected", entry.lsn),
                    Err(why) => why,
                };
                if bytes[pos..].iter().all(|&b| b == 0) {
                    // The preallocated zeros after the last record: the clean end.
                    break;
                }
                // A valid next record means this one was written and synced before it:
                // corruption, not a torn append.
                let valid_after = parse_len(&bytes, pos)
                    .map(|len| pos + HEADER + len)
                    .filter(|&next| next < bytes.len())
                    .and_then(|next| parse_at(&bytes, next).ok())
                    .is_some_and(|(e, _)| e.lsn == expected + 1);
                if !last_segment || valid_after {
                    return Err(ShopError::internal(format!(
                        "WAL is corrupt: {} at byte offset {pos} (LSN {expected}): {bad}; \
                         refusing to start rather than drop acknowledged writes",
                        path.display()
                    )));
                }
                let written_end = bytes.iter().rposition(|&b| b != 0).map_or(pos, |i| i + 1);
                let dropped = (written_end - pos) as u64;
                tracing::warn!(file = %path.display(), offset = pos, dropped, reason = %bad,
                    "WAL: dropping a torn record at the tail (never acknowledged)");
                // Zeroed, not truncated: the allocation stays, and no byte of the torn
                // batch can be read as a record once shorter records overwrite it.
                file.write_all_at(&vec![0u8; bytes.len() - pos], pos as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| io_err("zero the torn tail of", &path, e))?;
                recovered.torn_tail = Some((path.clone(), pos as u64, dropped));
                break;
            }
            recovered.records += offsets.len() as u64;
            segments.push(Segment {
                first_lsn,
                path,
                file,
                offsets,
                len: pos as u64,
                allocated: bytes.len() as u64,
            });
        }
        if segments.is_empty() {
            segments.push(create_segment(dir, 1)?);
        } else if let Some(last) = segments.last() {
            // Records recovered after a kill -9 may still sit only in the page cache (the
            // process died inside its `fdatasync`). They are shipped and built on from now
            // on, so they must be on the disk first: one sync at start-up.
            last.file
                .sync_data()
                .map_err(|e| io_err("sync the recovered tail of", &last.path, e))?;
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                segment_bytes: segment_bytes.max(1),
                segments,
            },
            recovered,
        ))
    }

    /// LSN of the oldest record on disk (or the next LSN when the log is empty).
    pub fn first_lsn(&self) -> Lsn {
        self.segments[0].first_lsn
    }

    /// LSN of the newest record (`first_lsn() - 1` when the log is empty).
    pub fn last_lsn(&self) -> Lsn {
        let s = self.segments.last().expect("never empty");
        s.first_lsn + s.offsets.len() as u64 - 1
    }

    /// Number of records on disk.
    pub fn len(&self) -> u64 {
        self.last_lsn() + 1 - self.first_lsn()
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends `entries` (which must continue the log: LSNs `last_lsn() + 1, ...`) with one
    /// write and ONE `fdatasync`. When this returns `Ok` they are durable. Starts a new
    /// segment first when the current one is full.
    pub fn append(&mut self, entries: &[WalEntry]) -> Result<()> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let next = self.last_lsn() + 1;
        if first.lsn != next {
            return Err(ShopError::internal(format!(
                "WAL append of LSN {} where {next} comes next",
                first.lsn
            )));
        }
        if self.segments.last().expect("never empty").len >= self.segment_bytes {
            let segment = create_segment(&self.dir, next)?;
            self.segments.push(segment);
        }
        let segment = self.segments.last_mut().expect("never empty");
        let mut buf = Vec::with_capacity(256 * entries.len());
        let mut offsets = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            debug_assert_eq!(entry.lsn, next + i as u64);
            offsets.push(segment.len + buf.len() as u64);
            frame(entry, &mut buf);
        }
        let path = &segment.path;
        let end = segment.len + buf.len() as u64;
        if end > segment.allocated {
            // Zero-fill the next chunk in the same write; this batch's sync also makes
            // the new size durable (module docs, preallocation).
            let chunk = self.segment_bytes.clamp(PAGE, PREALLOC_CHUNK);
            let allocated = (end + chunk).div_ceil(PAGE) * PAGE;
            buf.resize((allocated - segment.len) as usize, 0);
            segment.allocated = allocated;
        }
        // Positioned at the end of the valid records: a torn tail zeroed at recovery is
        // overwritten, never appended after.
        segment
            .file
            .write_all_at(&buf, segment.len)
            .map_err(|e| io_err("append to", path, e))?;
        segment
            .file
            .sync_data()
            .map_err(|e| io_err("fdatasync", path, e))?;
        segment.len = end;
        segment.offsets.extend(offsets);
        Ok(())
    }

    /// Up to `max` entries with LSN > `after`, in order (from the oldest on disk when
    /// `after` is older).
    pub fn read_from(&self, after: Lsn, max: usize) -> Result<Vec<WalEntry>> {
        let mut out = Vec::new();
        let mut lsn = after.saturating_add(1).max(self.first_lsn());
        while out.len() < max && lsn <= self.last_lsn() {
            let idx = self
                .segments
                .partition_point(|s| s.first_lsn <= lsn)
                .saturating_sub(1);
            let segment = &self.segments[idx];
            let from = (lsn - segment.first_lsn) as usize;
            let to = (from + (max - out.len())).min(segment.offsets.len());
            let start = segment.offsets[from];
            let end = segment.end_of(to - 1);
            let mut bytes = vec![0u8; (end - start) as usize];
            segment
                .file
                .read_exact_at(&mut bytes, start)
                .map_err(|e| io_err("read", &segment.path, e))?;
            let mut pos = 0;
            while pos < bytes.len() {
                let (entry, next) = parse_at(&bytes, pos).map_err(|why| {
                    ShopError::internal(format!(
                        "WAL is corrupt: {} at byte offset {}: {why}",
                        segment.path.display(),
                        start + pos as u64
                    ))
                })?;
                out.push(entry);
                pos = next;
            }
            lsn = segment.first_lsn + to as u64;
        }
        Ok(out)
    }

    /// The entry at `lsn`, if the log holds it.
    pub fn entry(&self, lsn: Lsn) -> Result<Option<WalEntry>> {
        if lsn < self.first_lsn() || lsn > self.last_lsn() {
            return Ok(None);
        }
        Ok(self.read_from(lsn - 1, 1)?.pop())
    }

    /// Deletes every segment whose records all have LSN < `below`, except the newest
    /// segment. Returns how many records went.
    pub fn remove_below(&mut self, below: Lsn) -> Result<u64> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].last_lsn() < below {
            let segment = self.segments.remove(0);
            fs::remove_file(&segment.path).map_err(|e| io_err("remove", &segment.path, e))?;
            removed += segment.offsets.len() as u64;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Replaces the whole log by an empty one whose next LSN is `next_lsn` (after a
    /// snapshot replaced the store's history).
    pub fn reset(&mut self, next_lsn: Lsn) -> Result<()> {
        let fresh = self.dir.join(format!("{}.new", segment_name(next_lsn)));
        File::create(&fresh).map_err(|e| io_err("create", &fresh, e))?;
        for segment in self.segments.drain(..) {
            fs::remove_file(&segment.path).map_err(|e| io_err("remove", &segment.path, e))?;
        }
        let path = self.dir.join(segment_name(next_lsn));
        fs::rename(&fresh, &path).map_err(|e| io_err("rename", &fresh, e))?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open", &path, e))?;
        self.segments.push(Segment {
            first_lsn: next_lsn,
            path,
            file,
            offsets: Vec::new(),
            len: 0,
            allocated: 0,
        });
        Ok(())
    }
}

/// The length field of the record at `pos`, when it is there and plausible.
fn parse_len(bytes: &[u8], pos: usize) -> Option<usize> {
    let len = u32::from_le_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?) as usize;
    (len <= MAX_RECORD).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{Mutation, TreeName};

    fn entry(lsn: Lsn) -> WalEntry {
        WalEntry {
            lsn,
            term: 1,
            committed_at_ms: 0,
            mutations: vec![Mutation {
                tree: TreeName::Carts,
                key: lsn.to_be_bytes().to_vec(),
                value: Some(vec![7; 20]),
            }],
        }
    }

    fn entries(from: Lsn, to: Lsn) -> Vec<WalEntry> {
        (from..=to).map(entry).collect()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files.pop().unwrap()
    }

    /// Appended batches read back in order, across segment rotation and a reopen.
    #[test]
    fn append_read_rotate_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, rec) = SegmentLog::open(dir.path(), 200).unwrap();
            assert_eq!(rec.records, 0);
            assert!(log.is_empty());
            for lsn in (1..=30).step_by(3) {
                log.append(&entries(lsn, lsn + 2)).unwrap();
            }
            assert!(log.segment_count() > 3, "rotated");
            assert!(log.append(&entries(40, 40)).is_err(), "gap refused");
            assert_eq!(log.read_from(0, 100).unwrap(), entries(1, 30));
            assert_eq!(log.read_from(7, 5).unwrap(), entries(8, 12));
            assert_eq!(log.entry(30).unwrap(), Some(entry(30)));
            assert_eq!(log.entry(31).unwrap(), None);
        }
        let (mut log, rec) = SegmentLog::open(dir.path(), 200).unwrap();
        assert_eq!((rec.records, rec.torn_tail), (30, None));
        assert_eq!(log.read_from(0, 100).unwrap(), entries(1, 30));
        let removed = log.remove_below(20).unwrap();
        assert!(removed > 0 && log.first_lsn() <= 20, "{removed}");
        assert_eq!(log.read_from(0, 100).unwrap(), entries(log.first_lsn(), 30));
        log.reset(101).unwrap();
        assert_eq!((log.first_lsn(), log.last_lsn()), (101, 100));
        log.append(&entries(101, 101)).unwrap();
        drop(log);
        let (log, _) = SegmentLog::open(dir.path(), 200).unwrap();
        assert_eq!(log.read_from(0, 10).unwrap(), entries(101, 101));
    }

    /// Every cut of the last record, and garbage bytes in place of it, is a torn tail:
    /// dropped at open, everything before it kept, and the log appends on after it.
    #[test]
    fn torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&entries(1, 5)).unwrap();
        let full_len = log.segments[0].len;
        let last_start = log.segments[0].offsets[4];
        drop(log);
        let path = only_segment(dir.path());
        let original = fs::read(&path).unwrap();
        for cut in last_start..full_len {
            fs::write(&path, &original[..cut as usize]).unwrap();
            let (log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
            assert_eq!(log.last_lsn(), 4, "cut at {cut}");
            assert_eq!(rec.torn_tail.is_some(), cut > last_start, "cut at {cut}");
        }
        let mut garbled = original.clone();
        for b in &mut garbled[last_start as usize + 10..] {
            *b ^= 0x5a;
        }
        fs::write(&path, &garbled).unwrap();
        let (mut log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.torn_tail.unwrap().1, last_start);
        assert_eq!(log.last_lsn(), 4);
        log.append(&entries(5, 6)).unwrap();
        drop(log);
        let (log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.torn_tail, None);
        assert_eq!(log.read_from(0, 10).unwrap(), entries(1, 6));
    }

    /// The file is zero-filled ahead of the records (so a sync flushes no size change),
    /// and that zero tail reads as the log's clean end, not as a torn record.
    #[test]
    fn segments_are_preallocated_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&entries(1, 3)).unwrap();
        let records = log.segments[0].len;
        drop(log);
        let bytes = fs::read(only_segment(dir.path())).unwrap();
        assert!(
            bytes.len() as u64 >= records + PREALLOC_CHUNK,
            "{}",
            bytes.len()
        );
        assert!(bytes[records as usize..].iter().all(|&b| b == 0));
        let (mut log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!((rec.records, rec.torn_tail), (3, None));
        // Appends past the first chunk extend the zeros again.
        let big: Vec<WalEntry> = (4..=5)
            .map(|lsn| WalEntry {
                lsn,
                term: 1,
                committed_at_ms: 0,
                mutations: vec![Mutation {
                    tree: TreeName::Products,
                    key: vec![1],
                    value: Some(vec![9; PREALLOC_CHUNK as usize]),
                }],
            })
            .collect();
        log.append(&big).unwrap();
        let end = log.segments[0].len;
        assert!(log.segments[0].allocated >= end + PREALLOC_CHUNK);
        drop(log);
        let (log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!((rec.records, rec.torn_tail), (5, None));
        assert_eq!(log.read_from(3, 10).unwrap(), big);
    }

    /// A torn batch inside the preallocated space is zeroed at recovery: after a shorter
    /// batch overwrites its start, no record of the torn batch (same LSNs, never
    /// acknowledged) is read back behind it.
    #[test]
    fn a_torn_batch_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&entries(1, 2)).unwrap();
        let start = log.segments[0].len;
        log.append(&entries(3, 5)).unwrap();
        let second = log.segments[0].offsets[3];
        drop(log);
        // The crash tore record 3 (its first bytes never reached the disk); 4 and 5 did.
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[start as usize..start as usize + 4].fill(0xee);
        fs::write(&path, &bytes).unwrap();
        let (mut log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!(rec.torn_tail.as_ref().map(|t| t.1), Some(start));
        assert_eq!(log.last_lsn(), 2);
        // The next life writes LSN 3 again, exactly as long as the torn one: the old 4
        // would sit right behind it if the tail had been left in place.
        assert_eq!(second - start, {
            let mut one = Vec::new();
            frame(&entry(3), &mut one);
            one.len() as u64
        });
        log.append(&entries(3, 3)).unwrap();
        drop(log);
        let (log, rec) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        assert_eq!((rec.records, rec.torn_tail), (3, None));
        assert_eq!(log.last_lsn(), 3);
    }

    /// A corrupt record with a valid one after it, or in an older segment, stops the open
    /// with an error naming the file and the byte offset; the file is left untouched.
    #[test]
    fn corruption_before_the_tail_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES).unwrap();
        log.append(&entries(1, 5)).unwrap();
        let third = log.segments[0].offsets[2];
        drop(log);
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[third as usize + 20] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let err = SegmentLog::open(dir.path(), DEFAULT_SEGMENT_BYTES)
            .err()
            .expect("corruption must stop the open")
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(&format!("offset {third}")), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing truncated");

        // The same damage in the last record of an older segment is corruption too.
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = SegmentLog::open(dir.path(), 100).unwrap();
        log.append(&entries(1, 2)).unwrap();
        log.append(&entries(3, 4)).unwrap();
        assert_eq!(log.segment_count(), 2);
        let old = log.segments[0].path.clone();
        let last_start = log.segments[0].offsets[1];
        drop(log);
        let mut bytes = fs::read(&old).unwrap();
        bytes.truncate(last_start as usize + 10);
        fs::write(&old, &bytes).unwrap();
        let err = SegmentLog::open(dir.path(), 100).err().unwrap().to_string();
        assert!(err.contains(&old.display().to_string()), "{err}");
    }
}
