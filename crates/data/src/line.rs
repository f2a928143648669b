//! Reading one line of a text or JSON Lines file with a bounded buffer: a line longer than
//! [`MAX_LINE_BYTES`] is a typed [`DataError::LineTooLong`] (and is skipped by streaming through
//! it), never read whole into memory.

use std::io::{BufRead, Read};
use std::path::Path;

use crate::error::{DataError, Result};

/// The longest line (newline included) the readers of this crate accept: 64 MiB, far above any
/// conversation or document line in practice, far below what would exhaust memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Reads the next line into `line` (cleared first, newline kept). `Ok(0)` at the end of input.
///
/// # Errors
/// [`DataError::LineTooLong`] for a line past [`MAX_LINE_BYTES`] (the reader is then left at the
/// start of the next line), [`DataError::Io`] for a read error or a line that is not UTF-8.
pub(crate) fn read_line(reader: &mut impl BufRead, line: &mut String, path: &Path, line_no: usize) -> Result<usize> {
    let mut buf = std::mem::take(line).into_bytes();
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| DataError::io(path, e))?;
    if n > MAX_LINE_BYTES {
        skip_line(reader).map_err(|e| DataError::io(path, e))?;
        buf.clear();
        *line = String::from_utf8(buf).expect("empty");
        return Err(DataError::LineTooLong { path: path.into(), line: line_no, limit: MAX_LINE_BYTES });
    }
    match String::from_utf8(buf) {
        Ok(s) => {
            *line = s;
            Ok(n)
        }
        Err(e) => Err(DataError::io(path, std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()))),
    }
}

/// Consumes input up to and including the next newline, one buffer at a time.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        reader.consume(n);
    }
}
