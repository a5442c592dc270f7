//! Compression of layer blobs, detected from the first bytes (never from a
//! file name), and the matching streaming decoders.
//!
//! Supported: plain tar, gzip (any number of members, like `gzip -dc`) and
//! zstd (any number of frames). xz and bzip2 are recognised only to name
//! them in the error.

use std::fmt;
use std::io::{self, BufRead, Read};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

/// Why a stream cannot be decompressed.
#[derive(Debug)]
pub enum CompressError {
    /// A known format layerfs does not decode.
    Unsupported(&'static str),
    /// Reading the first bytes failed.
    Read(io::Error),
    /// The decoder could not start (zstd allocates its context here).
    Decoder(io::Error),
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressError::Unsupported(what) => {
                write!(
                    f,
                    "{what} compression is not supported (use gzip, zstd or none)"
                )
            }
            CompressError::Read(e) => write!(f, "cannot read the compression header: {e}"),
            CompressError::Decoder(e) => write!(f, "cannot start the decompressor: {e}"),
        }
    }
}

impl std::error::Error for CompressError {}

/// Identifies the compression from the magic bytes at the start of a stream.
pub fn detect(magic: &[u8]) -> Result<Compression, CompressError> {
    const GZIP: &[u8] = &[0x1f, 0x8b];
    const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
    const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
    const BZIP2: &[u8] = b"BZh";
    if magic.starts_with(GZIP) {
        Ok(Compression::Gzip)
    } else if magic.starts_with(ZSTD) {
        Ok(Compression::Zstd)
    } else if magic.starts_with(XZ) {
        Err(CompressError::Unsupported("xz"))
    } else if magic.starts_with(BZIP2) && magic.len() >= 4 && magic[3].is_ascii_digit() {
        Err(CompressError::Unsupported("bzip2"))
    } else {
        Ok(Compression::None)
    }
}

/// Peeks at `r`'s first bytes and returns the compression and a reader of
/// the decompressed stream.
pub fn decompress<'a, R: BufRead + 'a>(
    mut r: R,
) -> Result<(Compression, Box<dyn Read + 'a>), CompressError> {
    // fill_buf returns at least 6 bytes unless the stream is shorter, for
    // any BufReader of a sane capacity; a shorter stream is not compressed.
    let c = detect(r.fill_buf().map_err(CompressError::Read)?)?;
    let out: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(CompressError::Decoder)?)
        }
    };
    Ok((c, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detect_table() {
        let cases: &[(&[u8], Option<Compression>)] = &[
            (&[0x1f, 0x8b, 8, 0], Some(Compression::Gzip)),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0], Some(Compression::Zstd)),
            (b"\xfd7zXZ\0", None),
            (b"BZh9", None),
            (b"BZhx", Some(Compression::None)),
            (b"etc/passwd\0\0", Some(Compression::None)),
            (b"", Some(Compression::None)),
        ];
        for (magic, want) in cases {
            assert_eq!(detect(magic).ok(), *want, "{magic:?}");
        }
    }

    #[test]
    fn roundtrip_all() {
        let data = b"hello layer".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for (bytes, want) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
        ] {
            let (c, mut r) = decompress(io::BufReader::new(&bytes[..])).unwrap();
            assert_eq!(c, want);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&b"x".repeat(100_000)).unwrap();
        let gz = gz.finish().unwrap();
        let (_, mut r) = decompress(io::BufReader::new(&gz[..gz.len() / 2])).unwrap();
        assert!(r.read_to_end(&mut Vec::new()).is_err());
    }
}
