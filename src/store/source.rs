//! Where `layerfs load` reads an image from: a directory (an OCI image
//! layout, or an unpacked `docker save`) or a tar archive of either
//! (compressed or not). Members are named by archive-relative paths.
//!
//! Invariant: a member name is resolved lexically inside the archive; `..`
//! that climbs above the archive root, absolute names, and symlinks (in a
//! tar, or in a directory) that lead outside are
//! [`SourceError::OutsideArchive`]. Nothing here trusts a name it was given:
//! names come from manifests, which are input too.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::compress::{self, Compression};

/// Why a member could not be read.
#[derive(Debug)]
pub enum SourceError {
    Open {
        path: PathBuf,
        cause: io::Error,
    },
    /// The input tar could not be listed.
    Index {
        path: PathBuf,
        cause: io::Error,
    },
    /// Decompressing a compressed input archive failed.
    Decompress {
        path: PathBuf,
        cause: String,
    },
    OutsideArchive {
        member: String,
    },
    NotFound {
        member: String,
    },
    SymlinkLoop {
        member: String,
    },
    Read {
        member: String,
        cause: io::Error,
    },
    TooLarge {
        member: String,
        limit: u64,
    },
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceError::Open { path, cause } => {
                write!(f, "cannot open {}: {cause}", path.display())
            }
            SourceError::Index { path, cause } => {
                write!(f, "cannot read the archive {}: {cause}", path.display())
            }
            SourceError::Decompress { path, cause } => {
                write!(f, "cannot decompress {}: {cause}", path.display())
            }
            SourceError::OutsideArchive { member } => {
                write!(f, "'{member}' points outside the archive")
            }
            SourceError::NotFound { member } => write!(f, "'{member}' is not in the archive"),
            SourceError::SymlinkLoop { member } => {
                write!(f, "'{member}': too many levels of symlinks in the archive")
            }
            SourceError::Read { member, cause } => write!(f, "cannot read '{member}': {cause}"),
            SourceError::TooLarge { member, limit } => {
                write!(f, "'{member}' is larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for SourceError {}

/// Resolves `name` lexically inside an archive whose members are relative
/// to `base` (a member's directory, for symlink targets). Returns the
/// normalized `a/b/c` form, or `None` when it is absolute or climbs out.
pub fn lexical(base: &str, name: &str) -> Option<String> {
    if name.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for c in base.split('/').chain(name.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn parent_of(member: &str) -> &str {
    member.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Where a tar member's data is, or what it links to.
#[derive(Debug, Clone)]
pub enum Member {
    File { offset: u64, size: u64 },
    Symlink(String),
    Hardlink(String),
}

/// An input archive.
pub enum Source {
    Dir {
        root: PathBuf,
    },
    Tar {
        path: PathBuf,
        file: File,
        members: HashMap<String, Member>,
    },
}

/// A reader of a byte range of a file, by positioned reads.
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = (self.end - self.pos).min(buf.len() as u64) as usize;
        if left == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..left], self.pos)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Source {
    /// Opens `path`: a directory as it is, a file as a tar archive. A
    /// compressed file is first decompressed to `scratch` (the store's
    /// temporary directory), because members are read out of order.
    pub fn open(path: &Path, scratch: &Path) -> Result<Source, SourceError> {
        let open_err = |cause| SourceError::Open {
            path: path.to_path_buf(),
            cause,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if meta.is_dir() {
            let root = std::fs::canonicalize(path).map_err(open_err)?;
            return Ok(Source::Dir { root });
        }
        let mut file = File::open(path).map_err(open_err)?;
        let mut magic = [0u8; 6];
        let n = file.read_at(&mut magic, 0).map_err(open_err)?;
        let c = compress::detect(&magic[..n]).map_err(|e| SourceError::Decompress {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
        if c != Compression::None {
            let dec_err = |cause: String| SourceError::Decompress {
                path: path.to_path_buf(),
                cause,
            };
            let tmp = scratch.join(format!("input-{}.tar", std::process::id()));
            let mut out = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(|e| dec_err(format!("{}: {e}", tmp.display())))?;
            // The open file stays readable after the name is gone.
            let _ = std::fs::remove_file(&tmp);
            {
                let (_, mut r) = compress::decompress(BufReader::with_capacity(1 << 18, &file))
                    .map_err(|e| dec_err(e.to_string()))?;
                io::copy(&mut r, &mut out).map_err(|e| dec_err(e.to_string()))?;
            }
            file = out;
        }
        let members = index_tar(&file).map_err(|cause| SourceError::Index {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(Source::Tar {
            path: path.to_path_buf(),
            file,
            members,
        })
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Source::Dir { root } => root.display().to_string(),
            Source::Tar { path, .. } => path.display().to_string(),
        }
    }

    /// True when the member exists (after resolving links).
    pub fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir { .. } => self.dir_path(name).is_ok_and(|p| p.is_file()),
            Source::Tar { .. } => self.tar_member(name).is_ok(),
        }
    }

    fn dir_path(&self, name: &str) -> Result<PathBuf, SourceError> {
        let Source::Dir { root } = self else {
            return Err(SourceError::NotFound {
                member: name.into(),
            });
        };
        let rel = lexical("", name).ok_or_else(|| SourceError::OutsideArchive {
            member: name.into(),
        })?;
        let p = root.join(&rel);
        let canon = std::fs::canonicalize(&p).map_err(|cause| {
            if cause.kind() == io::ErrorKind::NotFound {
                SourceError::NotFound {
                    member: name.into(),
                }
            } else {
                SourceError::Read {
                    member: name.into(),
                    cause,
                }
            }
        })?;
        if !canon.starts_with(root) {
            return Err(SourceError::OutsideArchive {
                member: name.into(),
            });
        }
        Ok(canon)
    }

    fn tar_member(&self, name: &str) -> Result<(u64, u64), SourceError> {
        let Source::Tar { members, .. } = self else {
            return Err(SourceError::NotFound {
                member: name.into(),
            });
        };
        let outside = || SourceError::OutsideArchive {
            member: name.into(),
        };
        let mut cur = lexical("", name).ok_or_else(outside)?;
        for _ in 0..32 {
            match members.get(&cur) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Symlink(t)) => {
                    cur = lexical(parent_of(&cur), t).ok_or_else(outside)?;
                }
                Some(Member::Hardlink(t)) => cur = lexical("", t).ok_or_else(outside)?,
                None => {
                    return Err(SourceError::NotFound {
                        member: name.into(),
                    });
                }
            }
        }
        Err(SourceError::SymlinkLoop {
            member: name.into(),
        })
    }

    /// Opens a member for reading; returns the reader and its size.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + '_>, u64), SourceError> {
        match self {
            Source::Dir { .. } => {
                let p = self.dir_path(name)?;
                let f = File::open(&p).map_err(|cause| SourceError::Read {
                    member: name.into(),
                    cause,
                })?;
                let size = f
                    .metadata()
                    .map_err(|cause| SourceError::Read {
                        member: name.into(),
                        cause,
                    })?
                    .len();
                Ok((Box::new(f), size))
            }
            Source::Tar { file, .. } => {
                let (offset, size) = self.tar_member(name)?;
                Ok((
                    Box::new(Section {
                        file,
                        pos: offset,
                        end: offset + size,
                    }),
                    size,
                ))
            }
        }
    }

    /// Reads a small member (a JSON document) whole, refusing more than
    /// `limit` bytes.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, SourceError> {
        let (r, size) = self.open_member(name)?;
        if size > limit {
            return Err(SourceError::TooLarge {
                member: name.into(),
                limit,
            });
        }
        let mut v = Vec::with_capacity(size as usize);
        r.take(limit + 1)
            .read_to_end(&mut v)
            .map_err(|cause| SourceError::Read {
                member: name.into(),
                cause,
            })?;
        if v.len() as u64 > limit {
            return Err(SourceError::TooLarge {
                member: name.into(),
                limit,
            });
        }
        Ok(v)
    }
}

/// Lists a tar: member name → where its data is. Later entries win.
fn index_tar(mut file: &File) -> io::Result<HashMap<String, Member>> {
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    let mut members = HashMap::new();
    let mut ar = tar::Archive::new(file);
    for e in ar.entries_with_seek()? {
        let e = e?;
        let Some(name) = lexical("", &String::from_utf8_lossy(&e.path_bytes())) else {
            // Names that climb out can never be referenced: skip them.
            continue;
        };
        let link = || {
            e.link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let m = match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                offset: e.raw_file_position(),
                size: e.size(),
            },
            tar::EntryType::Symlink => Member::Symlink(link()),
            tar::EntryType::Link => Member::Hardlink(link()),
            _ => continue,
        };
        members.insert(name, m);
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_table() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("", "manifest.json", Some("manifest.json")),
            ("", "./a//b", Some("a/b")),
            ("abc", "../def/layer.tar", Some("def/layer.tar")),
            ("", "../etc/passwd", None),
            ("a", "../../x", None),
            ("", "/etc/passwd", None),
            ("", "blobs/sha256/../../../x", None),
        ];
        for (base, name, want) in cases {
            assert_eq!(lexical(base, name).as_deref(), *want, "{base} + {name}");
        }
    }
}
