//! Spool framing: how records sit in a segment file, and how a reader
//! finds the next record after damage. Pure functions over bytes.
//!
//! Two versions, told apart by the first bytes of a segment:
//!
//! - **V2** (written since 2026-11): the segment opens with the 8-byte
//!   header `WMSPOOL\x02`; each record is
//!   `MAGIC (F7 57 4D 52) | len: u32 LE | crc32(len bytes ++ payload): u32 LE | payload`,
//!   with `1 <= len <= MAX_RECORD`. A reader that meets a bad record
//!   (wrong magic, impossible length, bad checksum) scans forward for the
//!   next magic that starts a valid record, so damage costs only the
//!   damaged bytes. The magic's first byte never occurs in UTF-8, so JSON
//!   text never looks like a record start; a chance match elsewhere fails
//!   its checksum.
//! - **V1** (older spools, still read so an upgrade replays them): no
//!   segment header; each record is `len: u32 LE | crc32(payload): u32 LE |
//!   payload`. A V1 segment can never start with the V2 header: as a
//!   length, `WMSP` is over 1 GiB, far beyond `MAX_RECORD`. Without a
//!   magic, a reader resynchronises by trying every offset.
//!
//! In both, a zero-length record is never valid: a zeroed region (crc32 of
//! nothing is 0) reads as damage, not as thousands of empty records.

use std::ops::Range;

/// First bytes of every V2 segment.
pub const SEGMENT_HEADER: &[u8; 8] = b"WMSPOOL\x02";
/// First bytes of every V2 record.
pub const MAGIC: [u8; 4] = [0xF7, b'W', b'M', b'R'];
/// Bytes before a V2 record's payload.
pub const V2_OVERHEAD: usize = 12;
const V1_OVERHEAD: usize = 8;
/// Largest record accepted; an event is a few hundred bytes.
pub const MAX_RECORD: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// The version of a segment from its first bytes, and where its first
    /// record starts. An empty or header-only segment is V2.
    pub fn of(head: &[u8]) -> (Version, usize) {
        let n = head.len().min(SEGMENT_HEADER.len());
        if head[..n] == SEGMENT_HEADER[..n] { (Version::V2, SEGMENT_HEADER.len()) } else { (Version::V1, 0) }
    }
}

/// What the bytes at a position hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A valid record: where its payload lies, and the frame's whole length.
    Record { payload: Range<usize>, frame: usize },
    /// A record may start here, but its bytes are not all there yet.
    Incomplete,
    /// No valid record starts here.
    Bad,
}

/// Appends `payload` to `out` as one V2 record.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(payload);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads the record at the start of `buf`.
pub fn parse(version: Version, buf: &[u8]) -> Parsed {
    let overhead = match version {
        Version::V2 => {
            let n = buf.len().min(MAGIC.len());
            if buf[..n] != MAGIC[..n] {
                return Parsed::Bad;
            }
            V2_OVERHEAD
        }
        Version::V1 => V1_OVERHEAD,
    };
    if buf.len() < overhead {
        return Parsed::Incomplete;
    }
    let len_at = overhead - 8;
    let len = u32_at(buf, len_at) as usize;
    if len == 0 || len > MAX_RECORD {
        return Parsed::Bad;
    }
    if buf.len() < overhead + len {
        return Parsed::Incomplete;
    }
    let payload = overhead..overhead + len;
    let crc = match version {
        Version::V2 => {
            let mut h = crc32fast::Hasher::new();
            h.update(&buf[len_at..len_at + 4]);
            h.update(&buf[payload.clone()]);
            h.finalize()
        }
        Version::V1 => crc32fast::hash(&buf[payload.clone()]),
    };
    if crc == u32_at(buf, len_at + 4) {
        Parsed::Record { payload, frame: overhead + len }
    } else {
        Parsed::Bad
    }
}

/// After a bad record at the start of `buf`: how many bytes to skip to the
/// next place a record may start (a valid one, or one cut short by the end
/// of `buf`), or `None` if none does.
pub fn resync(version: Version, buf: &[u8]) -> Option<usize> {
    let candidates: Box<dyn Iterator<Item = usize>> = match version {
        Version::V2 => Box::new((1..buf.len()).filter(|&i| buf[i] == MAGIC[0])),
        Version::V1 => Box::new(1..buf.len()),
    };
    for i in candidates {
        match (parse(version, &buf[i..]), version) {
            (Parsed::Record { .. }, _) => return Some(i),
            // Cut short at the end of what was read: it may be a record
            // still being written. Old segments are never written to, and
            // without a magic almost every offset would look like this.
            (Parsed::Incomplete, Version::V2) => return Some(i),
            _ => {}
        }
    }
    None
}

/// How many bytes into `buf` the next whole, valid record starts (after a
/// record whose length points past the end of what is there).
pub fn next_record(version: Version, buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(n) = resync(version, &buf[from..]) {
        from += n;
        if let Parsed::Record { .. } = parse(version, &buf[from..]) {
            return Some(from);
        }
    }
    None
}

/// How many records a damaged region probably held: one per magic in it
/// (at least one), for the log and the metric.
pub fn records_in(version: Version, damaged: &[u8]) -> u64 {
    match version {
        Version::V2 => damaged.windows(MAGIC.len()).filter(|w| *w == MAGIC).count().max(1) as u64,
        Version::V1 => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, payload);
        out
    }

    fn v1(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn a_record_reads_back() {
        let r = record(b"{\"a\":1}");
        assert_eq!(parse(Version::V2, &r), Parsed::Record { payload: 12..19, frame: 19 });
        let old = v1(b"old");
        assert_eq!(parse(Version::V1, &old), Parsed::Record { payload: 8..11, frame: 11 });
    }

    #[test]
    fn bad_and_short_records_are_told_apart() {
        let good = record(b"payload");
        let flip = |i: usize| {
            let mut b = good.clone();
            b[i] ^= 0x01;
            b
        };
        let zero_len = {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&crc32fast::hash(&0u32.to_le_bytes()).to_le_bytes());
            b
        };
        let cases: Vec<(&str, Version, Vec<u8>, Parsed)> = vec![
            ("magic damaged", Version::V2, flip(1), Parsed::Bad),
            ("length damaged", Version::V2, flip(4), Parsed::Bad),
            ("checksum damaged", Version::V2, flip(9), Parsed::Bad),
            ("payload damaged", Version::V2, flip(14), Parsed::Bad),
            ("zero length, valid checksum", Version::V2, zero_len, Parsed::Bad),
            ("zeros", Version::V2, vec![0; 64], Parsed::Bad),
            ("zeros in a V1 segment", Version::V1, vec![0; 64], Parsed::Bad),
            ("length over the limit", Version::V1, vec![0xFF; 64], Parsed::Bad),
            ("cut in the header", Version::V2, good[..7].to_vec(), Parsed::Incomplete),
            ("cut in the payload", Version::V2, good[..good.len() - 1].to_vec(), Parsed::Incomplete),
            ("only part of the magic", Version::V2, MAGIC[..2].to_vec(), Parsed::Incomplete),
            ("nothing", Version::V2, vec![], Parsed::Incomplete),
        ];
        for (name, version, bytes, want) in cases {
            assert_eq!(parse(version, &bytes), want, "{name}");
        }
    }

    #[test]
    fn resync_finds_the_next_whole_record() {
        let mut buf = record(b"first");
        buf[14] ^= 0xFF;
        let second_at = buf.len();
        buf.extend_from_slice(&record(b"second"));
        assert_eq!(resync(Version::V2, &buf), Some(second_at));
        // A magic inside the damage that starts no valid record is passed over.
        let mut noisy = vec![0u8; 5];
        noisy.extend_from_slice(&MAGIC);
        noisy.extend_from_slice(&[9; 20]);
        let at = noisy.len();
        noisy.extend_from_slice(&record(b"x"));
        assert_eq!(resync(Version::V2, &noisy), Some(at));
        assert_eq!(resync(Version::V2, &[0; 100]), None);
        let mut old = vec![1, 2, 3];
        old.extend_from_slice(&v1(b"old record"));
        assert_eq!(resync(Version::V1, &old), Some(3));
    }

    #[test]
    fn versions_are_told_by_the_segment_head() {
        assert_eq!(Version::of(SEGMENT_HEADER), (Version::V2, 8));
        assert_eq!(Version::of(b""), (Version::V2, 8), "a new, empty segment");
        assert_eq!(Version::of(&v1(b"old")), (Version::V1, 0));
        assert!(
            u32::from_le_bytes(SEGMENT_HEADER[..4].try_into().unwrap()) as usize > MAX_RECORD,
            "no V1 record can start like a V2 segment"
        );
    }
}
