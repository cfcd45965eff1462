//! Whole records on disk, or none: the appending writer the events file and
//! the spool share. Records wait in memory until written; a write that
//! fails part-way (a full disk) is cut back to the last whole record, and
//! the records stay in memory to be written again, so a reader never meets
//! half a record. While the disk refuses, memory holds at most `cap` bytes
//! of records; beyond that new records are refused (and counted lost by the
//! caller), never half-kept.
//!
//! The [`Medium`] seam lets tests make the disk fail (`ENOSPC`) at will.

use std::fs::File;
use std::io::Write as _;

/// Where the records go: an append-only file, in production.
pub trait Medium: Send {
    /// Appends all of `buf` at the end, or fails (having written any part).
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()>;
    /// Cuts the medium back to `len` bytes.
    fn cut(&mut self, len: u64) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()>;
}

/// A file opened for appending: after a cut, the next write lands at the
/// new end.
impl Medium for File {
    fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.write_all(buf)
    }
    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }
}

/// A record did not fit in memory while the disk refuses writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

pub struct WholeWriter<M> {
    medium: M,
    /// Bytes on the medium, all of them whole records.
    len: u64,
    pending: Vec<u8>,
    /// A failed write may have left part of a record that could not be cut yet.
    torn: bool,
    cap: usize,
    /// The last write failed (cleared by one that succeeds).
    failing: bool,
}

/// Pending bytes at which a push writes them out, as a buffered writer would.
const WRITE_AT: usize = 256 * 1024;

impl<M: Medium> WholeWriter<M> {
    /// A writer over `medium`, which already holds `len` bytes of whole records.
    pub fn new(medium: M, len: u64, cap: usize) -> Self {
        WholeWriter { medium, len, pending: Vec::with_capacity(WRITE_AT), torn: false, cap, failing: false }
    }

    /// Takes one record, built by `write` into the pending buffer. Refused
    /// when `size` more bytes would pass the cap.
    pub fn push_with(&mut self, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), Refused> {
        if self.pending.len() + size > self.cap {
            // Try the disk once more before refusing: room may have come back.
            if self.flush().is_err() || self.pending.len() + size > self.cap {
                return Err(Refused);
            }
        }
        write(&mut self.pending);
        if self.pending.len() >= WRITE_AT && !self.failing {
            // A failure here is kept, and told by the next flush.
            let _ = self.flush();
        }
        Ok(())
    }

    pub fn push(&mut self, record: &[u8]) -> Result<(), Refused> {
        self.push_with(record.len(), |out| out.extend_from_slice(record))
    }

    /// Writes what is pending. On failure the medium is cut back to its
    /// whole records, and everything stays pending for the next try.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.torn {
            self.medium.cut(self.len)?;
            self.torn = false;
        }
        if self.pending.is_empty() {
            self.failing = false;
            return Ok(());
        }
        match self.medium.append(&self.pending) {
            Ok(()) => {
                self.len += self.pending.len() as u64;
                self.pending.clear();
                self.failing = false;
                Ok(())
            }
            Err(e) => {
                self.failing = true;
                self.torn = self.medium.cut(self.len).is_err();
                Err(e)
            }
        }
    }

    /// Writes what is pending and syncs it to disk.
    pub fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.medium.sync()
    }

    /// Bytes on the medium, all whole records.
    pub fn written(&self) -> u64 {
        self.len
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether the last write failed.
    pub fn failing(&self) -> bool {
        self.failing
    }

    pub fn medium(&self) -> &M {
        &self.medium
    }

    /// Syncs what is on the medium, leaving what is pending in memory.
    pub fn sync_written(&mut self) -> std::io::Result<()> {
        self.medium.sync()
    }

    /// Goes on over another medium (the file reopened or rotated) that
    /// holds `len` bytes of whole records; what is pending goes there.
    pub fn replace(&mut self, medium: M, len: u64) -> M {
        self.len = len;
        self.torn = false;
        std::mem::replace(&mut self.medium, medium)
    }
}

#[cfg(test)]
pub mod fault {
    //! A medium that behaves like a disk with a given amount of free room.
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Default)]
    pub struct Disk {
        pub bytes: Vec<u8>,
        /// Bytes that may still be written; `None` is unlimited.
        pub room: Option<usize>,
        pub synced: usize,
    }

    #[derive(Debug, Clone, Default)]
    pub struct Faulty(pub Arc<Mutex<Disk>>);

    impl Faulty {
        pub fn with_room(room: Option<usize>) -> Self {
            Faulty(Arc::new(Mutex::new(Disk { room, ..Disk::default() })))
        }
        pub fn set_room(&self, room: Option<usize>) {
            self.0.lock().unwrap().room = room;
        }
        pub fn bytes(&self) -> Vec<u8> {
            self.0.lock().unwrap().bytes.clone()
        }
        pub fn synced(&self) -> usize {
            self.0.lock().unwrap().synced
        }
    }

    impl super::Medium for Faulty {
        fn append(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let mut d = self.0.lock().unwrap();
            let fits = d.room.map_or(buf.len(), |r| r.min(buf.len()));
            d.bytes.extend_from_slice(&buf[..fits]);
            if let Some(r) = d.room.as_mut() {
                *r -= fits;
            }
            if fits < buf.len() {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
        fn cut(&mut self, len: u64) -> std::io::Result<()> {
            let mut d = self.0.lock().unwrap();
            let before = d.bytes.len();
            d.bytes.truncate(len as usize);
            let freed = before - d.bytes.len();
            if let Some(r) = d.room.as_mut() {
                *r += freed;
            }
            Ok(())
        }
        fn sync(&mut self) -> std::io::Result<()> {
            let mut d = self.0.lock().unwrap();
            d.synced = d.bytes.len();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fault::Faulty;
    use super::*;

    #[test]
    fn a_full_disk_keeps_only_whole_records_and_writing_resumes() {
        let disk = Faulty::with_room(Some(25));
        let mut w = WholeWriter::new(disk.clone(), 0, 1024);
        for r in ["record 1\n", "record 2\n", "record 3\n"] {
            w.push(r.as_bytes()).unwrap();
        }
        assert!(w.flush().is_err(), "27 bytes do not fit in 25");
        assert_eq!(disk.bytes(), b"", "the torn write was cut back");
        assert!(w.failing());
        disk.set_room(None);
        w.push(b"record 4\n").unwrap();
        w.flush().unwrap();
        assert_eq!(disk.bytes(), b"record 1\nrecord 2\nrecord 3\nrecord 4\n", "nothing lost, nothing torn");
        assert!(!w.failing());
    }

    #[test]
    fn memory_is_bounded_while_the_disk_refuses() {
        let disk = Faulty::with_room(Some(0));
        let mut w = WholeWriter::new(disk.clone(), 0, 20);
        w.push(b"0123456789").unwrap();
        w.push(b"0123456789").unwrap();
        assert_eq!(w.push(b"x"), Err(Refused), "the cap is reached: refused whole");
        disk.set_room(None);
        w.push(b"x").expect("the disk has room again: the next push writes out and is taken");
        w.sync().unwrap();
        assert_eq!(disk.bytes().len(), 21);
        assert_eq!(disk.synced(), 21);
    }
}
