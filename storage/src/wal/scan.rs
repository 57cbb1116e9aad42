//! Recovery: reading the segments back on open and deciding where the log ends.
//!
//! Segments are read oldest first. Each is valid up to its first torn or corrupt record; the
//! next segment belongs to the log only if its header names this one and the crc of this
//! one's last valid record. The first segment that does not is where the log ends: it and
//! every later one are dropped (a segment written after records that were then lost, or
//! after a record that rotted). The first segment is trusted as the start: older ones were
//! purged.

use std::io;

use super::disk::Disk;
use super::disk::DiskFile;
use super::record::decode;
use super::record::Decoded;
use super::record::Record;

/// Most segments a log may have: a limit on what an open reads and keeps open.
pub(super) const MAX_SEGMENTS: usize = 4096;

/// The file name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The sequence number of a segment file name, if it is one.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// One valid record of a scanned segment: where it is and what it says. Entry data is not
/// kept (it is read again when served); meta values are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Item {
    pub off: u64,
    pub len: u32,
    /// The crc the record is chained after.
    pub seed: u32,
    pub what: What,
}

/// The content of an [`Item`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum What {
    Entry(u64),
    Meta(crate::backend::MetaKey, Vec<u8>),
    TruncateFrom(u64),
    PurgeTo(u64),
    Floor(Option<u64>),
}

/// A segment as read back.
#[derive(Debug)]
pub(super) struct Scanned<F> {
    pub seq: u64,
    pub file: F,
    pub prev_seq: u64,
    pub prev_crc: u32,
    pub items: Vec<Item>,
    /// The crc of the last valid record.
    pub end_crc: u32,
    /// Why the segment's valid part ends before its written part, if it does.
    pub damage: Option<String>,
}

/// Reads segment `seq`. `None`: it has no valid header (created, then torn or lost).
pub(super) fn scan_segment<D: Disk>(disk: &D, seq: u64) -> io::Result<Option<Scanned<D::File>>> {
    let file = disk.open(&segment_name(seq))?;
    let len = file.size()?;
    let len = usize::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
    let mut buf = vec![0; len];
    file.read_at(0, &mut buf)?;
    let (prev_seq, prev_crc, mut off, mut crc) = match decode(&buf, 0, None) {
        Decoded::Valid {
            record:
                Record::Header {
                    seq: s,
                    prev_seq,
                    prev_crc,
                },
            len,
            crc,
        } if s == seq => (prev_seq, prev_crc, len, crc),
        _ => return Ok(None),
    };
    let mut items = Vec::new();
    let damage = loop {
        match decode(&buf, off, Some(crc)) {
            Decoded::End => break None,
            Decoded::Bad(why) => break Some(format!("at offset {off}: {why}")),
            Decoded::Valid {
                record,
                len,
                crc: c,
            } => {
                let what = match record {
                    Record::Entry { index, .. } => What::Entry(index),
                    Record::Meta { key, value } => What::Meta(key, value.to_vec()),
                    Record::TruncateFrom(i) => What::TruncateFrom(i),
                    Record::PurgeTo(i) => What::PurgeTo(i),
                    Record::Floor(p) => What::Floor(p),
                    Record::Header { .. } => unreachable!("decode refuses inner headers"),
                };
                items.push(Item {
                    off: off as u64,
                    len: len as u32,
                    seed: crc,
                    what,
                });
                off += len;
                crc = c;
            }
        }
    };
    Ok(Some(Scanned {
        seq,
        file,
        prev_seq,
        prev_crc,
        items,
        end_crc: crc,
        damage,
    }))
}

/// The outcome of reading the whole directory.
#[derive(Debug)]
pub(super) struct Recovered<F> {
    /// The segments of the log, oldest first.
    pub segments: Vec<Scanned<F>>,
    /// Segment files past the end of the log, to remove.
    pub dropped: Vec<u64>,
    /// The highest sequence number seen (dropped ones included): new segments go above.
    pub max_seq: u64,
    /// What was cut, for the log.
    pub notes: Vec<String>,
}

/// Reads every segment of `disk` and finds where the log ends.
pub(super) fn recover<D: Disk>(disk: &D) -> io::Result<Recovered<D::File>> {
    let seqs: Vec<u64> = disk
        .list()?
        .iter()
        .filter_map(|n| parse_segment_name(n))
        .collect();
    if seqs.len() > MAX_SEGMENTS {
        return Err(io::Error::other(format!(
            "{} segments, more than the {MAX_SEGMENTS} a log may have",
            seqs.len()
        )));
    }
    let mut out = Recovered {
        segments: Vec::new(),
        dropped: Vec::new(),
        max_seq: seqs.last().copied().unwrap_or(0),
        notes: Vec::new(),
    };
    for seq in seqs {
        if !out.dropped.is_empty() {
            out.dropped.push(seq);
            continue;
        }
        let Some(s) = scan_segment(disk, seq)? else {
            out.notes
                .push(format!("{}: no valid header", segment_name(seq)));
            out.dropped.push(seq);
            continue;
        };
        if let Some(prev) = out.segments.last() {
            if s.prev_seq != prev.seq || s.prev_crc != prev.end_crc {
                out.notes.push(format!(
                    "{} does not follow {} where it ends: the log ends there",
                    segment_name(seq),
                    segment_name(prev.seq)
                ));
                out.dropped.push(seq);
                continue;
            }
        }
        if let Some(d) = &s.damage {
            out.notes
                .push(format!("{}: {d}; the log ends there", segment_name(seq)));
        }
        out.segments.push(s);
    }
    Ok(out)
}
