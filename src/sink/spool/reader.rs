//! Reads records back in order from a position, across segments, passing
//! over damage: a bad record costs its own bytes, and the reader goes on
//! with the next valid record (see [`super::frame`]).

use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;

use super::frame::{self, Parsed, Version};
use super::ledger::{Ledger, pos, split};
use super::{SpoolError, io, segment_path, segments};

pub struct Reader {
    ledger: Arc<Ledger>,
    segment: u32,
    offset: u32,
    /// The open segment and its version.
    open: Option<(File, Version)>,
    /// Bytes of the open segment from `buf_at` to where the file ended when read.
    buf: Bytes,
    buf_at: u32,
    /// Whether `buf` was just read to the end of the file: a record still
    /// incomplete then is cut short on disk.
    fresh: bool,
}

/// One record read back: its position, the position after it, its payload.
pub type Read = (u64, u64, Bytes);

impl Reader {
    pub fn new(ledger: Arc<Ledger>, from: u64) -> Reader {
        let (segment, offset) = split(from);
        Reader { ledger, segment, offset, open: None, buf: Bytes::new(), buf_at: 0, fresh: false }
    }

    /// Where the next record is looked for: everything before it was
    /// returned or passed over as damage.
    pub fn position(&self) -> u64 {
        pos(self.segment, self.offset)
    }

    /// The next whole record before `end`; `None` when there is none yet.
    pub fn next(&mut self, end: u64) -> Result<Option<Read>, SpoolError> {
        self.fresh = false;
        loop {
            if pos(self.segment, self.offset) >= end {
                return Ok(None);
            }
            let Some(version) = self.open_segment()? else {
                if self.advance()? {
                    continue;
                }
                return Ok(None);
            };
            let rel = (self.offset - self.buf_at) as usize;
            if rel > self.buf.len() || (rel == self.buf.len() && !self.fresh) {
                self.fill()?;
                continue;
            }
            let data = &self.buf[rel..];
            match frame::parse(version, data) {
                Parsed::Record { payload, frame } => {
                    let at = pos(self.segment, self.offset);
                    self.offset += frame as u32;
                    let payload = self.buf.slice(rel + payload.start..rel + payload.end);
                    return Ok(Some((at, pos(self.segment, self.offset), payload)));
                }
                Parsed::Incomplete if !self.fresh => self.fill()?,
                // Longer than the file: a damaged length, or a torn tail.
                Parsed::Incomplete => match frame::next_record(version, data) {
                    Some(n) => self.skip(version, n),
                    None => {
                        if !self.later_segment_exists()? {
                            return Ok(None); // the writer's tail
                        }
                        self.skip(version, data.len());
                        self.advance()?;
                    }
                },
                Parsed::Bad => match frame::resync(version, data) {
                    Some(n) => self.skip(version, n),
                    None => {
                        self.skip(version, data.len());
                        if !self.later_segment_exists()? {
                            return Ok(None);
                        }
                        self.advance()?;
                    }
                },
            }
        }
    }

    /// Passes over `n` damaged bytes at the current offset.
    fn skip(&mut self, version: Version, n: usize) {
        if n == 0 {
            return;
        }
        let rel = (self.offset - self.buf_at) as usize;
        let records = frame::records_in(version, &self.buf[rel..rel + n]);
        self.ledger.damaged(pos(self.segment, self.offset), n as u64, records);
        self.offset += n as u32;
    }

    /// Opens the current segment if needed; `None` when it is not on disk.
    fn open_segment(&mut self) -> Result<Option<Version>, SpoolError> {
        if let Some((_, v)) = &self.open {
            return Ok(Some(*v));
        }
        let path = segment_path(self.ledger.dir(), self.segment);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        let mut head = Vec::with_capacity(frame::SEGMENT_HEADER.len());
        (&mut f).take(frame::SEGMENT_HEADER.len() as u64).read_to_end(&mut head).map_err(io(&path))?;
        let (version, first) = Version::of(&head);
        // A position inside the header (a segment's start) means its first record.
        self.offset = self.offset.max(first as u32);
        self.open = Some((f, version));
        self.fresh = false;
        self.buf = Bytes::new();
        self.buf_at = self.offset;
        Ok(Some(version))
    }

    /// Reads the open segment from the current offset to its end.
    fn fill(&mut self) -> Result<(), SpoolError> {
        let path = segment_path(self.ledger.dir(), self.segment);
        let (f, _) = self.open.as_mut().expect("opened before filling");
        f.seek(SeekFrom::Start(u64::from(self.offset))).map_err(io(&path))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(io(&path))?;
        self.buf = Bytes::from(buf);
        self.buf_at = self.offset;
        self.fresh = true;
        Ok(())
    }

    fn later_segment_exists(&self) -> Result<bool, SpoolError> {
        Ok(segments(self.ledger.dir())?.into_iter().any(|s| s > self.segment))
    }

    /// Moves to the next segment on disk after the current one.
    fn advance(&mut self) -> Result<bool, SpoolError> {
        self.open = None;
        self.fresh = false;
        self.buf = Bytes::new();
        match segments(self.ledger.dir())?.into_iter().find(|s| *s > self.segment) {
            Some(s) => {
                self.segment = s;
                self.offset = 0;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// Length of the prefix of a segment that ends with its last valid record
/// (damage before it is kept: readers pass over it).
pub fn valid_len(ledger: &Arc<Ledger>, segment: u32) -> Result<u64, SpoolError> {
    let mut reader = Reader::new(ledger.clone(), pos(segment, 0));
    let mut end = None;
    let limit = pos(segment, u32::MAX);
    while let Some((_, next, _)) = reader.next(limit)? {
        if split(next).0 != segment {
            break;
        }
        end = Some(next);
    }
    Ok(end.map_or(0, |e| u64::from(split(e).1)))
}
