//! Reading records back: a forward cursor over a segment file that hands out record bodies as
//! slices of one read window (zero-copy `BytesMut` splits), and footer loading.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;

use crate::io::{read_exact_at, read_up_to, VfsFile};
use crate::segment::format::{record_crc_ok, Footer, RecordHeader, RecordKind, FOOTER_BYTES_MAX, RECORD_HEADER_LEN};

/// Bytes fetched per read while scanning. 1 MiB amortises syscalls and matches the measured
/// sweet spot for sequential reads; frames larger than this are read whole.
pub(crate) const READ_CHUNK_BYTES: usize = 1 << 20;

/// One record as read from disk: header, its raw bytes (for AAD), and the still-encrypted body.
pub(crate) struct RawRecord {
    pub header: RecordHeader,
    pub header_bytes: [u8; RECORD_HEADER_LEN],
    pub offset: u64,
    pub body: BytesMut,
}

/// Why a cursor stopped before its end.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Clean end: reached the end offset exactly.
    End,
    /// A record at this offset is torn or damaged (bad header, CRC, or runs past the end).
    Bad { offset: u64, detail: String },
}

/// A forward cursor over the records in `[pos, end)` of a segment file.
pub(crate) struct RecordCursor {
    file: Arc<dyn VfsFile>,
    pos: u64,
    end: u64,
    window: BytesMut,
    /// Whether each record's CRC is checked before it is handed out. A reader that
    /// authenticates every encrypted record with AES-GCM (whose AAD covers every header field
    /// but the CRC) leaves it to the caller: see [`RecordCursor::without_crc_check`].
    check_crc: bool,
}

impl RecordCursor {
    pub(crate) fn new(file: Arc<dyn VfsFile>, pos: u64, end: u64) -> Self {
        RecordCursor { file, pos, end, window: BytesMut::new(), check_crc: true }
    }

    /// A cursor that hands out records without checking their CRC. For the frame reader only:
    /// it authenticates every encrypted record (header and body) with AES-GCM before using any
    /// of its fields, and checks the CRC itself for the unencrypted footer and, to say which of
    /// "damaged" and "forged" a failing record is, for a record that fails authentication.
    /// Recovery and scrubbing, which must find torn records without keys, keep the check.
    pub(crate) fn without_crc_check(file: Arc<dyn VfsFile>, pos: u64, end: u64) -> Self {
        RecordCursor { check_crc: false, ..RecordCursor::new(file, pos, end) }
    }

    /// Current offset (start of the next record).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Makes at least `n` bytes from `pos` available in the window; false if the range ends first.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.pos + n as u64 > self.end {
            return Ok(false);
        }
        if self.window.len() >= n {
            return Ok(true);
        }
        let have = self.window.len();
        let want = n.max(READ_CHUNK_BYTES).min((self.end - self.pos) as usize);
        self.window.resize(want, 0);
        let got = read_up_to(self.file.as_ref(), &mut self.window[have..], self.pos + have as u64)?;
        self.window.truncate(have + got);
        Ok(self.window.len() >= n)
    }

    /// Whether the record at `offset` with this header has a good CRC, its body read afresh from
    /// the file (a caller's copy may have been overwritten by a failed decryption).
    pub(crate) fn crc_ok_on_disk(&self, header: &RecordHeader, header_bytes: &[u8], offset: u64) -> io::Result<bool> {
        let mut body = vec![0u8; header.body_len as usize];
        read_exact_at(self.file.as_ref(), &mut body, offset + RECORD_HEADER_LEN as u64)?;
        Ok(record_crc_ok(header, header_bytes, &body))
    }

    /// The next record, CRC-checked unless the cursor was made without the check; `Err(Stop)`
    /// at the end or at the first bad record.
    pub(crate) fn next_record(&mut self) -> io::Result<Result<RawRecord, Stop>> {
        if self.pos >= self.end {
            return Ok(Err(Stop::End));
        }
        if !self.fill(RECORD_HEADER_LEN)? {
            return Ok(Err(Stop::Bad { offset: self.pos, detail: "record header runs past the end".into() }));
        }
        let Some(header) = RecordHeader::decode(&self.window[..RECORD_HEADER_LEN]) else {
            return Ok(Err(Stop::Bad { offset: self.pos, detail: "record header is invalid".into() }));
        };
        let total = header.record_len() as usize;
        if !self.fill(total)? {
            return Ok(Err(Stop::Bad { offset: self.pos, detail: "record body runs past the end".into() }));
        }
        let mut header_bytes = [0u8; RECORD_HEADER_LEN];
        header_bytes.copy_from_slice(&self.window[..RECORD_HEADER_LEN]);
        if self.check_crc && !record_crc_ok(&header, &header_bytes, &self.window[RECORD_HEADER_LEN..total]) {
            return Ok(Err(Stop::Bad { offset: self.pos, detail: "record CRC mismatch".into() }));
        }
        let mut rec = self.window.split_to(total);
        let body = rec.split_off(RECORD_HEADER_LEN);
        let offset = self.pos;
        self.pos += total as u64;
        Ok(Ok(RawRecord { header, header_bytes, offset, body }))
    }
}

/// Reads and checks the footer record at `offset`.
pub(crate) fn read_footer(file: &dyn VfsFile, offset: u64, file_len: u64) -> io::Result<Result<Footer, String>> {
    let mut hb = [0u8; RECORD_HEADER_LEN];
    if offset + RECORD_HEADER_LEN as u64 > file_len {
        return Ok(Err("footer offset past the end of the file".into()));
    }
    read_exact_at(file, &mut hb, offset)?;
    let Some(h) = RecordHeader::decode(&hb) else {
        return Ok(Err("footer header is invalid".into()));
    };
    if h.kind != RecordKind::Footer || h.body_len as usize > FOOTER_BYTES_MAX || offset + h.record_len() != file_len {
        return Ok(Err("footer record has the wrong kind or length".into()));
    }
    let mut body = vec![0u8; h.body_len as usize];
    read_exact_at(file, &mut body, offset + RECORD_HEADER_LEN as u64)?;
    if !record_crc_ok(&h, &hb, &body) {
        return Ok(Err("footer CRC mismatch".into()));
    }
    Ok(Footer::decode(&body))
}
