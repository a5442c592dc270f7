//! Content digests: the [`Digest`] of a blob (sha256 of its stored bytes) and
//! the [`DiffId`] of a layer (sha256 of its uncompressed tar), plus readers
//! that compute them while the bytes stream past.
//!
//! Invariant: a `Digest` always holds exactly 64 lowercase hex digits of a
//! sha256, so it can be used as a file name (`blobs/sha256/HEX`,
//! `layers/HEX`) without further checks. Only sha256 is supported, like
//! Docker's image store.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Why a digest string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    /// Not `ALGORITHM:HEX`.
    Malformed(String),
    /// An algorithm other than sha256.
    Algorithm(String),
    /// Not 64 lowercase hex digits.
    Hex(String),
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::Malformed(s) => write!(f, "malformed digest '{s}': expected sha256:HEX"),
            DigestError::Algorithm(s) => {
                write!(f, "unsupported digest algorithm in '{s}': only sha256")
            }
            DigestError::Hex(s) => write!(f, "bad digest '{s}': expected 64 lowercase hex digits"),
        }
    }
}

impl std::error::Error for DigestError {}

/// A sha256 content digest, displayed as `sha256:HEX`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest {
    hex: String,
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Digest {
    /// Parses `sha256:HEX`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::Malformed(s.into()));
        };
        if alg != "sha256" {
            return Err(DigestError::Algorithm(s.into()));
        }
        Digest::from_hex(hex).map_err(|_| DigestError::Hex(s.into()))
    }

    /// Parses the bare 64-digit hex form (file names, legacy layer ids).
    pub fn from_hex(hex: &str) -> Result<Digest, DigestError> {
        if is_hex64(hex) {
            Ok(Digest { hex: hex.into() })
        } else {
            Err(DigestError::Hex(hex.into()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(h: Sha256) -> Digest {
        let out = h.finalize();
        let mut hex = String::with_capacity(64);
        for b in out {
            hex.push_str(&format!("{b:02x}"));
        }
        Digest { hex }
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The 12-digit short form docker shows as IMAGE ID.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The digest of a layer's uncompressed tar stream: names the layer in an
/// image config (`rootfs.diff_ids`) and its directory in the store.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DiffId(pub Digest);

impl fmt::Display for DiffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Passes bytes through while computing their sha256 and count.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Reads what is left (so the digest covers the whole stream) and
    /// returns the digest and total length.
    pub fn finish(self) -> io::Result<(Digest, u64)> {
        self.finish_into().map(|(d, n, _)| (d, n))
    }

    /// Like [`finish`](Self::finish), and gives back the inner reader.
    pub fn finish_into(mut self) -> io::Result<(Digest, u64, R)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest::from_hasher(self.hasher), self.count, self.inner))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Copies every byte read into a writer as well (the blob being stored).
pub struct TeeReader<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> TeeReader<R, W> {
    pub fn new(inner: R, out: W) -> Self {
        TeeReader { inner, out }
    }

    /// The writer, to flush it.
    pub fn into_writer(self) -> W {
        self.out
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_table() {
        let ok = format!("sha256:{EMPTY}");
        type Want = Result<&'static str, fn(String) -> DigestError>;
        let cases: Vec<(String, Want)> = vec![
            (ok.clone(), Ok(EMPTY)),
            (EMPTY.into(), Err(DigestError::Malformed)),
            (format!("sha512:{EMPTY}"), Err(DigestError::Algorithm)),
            ("sha256:abc".into(), Err(DigestError::Hex)),
            (
                format!("sha256:{}", EMPTY.to_uppercase()),
                Err(DigestError::Hex),
            ),
            (
                "sha256:../../../../etc/passwd".into(),
                Err(DigestError::Hex),
            ),
        ];
        for (input, want) in cases {
            let got = Digest::parse(&input);
            match want {
                Ok(hex) => assert_eq!(got.as_ref().map(|d| d.hex()), Ok(hex), "{input}"),
                Err(mk) => assert_eq!(got, Err(mk(input.clone())), "{input}"),
            }
        }
    }

    #[test]
    fn digest_of_and_reader_agree() {
        assert_eq!(Digest::of(b"").hex(), EMPTY);
        let mut r = HashingReader::new(&b"hello world"[..]);
        let mut first = [0u8; 5];
        r.read_exact(&mut first).unwrap();
        let (d, n) = r.finish().unwrap();
        assert_eq!(n, 11);
        assert_eq!(d, Digest::of(b"hello world"));
        assert_eq!(d.short(), &d.hex()[..12]);
    }

    #[test]
    fn serde_roundtrip() {
        let d = Digest::of(b"x");
        let s = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&s).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
    }
}
