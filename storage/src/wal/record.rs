//! Records: the framing of everything the write-ahead log writes, and its checksum chain.
//!
//! ```text
//! u32 LE  len    length of kind + body (0: end of the written part of a segment)
//! u32 LE  crc    CRC-32 (IEEE) of kind + body, seeded with the crc of the record before
//! u8      kind
//! body
//! ```
//!
//! Seeding each crc with the previous record's (the first record of a segment, its header,
//! is seeded with the `prev_crc` it carries) chains the records: a record is valid only right
//! after the record it was written after. A stale record that survived in a region written
//! again, or a segment written after a log end that was then lost, fails its check.

use crate::backend::MetaKey;

/// Bytes of `len` + `crc`.
pub(super) const FRAME: usize = 8;
/// The largest `kind + body`: a bigger write is refused (entries are far smaller: commands
/// are at most 1 MiB, Raft frames 16 MiB).
pub(super) const MAX_PAYLOAD: usize = 64 << 20;
/// First bytes of a segment header's body: format name and version.
pub(super) const MAGIC: [u8; 8] = *b"omwal\0v1";

const KIND_HEADER: u8 = 1;
const KIND_ENTRY: u8 = 2;
const KIND_META: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_PURGE: u8 = 5;
const KIND_FLOOR: u8 = 6;

/// A decoded record; entry and meta bodies borrow from the segment buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Record<'a> {
    /// First record of every segment: its sequence number and where the chain comes from.
    Header {
        seq: u64,
        prev_seq: u64,
        prev_crc: u32,
    },
    /// A log entry (openraft's encoded `Entry`) at `index`.
    Entry { index: u64, data: &'a [u8] },
    /// A metadata value (vote, committed, last purged).
    Meta { key: MetaKey, value: &'a [u8] },
    /// Entries with index >= this are removed.
    TruncateFrom(u64),
    /// Entries with index <= this are removed.
    PurgeTo(u64),
    /// In a segment's checkpoint: the purge point as it stands (removes nothing).
    Floor(Option<u64>),
}

/// What is found at an offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded<'a> {
    /// A valid record of `len` bytes (frame included) whose crc is `crc`.
    Valid {
        record: Record<'a>,
        len: usize,
        crc: u32,
    },
    /// Nothing was written here (a zero length, or no room for a frame).
    End,
    /// A torn or corrupt record: never served, the log ends before it.
    Bad(String),
}

fn meta_code(key: MetaKey) -> u8 {
    match key {
        MetaKey::Vote => 1,
        MetaKey::Committed => 2,
        MetaKey::LastPurged => 3,
        MetaKey::Snapshot => 4,
    }
}

fn meta_key(code: u8) -> Option<MetaKey> {
    match code {
        1 => Some(MetaKey::Vote),
        2 => Some(MetaKey::Committed),
        3 => Some(MetaKey::LastPurged),
        _ => None,
    }
}

/// The crc of `payload` (kind + body) chained after `seed`.
pub(super) fn checksum(seed: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(payload);
    h.finalize()
}

/// Appends `record` to `buf`, chained after `seed`; returns its crc.
pub(super) fn encode(buf: &mut Vec<u8>, seed: u32, record: &Record<'_>) -> u32 {
    let start = buf.len();
    buf.extend_from_slice(&[0; FRAME]);
    let seed = match record {
        Record::Header {
            seq,
            prev_seq,
            prev_crc,
        } => {
            buf.push(KIND_HEADER);
            buf.extend_from_slice(&MAGIC);
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(&prev_seq.to_le_bytes());
            buf.extend_from_slice(&prev_crc.to_le_bytes());
            *prev_crc
        }
        Record::Entry { index, data } => {
            buf.push(KIND_ENTRY);
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(data);
            seed
        }
        Record::Meta { key, value } => {
            assert!(*key != MetaKey::Snapshot, "snapshots are not log records");
            buf.push(KIND_META);
            buf.push(meta_code(*key));
            buf.extend_from_slice(value);
            seed
        }
        Record::Floor(p) => {
            buf.push(KIND_FLOOR);
            buf.push(p.is_some() as u8);
            buf.extend_from_slice(&p.unwrap_or(0).to_le_bytes());
            seed
        }
        Record::TruncateFrom(i) | Record::PurgeTo(i) => {
            let kind = match record {
                Record::TruncateFrom(_) => KIND_TRUNCATE,
                _ => KIND_PURGE,
            };
            buf.push(kind);
            buf.extend_from_slice(&i.to_le_bytes());
            seed
        }
    };
    let payload_len = buf.len() - start - FRAME;
    assert!(
        payload_len <= MAX_PAYLOAD,
        "record of {payload_len} bytes over the limit (checked by the caller)"
    );
    let crc = checksum(seed, &buf[start + FRAME..]);
    buf[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// The bytes `record` takes once encoded.
pub(super) fn encoded_len(record: &Record<'_>) -> usize {
    FRAME
        + 1
        + match record {
            Record::Header { .. } => MAGIC.len() + 8 + 8 + 4,
            Record::Entry { data, .. } => 8 + data.len(),
            Record::Meta { value, .. } => 1 + value.len(),
            Record::TruncateFrom(_) | Record::PurgeTo(_) => 8,
            Record::Floor(_) => 9,
        }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes the record at `off` of `buf`, chained after `seed` (`None`: a segment header,
/// which carries its own seed).
pub(super) fn decode(buf: &[u8], off: usize, seed: Option<u32>) -> Decoded<'_> {
    if buf.len() < off + FRAME {
        return Decoded::End;
    }
    let len = u32_at(buf, off) as usize;
    let crc = u32_at(buf, off + 4);
    if len == 0 {
        return Decoded::End;
    }
    if len > MAX_PAYLOAD || off + FRAME + len > buf.len() {
        return Decoded::Bad(format!("record length {len} runs past the segment end"));
    }
    let payload = &buf[off + FRAME..off + FRAME + len];
    let record = match parse(payload) {
        Ok(r) => r,
        Err(e) => return Decoded::Bad(e),
    };
    let seed = match (&record, seed) {
        (Record::Header { prev_crc, .. }, None) => *prev_crc,
        (_, None) => return Decoded::Bad("a segment that does not start with a header".into()),
        (Record::Header { .. }, Some(_)) => {
            return Decoded::Bad("a segment header inside a segment".into())
        }
        (_, Some(s)) => s,
    };
    if checksum(seed, payload) != crc {
        return Decoded::Bad("checksum mismatch (torn or corrupt record)".into());
    }
    Decoded::Valid {
        record,
        len: FRAME + len,
        crc,
    }
}

/// Parses kind + body. Lengths are checked, contents are trusted only after the crc.
fn parse(p: &[u8]) -> Result<Record<'_>, String> {
    let body = &p[1..];
    let fixed = |n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(format!(
                "record kind {} with a {}-byte body",
                p[0],
                body.len()
            ))
        }
    };
    match p[0] {
        KIND_HEADER => {
            fixed(MAGIC.len() + 20)?;
            if body[..8] != MAGIC {
                return Err("segment header without the om WAL magic".into());
            }
            Ok(Record::Header {
                seq: u64_at(body, 8),
                prev_seq: u64_at(body, 16),
                prev_crc: u32_at(body, 24),
            })
        }
        KIND_ENTRY if body.len() >= 8 => Ok(Record::Entry {
            index: u64_at(body, 0),
            data: &body[8..],
        }),
        KIND_META if !body.is_empty() => match meta_key(body[0]) {
            Some(key) => Ok(Record::Meta {
                key,
                value: &body[1..],
            }),
            None => Err(format!("unknown meta key {}", body[0])),
        },
        KIND_TRUNCATE => fixed(8).map(|()| Record::TruncateFrom(u64_at(body, 0))),
        KIND_PURGE => fixed(8).map(|()| Record::PurgeTo(u64_at(body, 0))),
        KIND_FLOOR => fixed(9).and_then(|()| match body[0] {
            0 => Ok(Record::Floor(None)),
            1 => Ok(Record::Floor(Some(u64_at(body, 1)))),
            b => Err(format!("floor record with flag {b}")),
        }),
        k => Err(format!("unknown record kind {k} ({} bytes)", p.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record<'static>> {
        vec![
            Record::Header {
                seq: 3,
                prev_seq: 2,
                prev_crc: 0xdead_beef,
            },
            Record::Entry {
                index: 7,
                data: b"seven",
            },
            Record::Meta {
                key: MetaKey::Vote,
                value: b"v",
            },
            Record::TruncateFrom(5),
            Record::PurgeTo(4),
            Record::Floor(Some(4)),
            Record::Floor(None),
        ]
    }

    #[test]
    fn records_round_trip_in_a_chain() {
        let mut buf = Vec::new();
        let mut seed = 0;
        for r in sample() {
            let before = buf.len();
            seed = encode(&mut buf, seed, &r);
            assert_eq!(buf.len() - before, encoded_len(&r));
        }
        let (mut off, mut seed) = (0, None);
        for want in sample() {
            match decode(&buf, off, seed) {
                Decoded::Valid { record, len, crc } => {
                    assert_eq!(record, want);
                    off += len;
                    seed = Some(crc);
                }
                other => panic!("at {off}: {other:?}"),
            }
        }
        assert_eq!(decode(&buf, off, seed), Decoded::End);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        let seed = encode(
            &mut buf,
            0,
            &Record::Header {
                seq: 1,
                prev_seq: 0,
                prev_crc: 0,
            },
        );
        let start = buf.len();
        encode(
            &mut buf,
            seed,
            &Record::Entry {
                index: 1,
                data: b"payload",
            },
        );
        for bit in start * 8..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode(&b, start, Some(seed)), Decoded::Valid { .. }),
                "bit {bit} flipped and still valid"
            );
        }
    }

    #[test]
    fn a_record_is_valid_only_after_its_predecessor() {
        let mut buf = Vec::new();
        let crc = encode(&mut buf, 1, &Record::PurgeTo(9));
        assert!(matches!(decode(&buf, 0, Some(1)), Decoded::Valid { crc: c, .. } if c == crc));
        assert!(matches!(decode(&buf, 0, Some(2)), Decoded::Bad(_)));
    }
}
