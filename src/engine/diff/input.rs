//! The input of Apply: its compression (plain, gzip or zstd, told apart by
//! the first bytes), and its end.
//!
//! The tar reader stops at the first zero block and takes the end of the
//! input at a header boundary for the end of the archive too, so a tar cut
//! between two entries would pass for a whole one: [`Input::finish`]
//! requires the end-of-archive marker (two zero blocks). A decompressor
//! verifies its stream's checksums (gzip's CRC-32 and ISIZE trailer, zstd's
//! frame checksum) only when it is read to the end, and the tar reader
//! never reads past the marker: compressed input is read to its end after
//! the marker, so a corrupt stream is refused instead of applied.

use std::io::{self, BufRead, BufReader, Read};

use super::DiffError;

const BLOCK: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

/// The decompressed tar stream; remembers whether the input has ended.
pub struct Input<'a> {
    inner: Box<dyn Read + 'a>,
    pub compression: Compression,
    /// The last read returned end of input.
    ended: bool,
}

impl Read for Input<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !buf.is_empty() {
            self.ended = n == 0;
        }
        Ok(n)
    }
}

/// gzip errors in words: flate2 reports a trailer that does not match the
/// data as "corrupt gzip stream does not have a matching checksum".
struct GzipWords<R>(R);

impl<R: Read> Read for GzipWords<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("checksum") {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "gzip: the stream's trailer (CRC-32 and ISIZE, the length) does not match its data: the input is corrupt",
                )
            } else {
                io::Error::new(e.kind(), format!("gzip: {msg}"))
            }
        })
    }
}

impl<'a> Input<'a> {
    /// Looks at the first bytes of `input` and decompresses what needs it.
    pub fn open(input: Box<dyn Read + 'a>) -> Result<Input<'a>, DiffError> {
        let mut input = BufReader::with_capacity(1 << 20, input);
        let head = input
            .fill_buf()
            .map_err(|e| DiffError::Input(format!("reading the input: {e}")))?;
        if head.is_empty() {
            return Err(DiffError::Input(
                "the input is empty: a layer tar has at least its two zero end blocks".into(),
            ));
        }
        let (inner, compression): (Box<dyn Read + 'a>, _) = if head.starts_with(&[0x1f, 0x8b]) {
            (
                Box::new(BufReader::with_capacity(
                    1 << 20,
                    GzipWords(flate2::bufread::MultiGzDecoder::new(input)),
                )),
                Compression::Gzip,
            )
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let z = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| DiffError::Input(format!("zstd: {e}")))?;
            (
                Box::new(BufReader::with_capacity(1 << 20, z)),
                Compression::Zstd,
            )
        } else if head.starts_with(b"BZh") {
            return Err(DiffError::Input(
                "the input is bzip2-compressed; layer tars may be plain, gzip or zstd".into(),
            ));
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            return Err(DiffError::Input(
                "the input is xz-compressed; layer tars may be plain, gzip or zstd".into(),
            ));
        } else {
            (Box::new(input), Compression::Plain)
        };
        Ok(Input {
            inner,
            compression,
            ended: false,
        })
    }

    /// Called when the tar reader has found no more entries: the input must
    /// have given the end-of-archive marker, and compressed input is read
    /// to its end (its checksums verified on the way).
    pub fn finish(&mut self, entries: u64) -> Result<(), DiffError> {
        let cut = |what: &str| {
            DiffError::Input(format!(
                "after {entries} entries: the tar ends without its end-of-archive marker (two zero blocks){what}: truncated input"
            ))
        };
        if self.ended {
            return Err(cut(""));
        }
        // The tar reader stopped after the marker's first block.
        let mut block = [0u8; BLOCK];
        let n = read_full(self, &mut block).map_err(|e| self.broken(e))?;
        if n < BLOCK {
            return Err(cut(", only its first block"));
        }
        if block.iter().any(|b| *b != 0) {
            return Err(DiffError::Input(format!(
                "after {entries} entries: a lone zero block where the end-of-archive marker has two (a damaged tar)"
            )));
        }
        if self.compression != Compression::Plain {
            io::copy(self, &mut io::sink()).map_err(|e| self.broken(e))?;
        }
        Ok(())
    }

    fn broken(&self, e: io::Error) -> DiffError {
        DiffError::Input(format!("after the tar's end: {e}"))
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar(entries: usize) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("f{i}"), &b"abc"[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Reads every entry, then finishes.
    fn read(data: Vec<u8>) -> Result<usize, DiffError> {
        let input = Input::open(Box::new(io::Cursor::new(data)))?;
        let mut ar = tar::Archive::new(input);
        let mut n = 0;
        for e in ar.entries().unwrap() {
            let mut e = e.map_err(|e| DiffError::Input(e.to_string()))?;
            io::copy(&mut e, &mut io::sink()).unwrap();
            n += 1;
        }
        ar.into_inner().finish(n as u64)?;
        Ok(n)
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn end_marker_is_required() {
        let t = tar(2);
        let n = t.len();
        assert_eq!(read(t.clone()).unwrap(), 2);
        let mut padded = t.clone();
        padded.resize(10240, 0);
        assert_eq!(read(padded).unwrap(), 2);
        for cut in [n - 1024, n - 512, 1024] {
            let e = read(t[..cut].to_vec()).unwrap_err().to_string();
            assert!(e.contains("end-of-archive"), "{cut}: {e}");
        }
        let mut lone = t[..n - 512].to_vec();
        lone.extend_from_slice(&t[..512]);
        assert!(read(lone)
            .unwrap_err()
            .to_string()
            .contains("lone zero block"));
    }

    #[test]
    fn gzip_trailer_is_checked() {
        let t = tar(2);
        let g = gz(&t);
        assert_eq!(read(g.clone()).unwrap(), 2);
        let n = g.len();
        for at in [n - 8, n - 1] {
            let mut bad = g.clone();
            bad[at] ^= 1;
            let e = read(bad).unwrap_err().to_string();
            assert!(e.contains("CRC-32") && e.contains("ISIZE"), "{e}");
        }
        let e = read(g[..n - 4].to_vec()).unwrap_err().to_string();
        assert!(e.contains("gzip"), "{e}");
        let mut two = gz(&t[..512]);
        two.extend_from_slice(&gz(&t[512..]));
        assert_eq!(read(two).unwrap(), 2);
    }
}
