//! Parsing of mount options (`-o a,b=c`) and of the fuse-overlayfs-compatible
//! command line, separated from any I/O and tested table-driven.
//!
//! Grammar: options are separated by `,`; `\,` is a literal comma, and a
//! double-quoted part keeps its commas (and its quotes). In
//! `lowerdir=` the layers are separated by `:`; `\:` is a literal colon and
//! `\\` a literal backslash. An option layerfs does not know is an error that
//! names it; options fuse-overlayfs has that layerfs does not implement yet are
//! an error that says so. `uidmapping=`/`gidmapping=` take `C:H:N` triples
//! joined by `:` (containers/storage's spelling), checked to form a mapping.

use std::fmt;
use std::path::PathBuf;

pub use crate::fuse::{DirNlink, ReaddirPlus, XattrSupport};
use crate::overlay::idmap::{IdRange, IdRanges};
pub use crate::overlay::{Metacopy, RedirectDir, WhiteoutMode, XattrNamespace};

/// A generic mount flag and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    ReadOnly(bool),
    Dev(bool),
    Suid(bool),
    Exec(bool),
    Atime(bool),
    Sync(bool),
    DirSync,
}

/// Everything `-o` can say.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MountOptions {
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub flags: Vec<Flag>,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub fsname: Option<String>,
    pub subtype: Option<String>,
    /// Skip fsync on copy-up and make fsync a no-op.
    pub volatile: bool,
    pub whiteout: WhiteoutMode,
    /// Entry and attribute cache timeout in seconds.
    pub timeout: Option<std::time::Duration>,
    pub threads: Option<usize>,
    /// `uring=`: threads per CPU queue for FUSE over io_uring (0: off).
    pub uring: Option<usize>,
    pub passthrough: Option<bool>,
    /// `writeback=`: the kernel's writeback cache (`None`: automatic).
    pub writeback: Option<bool>,
    pub readdirplus: Option<ReaddirPlus>,
    /// `max_inodes=N`: inodes the daemon keeps (0: no bound).
    pub max_inodes: Option<usize>,
    /// `static_nlink`: nlink 1 for every directory.
    pub dir_nlink: DirNlink,
    /// `noxattrs=1`: extended attributes are unsupported (ENOSYS).
    pub xattrs: XattrSupport,
    /// Kernel overlayfs's `redirect_dir=`, `metacopy=` and `userxattr`.
    pub redirect_dir: RedirectDir,
    pub metacopy: Metacopy,
    pub xattr_namespace: XattrNamespace,
    /// Options the kernel parses itself (SELinux `context=` and friends),
    /// passed on as given.
    pub kernel: Vec<String>,
    /// Append copy-on-write events to this file (JSON Lines).
    pub trace: Option<PathBuf>,
    /// `uidmapping=`/`gidmapping=`: stored id ranges and the ids they show as.
    pub uidmapping: IdRanges,
    pub gidmapping: IdRanges,
    /// `squash_to_root`, `squash_to_uid=`, `squash_to_gid=`.
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
}

/// Options fuse-overlayfs accepts that layerfs does not implement yet.
pub const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    ("xattr_permissions=", "store permissions in xattrs"),
    ("plugins=", "layer plugins"),
];

/// Kernel overlayfs options about features layerfs always has or never
/// needs; accepted with any value so that one option string serves both
/// (`index`: hard links stay together across copy-up either way; `xino`:
/// inode numbers are layerfs's own; `uuid`, `nfs_export`: file handles).
const OVERLAY_IGNORED: &[&str] = &["index", "xino", "uuid", "nfs_export"];

/// SELinux mount options: the kernel's security module parses them.
const KERNEL_PARSED: &[&str] = &["context", "fscontext", "defcontext", "rootcontext"];

/// Generic mount options that are accepted and have no effect on a FUSE mount.
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "async_dio",
    "noacl",
    "silent",
    "loud",
];

/// Why an option string was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum OptionError {
    Unknown(String),
    NotImplemented(String),
    BadValue {
        option: String,
        value: String,
        expected: &'static str,
    },
    EmptyLowerdir,
    /// A well-formed id mapping that is not a mapping (overlap, ...).
    BadMapping {
        option: String,
        value: String,
        reason: String,
    },
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptionError::Unknown(o) => write!(f, "unknown mount option '{o}' (see --help)"),
            OptionError::NotImplemented(o) => {
                write!(
                    f,
                    "mount option '{o}' is not implemented yet by layerfs (see --help)"
                )
            }
            OptionError::BadValue {
                option,
                value,
                expected,
            } => write!(
                f,
                "bad value '{value}' for option '{option}': expected {expected}"
            ),
            OptionError::EmptyLowerdir => write!(f, "lowerdir= has an empty layer path"),
            OptionError::BadMapping {
                option,
                value,
                reason,
            } => write!(f, "bad value '{value}' for option '{option}': {reason}"),
        }
    }
}

impl std::error::Error for OptionError {}

/// Splits an option string at unescaped commas; `\,` becomes `,`, any other
/// escape is kept for the option's own parser.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    // A double-quoted value keeps its commas (SELinux contexts:
    // `context="system_u:object_r:container_file_t:s0:c1,c2"`), as mount(8)
    // splits them; the quotes stay for the kernel.
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(',') => cur.push(','),
                Some(n) => {
                    cur.push('\\');
                    cur.push(n);
                }
                None => cur.push('\\'),
            },
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

/// Splits a `lowerdir=` value at unescaped colons, removing escapes.
pub fn split_lowerdir(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n)
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses a `uidmapping=`/`gidmapping=` value: `C:H:N` triples joined by
/// `:` (stored id, shown id, count), forming a mapping (see `idmap`).
pub fn parse_mapping(option: &str, v: &str) -> Result<IdRanges, OptionError> {
    let bad = |value: &str, expected: &'static str| OptionError::BadValue {
        option: option.into(),
        value: value.into(),
        expected,
    };
    const TRIPLES: &str = "C:H:N[:C:H:N...] with decimal ids (stored id, shown id, count)";
    let nums: Vec<&str> = v.split(':').collect();
    if v.is_empty() || !nums.len().is_multiple_of(3) {
        return Err(bad(v, TRIPLES));
    }
    let mut ranges = Vec::with_capacity(nums.len() / 3);
    for t in nums.chunks(3) {
        let mut n = [0u32; 3];
        for (slot, s) in n.iter_mut().zip(t) {
            *slot = s
                .parse()
                .ok()
                .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad(s, TRIPLES))?;
        }
        ranges.push(IdRange {
            disk: n[0],
            mount: n[1],
            len: n[2],
        });
    }
    IdRanges::new(ranges).map_err(|e| OptionError::BadMapping {
        option: option.into(),
        value: v.into(),
        reason: e.to_string(),
    })
}

fn parse_id(option: &str, v: &str) -> Result<u32, OptionError> {
    v.parse()
        .ok()
        .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| OptionError::BadValue {
            option: option.into(),
            value: v.into(),
            expected: "a decimal id",
        })
}

fn parse_bool(option: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "1" | "on" | "yes" | "true" => Ok(true),
        "0" | "off" | "no" | "false" => Ok(false),
        _ => Err(OptionError::BadValue {
            option: option.into(),
            value: v.into(),
            expected: "on/off or 1/0",
        }),
    }
}

/// A whole number within `range`; `expected` says what else was wanted.
fn parse_count(
    option: &str,
    v: &str,
    range: std::ops::RangeInclusive<usize>,
    expected: &'static str,
) -> Result<usize, OptionError> {
    v.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| OptionError::BadValue {
            option: option.into(),
            value: v.into(),
            expected,
        })
}

impl MountOptions {
    /// Applies one `-o` argument (a comma-separated list) on top of `self`;
    /// later options override earlier ones, as with mount(8).
    pub fn apply(&mut self, s: &str) -> Result<(), OptionError> {
        for opt in split_options(s) {
            self.apply_one(&opt)?;
        }
        Ok(())
    }

    fn apply_one(&mut self, opt: &str) -> Result<(), OptionError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let flag = |f: Flag, me: &mut MountOptions| {
            me.flags.push(f);
            Ok(())
        };
        match (key, value) {
            ("lowerdir", Some(v)) => {
                let dirs = split_lowerdir(v);
                if dirs.iter().any(|d| d.is_empty()) {
                    return Err(OptionError::EmptyLowerdir);
                }
                self.lowerdirs = dirs.into_iter().map(PathBuf::from).collect();
                Ok(())
            }
            ("upperdir", Some(v)) => {
                self.upperdir = Some(PathBuf::from(unescape(v)));
                Ok(())
            }
            ("workdir", Some(v)) => {
                self.workdir = Some(PathBuf::from(unescape(v)));
                Ok(())
            }
            ("rw", None) => flag(Flag::ReadOnly(false), self),
            ("ro", None) => flag(Flag::ReadOnly(true), self),
            ("dev", None) => flag(Flag::Dev(true), self),
            ("nodev", None) => flag(Flag::Dev(false), self),
            ("suid", None) => flag(Flag::Suid(true), self),
            ("nosuid", None) => flag(Flag::Suid(false), self),
            ("exec", None) => flag(Flag::Exec(true), self),
            ("noexec", None) => flag(Flag::Exec(false), self),
            ("atime", None) => flag(Flag::Atime(true), self),
            ("noatime", None) => flag(Flag::Atime(false), self),
            ("sync", None) => flag(Flag::Sync(true), self),
            ("async", None) => flag(Flag::Sync(false), self),
            ("dirsync", None) => flag(Flag::DirSync, self),
            ("allow_other", None) => {
                self.allow_other = true;
                Ok(())
            }
            ("allow_root", None) => {
                self.allow_root = true;
                Ok(())
            }
            ("default_permissions", None) => {
                self.default_permissions = true;
                Ok(())
            }
            ("fsname", Some(v)) => {
                self.fsname = Some(v.to_string());
                Ok(())
            }
            ("subtype", Some(v)) => {
                self.subtype = Some(v.to_string());
                Ok(())
            }
            ("volatile", None) => {
                self.volatile = true;
                Ok(())
            }
            ("fsync", Some(v)) => {
                self.volatile = !parse_bool(key, v)?;
                Ok(())
            }
            ("whiteout", Some(v)) => {
                self.whiteout = match v {
                    "auto" => WhiteoutMode::Auto,
                    "chardev" => WhiteoutMode::Chardev,
                    "file" => WhiteoutMode::File,
                    _ => {
                        return Err(OptionError::BadValue {
                            option: key.into(),
                            value: v.into(),
                            expected: "auto, chardev or file",
                        });
                    }
                };
                Ok(())
            }
            ("timeout", Some(v)) => {
                let t: f64 = v
                    .parse()
                    .ok()
                    .filter(|t| (0.0..=1e9).contains(t))
                    .ok_or_else(|| OptionError::BadValue {
                        option: key.into(),
                        value: v.into(),
                        expected: "a number of seconds",
                    })?;
                self.timeout = Some(std::time::Duration::from_secs_f64(t));
                Ok(())
            }
            ("threaded", Some(v)) => {
                self.threads = Some(if parse_bool(key, v)? {
                    crate::fuse::default_threads()
                } else {
                    1
                });
                Ok(())
            }
            ("threads", Some(v)) => {
                self.threads = Some(parse_count(key, v, 1..=256, "a number from 1 to 256")?);
                Ok(())
            }
            ("uring", Some(v)) => {
                self.uring = Some(match v {
                    "on" | "auto" => crate::fuse::DEFAULT_URING_THREADS,
                    "off" => 0,
                    _ => parse_count(key, v, 0..=8, "on, off or a number from 0 to 8")?,
                });
                Ok(())
            }
            ("passthrough", Some(v)) => {
                self.passthrough = Some(parse_bool(key, v)?);
                Ok(())
            }
            ("readdirplus", Some(v)) => {
                self.readdirplus = Some(match v {
                    "auto" => ReaddirPlus::Auto,
                    _ => match parse_bool(key, v) {
                        Ok(true) => ReaddirPlus::On,
                        Ok(false) => ReaddirPlus::Off,
                        Err(_) => {
                            return Err(OptionError::BadValue {
                                option: key.into(),
                                value: v.into(),
                                expected: "auto, on or off",
                            });
                        }
                    },
                });
                Ok(())
            }
            ("max_inodes", Some(v)) => {
                let n: usize = v.parse().map_err(|_| OptionError::BadValue {
                    option: key.into(),
                    value: v.into(),
                    expected: "a number of inodes (0: no bound)",
                })?;
                self.max_inodes = Some(n);
                Ok(())
            }
            ("static_nlink", None) => {
                self.dir_nlink = DirNlink::Static;
                Ok(())
            }
            ("noxattrs", Some(v)) => {
                self.xattrs = match parse_bool(key, v)? {
                    true => XattrSupport::Off,
                    false => XattrSupport::On,
                };
                Ok(())
            }
            ("redirect_dir", Some(v)) => {
                self.redirect_dir = match v {
                    "on" => RedirectDir::On,
                    "follow" | "off" => RedirectDir::Follow,
                    "nofollow" => RedirectDir::NoFollow,
                    _ => {
                        return Err(OptionError::BadValue {
                            option: key.into(),
                            value: v.into(),
                            expected: "on, follow, off or nofollow",
                        });
                    }
                };
                Ok(())
            }
            ("metacopy", Some(v)) => {
                self.metacopy = match parse_bool(key, v)? {
                    true => Metacopy::On,
                    false => Metacopy::Off,
                };
                Ok(())
            }
            ("userxattr", None) => {
                self.xattr_namespace = XattrNamespace::User;
                Ok(())
            }
            (k, Some(_)) if OVERLAY_IGNORED.contains(&k) => Ok(()),
            (k, Some(_)) if KERNEL_PARSED.contains(&k) => {
                self.kernel.push(opt.to_string());
                Ok(())
            }
            ("trace", Some(v)) if !v.is_empty() => {
                self.trace = Some(PathBuf::from(unescape(v)));
                Ok(())
            }
            ("trace", _) => Err(OptionError::BadValue {
                option: key.into(),
                value: value.unwrap_or_default().into(),
                expected: "a file name (trace=FILE)",
            }),
            ("uidmapping", Some(v)) => {
                self.uidmapping = parse_mapping(key, v)?;
                Ok(())
            }
            ("gidmapping", Some(v)) => {
                self.gidmapping = parse_mapping(key, v)?;
                Ok(())
            }
            ("squash_to_root", None) => {
                self.squash_to_root = true;
                Ok(())
            }
            ("squash_to_uid", Some(v)) => {
                self.squash_to_uid = Some(parse_id(key, v)?);
                Ok(())
            }
            ("squash_to_gid", Some(v)) => {
                self.squash_to_gid = Some(parse_id(key, v)?);
                Ok(())
            }
            // fuse-overlayfs tuning knobs whose job layerfs does by design.
            ("writeback", Some(v)) => {
                self.writeback = Some(parse_bool(key, v)?);
                Ok(())
            }
            ("fast_ino", Some(_)) => Ok(()),
            (k, _) if IGNORED.contains(&k) => Ok(()),
            _ => {
                let with_eq = format!("{key}=");
                if NOT_IMPLEMENTED
                    .iter()
                    .any(|(n, _)| *n == key || *n == with_eq)
                {
                    Err(OptionError::NotImplemented(key.to_string()))
                } else {
                    Err(OptionError::Unknown(opt.to_string()))
                }
            }
        }
    }

    /// The ownership translation these options ask for; `overflow` is the
    /// (uid, gid) shown for ids without a mapping.
    pub fn idmap(&self, overflow: (u32, u32)) -> crate::overlay::IdMap {
        let root = self.squash_to_root.then_some(0);
        crate::overlay::IdMap {
            uids: self.uidmapping.clone(),
            gids: self.gidmapping.clone(),
            squash_uid: self.squash_to_uid.or(root),
            squash_gid: self.squash_to_gid.or(root),
            overflow_uid: overflow.0,
            overflow_gid: overflow.1,
        }
    }

    /// The effective read-only flag: explicit `ro`, or no upper layer.
    pub fn read_only(&self) -> bool {
        let explicit = self.flags.iter().rev().find_map(|f| match f {
            Flag::ReadOnly(ro) => Some(*ro),
            _ => None,
        });
        explicit.unwrap_or(false) || self.upperdir.is_none()
    }
}

/// The fuse-overlayfs-style command line: `[SOURCE] MOUNTPOINT -o OPTS [-f] [-d]`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CompatArgs {
    pub source: Option<String>,
    pub mountpoint: String,
    pub options: Vec<String>,
    pub foreground: bool,
    pub debug: bool,
}

/// What the compat command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compat {
    Mount(CompatArgs),
    Help,
    Version,
}

/// Parses the compat command line (without the program name).
pub fn parse_compat(args: &[String]) -> Result<Compat, String> {
    let mut positional = Vec::new();
    let mut out = CompatArgs::default();
    let mut i = 0;
    let mut only_positional = false;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if only_positional || !a.starts_with('-') || a == "-" {
            positional.push(a.clone());
            continue;
        }
        match a.as_str() {
            "--" => only_positional = true,
            "-h" | "--help" => return Ok(Compat::Help),
            "-V" | "--version" => return Ok(Compat::Version),
            "-f" => out.foreground = true,
            "-d" | "--debug" => {
                out.debug = true;
                out.foreground = true;
            }
            // Single-threaded operation: accepted, layerfs decides its threads.
            "-s" => {}
            "-o" => {
                let v = args
                    .get(i)
                    .ok_or_else(|| "option -o needs a value".to_string())?;
                out.options.push(v.clone());
                i += 1;
            }
            s if s.starts_with("-o") => out.options.push(s[2..].to_string()),
            s => return Err(format!("unknown argument '{s}' (see --help)")),
        }
    }
    match positional.len() {
        1 => out.mountpoint = positional.remove(0),
        2 => {
            out.mountpoint = positional.remove(1);
            out.source = Some(positional.remove(0));
        }
        0 => return Err("missing MOUNTPOINT (see --help)".into()),
        _ => {
            return Err(format!(
                "too many arguments: {} (expected [SOURCE] MOUNTPOINT)",
                positional.join(" ")
            ));
        }
    }
    Ok(Compat::Mount(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn split_table() {
        let cases: &[(&str, &[&str])] = &[
            ("a,b=c", &["a", "b=c"]),
            ("a\\,b,c", &["a,b", "c"]),
            ("lowerdir=a\\:b:c", &["lowerdir=a\\:b:c"]),
            (",,x,", &["x"]),
            (
                "context=\"system_u:object_r:container_file_t:s0:c1,c2\",ro",
                &[
                    "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
                    "ro",
                ],
            ),
        ];
        for (input, want) in cases {
            assert_eq!(split_options(input), s(want), "{input}");
        }
        assert_eq!(split_lowerdir("a\\:b:c"), s(&["a:b", "c"]));
        assert_eq!(split_lowerdir("/x\\\\y:z"), s(&["/x\\y", "z"]));
    }

    #[test]
    fn writeback_option() {
        let mut o = MountOptions::default();
        assert_eq!(o.writeback, None);
        for (v, want) in [("on", true), ("1", true), ("off", false), ("0", false)] {
            o.apply(&format!("writeback={v}")).unwrap();
            assert_eq!(o.writeback, Some(want), "writeback={v}");
        }
        assert!(matches!(
            o.apply("writeback=maybe"),
            Err(OptionError::BadValue { .. })
        ));
    }

    #[test]
    fn count_options() {
        let mut o = MountOptions::default();
        o.apply("threads=3").unwrap();
        assert_eq!(o.threads, Some(3));
        for bad in ["threads=0", "threads=257", "threads=x"] {
            assert!(
                matches!(
                    MountOptions::default().apply(bad),
                    Err(OptionError::BadValue { .. })
                ),
                "{bad}"
            );
        }
        let default = crate::fuse::DEFAULT_URING_THREADS;
        for (v, want) in [
            ("on", default),
            ("auto", default),
            ("off", 0),
            ("0", 0),
            ("2", 2),
        ] {
            let mut o = MountOptions::default();
            o.apply(&format!("uring={v}")).unwrap();
            assert_eq!(o.uring, Some(want), "uring={v}");
        }
        for v in ["9", "-1", "yes", ""] {
            assert!(
                matches!(
                    MountOptions::default().apply(&format!("uring={v}")),
                    Err(OptionError::BadValue { .. })
                ),
                "uring={v}"
            );
        }
    }

    #[test]
    fn options_table() {
        let mut o = MountOptions::default();
        o.apply("rw,lowerdir=/a:/b,upperdir=/u,workdir=/w,dev,suid")
            .unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert!(!o.read_only());
        assert!(o.flags.contains(&Flag::Dev(true)));

        let bad: &[(&str, OptionError)] = &[
            ("bogus=1", OptionError::Unknown("bogus=1".into())),
            ("frobnicate", OptionError::Unknown("frobnicate".into())),
            (
                "plugins=/x.so",
                OptionError::NotImplemented("plugins".into()),
            ),
            ("lowerdir=/a::/b", OptionError::EmptyLowerdir),
            (
                "whiteout=x",
                OptionError::BadValue {
                    option: "whiteout".into(),
                    value: "x".into(),
                    expected: "auto, chardev or file",
                },
            ),
        ];
        for (input, want) in bad {
            assert_eq!(
                MountOptions::default().apply(input).unwrap_err(),
                *want,
                "{input}"
            );
        }
        let mut o = MountOptions::default();
        o.apply("lowerdir=/a,trace=/tmp/t\\,x.jsonl").unwrap();
        assert_eq!(o.trace, Some(PathBuf::from("/tmp/t,x.jsonl")));
        assert!(MountOptions::default().apply("trace=").is_err());
        assert!(MountOptions::default().apply("trace").is_err());
        let mut o = MountOptions::default();
        o.apply("lowerdir=/a,fsync=0,relatime,noatime").unwrap();
        assert!(o.volatile);
        assert!(o.read_only());
        let mut o = MountOptions::default();
        assert_eq!(o.max_inodes, None);
        o.apply("lowerdir=/a,max_inodes=1000").unwrap();
        assert_eq!(o.max_inodes, Some(1000));
        o.apply("max_inodes=0").unwrap();
        assert_eq!(o.max_inodes, Some(0));
        for bad in [
            "max_inodes=",
            "max_inodes=-1",
            "max_inodes=1k",
            "max_inodes",
        ] {
            assert!(MountOptions::default().apply(bad).is_err(), "{bad}");
        }
    }

    /// Kernel overlayfs's options, so that one option string serves both.
    #[test]
    fn drop_in_and_kernel_overlay_options() {
        let o = |s: &str| {
            let mut o = MountOptions::default();
            o.apply(s).map(|()| o)
        };
        let d = MountOptions::default();
        assert_eq!(d.redirect_dir, RedirectDir::On);
        assert_eq!(d.metacopy, Metacopy::On);
        assert_eq!(d.xattrs, XattrSupport::On);
        assert_eq!(d.dir_nlink, DirNlink::Counted);
        for (v, want) in [
            ("on", RedirectDir::On),
            ("follow", RedirectDir::Follow),
            ("off", RedirectDir::Follow),
            ("nofollow", RedirectDir::NoFollow),
        ] {
            assert_eq!(
                o(&format!("redirect_dir={v}")).unwrap().redirect_dir,
                want,
                "{v}"
            );
        }
        assert!(o("redirect_dir=maybe").is_err());
        assert_eq!(o("metacopy=off").unwrap().metacopy, Metacopy::Off);
        assert_eq!(o("metacopy=on").unwrap().metacopy, Metacopy::On);
        assert_eq!(o("noxattrs=1").unwrap().xattrs, XattrSupport::Off);
        assert_eq!(o("noxattrs=0").unwrap().xattrs, XattrSupport::On);
        assert_eq!(o("static_nlink").unwrap().dir_nlink, DirNlink::Static);
        for (v, want) in [
            ("auto", ReaddirPlus::Auto),
            ("on", ReaddirPlus::On),
            ("1", ReaddirPlus::On),
            ("off", ReaddirPlus::Off),
        ] {
            assert_eq!(
                o(&format!("readdirplus={v}")).unwrap().readdirplus,
                Some(want)
            );
        }
        assert!(o("readdirplus=sometimes").is_err());
        assert_eq!(
            o("userxattr").unwrap().xattr_namespace,
            XattrNamespace::User
        );
        let all = o("index=on,xino=auto,uuid=null,nfs_export=off,lowerdir=/a").unwrap();
        assert_eq!(all.lowerdirs, vec![PathBuf::from("/a")]);
        assert!(o("index").is_err(), "index needs a value");
        let c = o("context=\"system_u:object_r:container_file_t:s0:c1,c2\",fscontext=x").unwrap();
        assert_eq!(
            c.kernel,
            s(&[
                "context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
                "fscontext=x"
            ])
        );
    }

    #[test]
    fn mapping_table() {
        let r = |disk, mount, len| IdRange { disk, mount, len };
        let ok: &[(&str, Vec<IdRange>)] = &[
            ("0:1000:1", vec![r(0, 1000, 1)]),
            (
                "0:1000:1:1:100000:65536",
                vec![r(0, 1000, 1), r(1, 100000, 65536)],
            ),
            ("0:0:4294967295", vec![r(0, 0, u32::MAX)]),
        ];
        for (v, want) in ok {
            assert_eq!(
                parse_mapping("uidmapping", v).unwrap().ranges(),
                &want[..],
                "{v}"
            );
        }
        let bad_value = |value: &str| OptionError::BadValue {
            option: "uidmapping".into(),
            value: value.into(),
            expected: "C:H:N[:C:H:N...] with decimal ids (stored id, shown id, count)",
        };
        let bad: &[(&str, OptionError)] = &[
            ("", bad_value("")),
            ("0:1000", bad_value("0:1000")),
            ("0:1000:1:2", bad_value("0:1000:1:2")),
            ("0:x:1", bad_value("x")),
            ("0:-1:1", bad_value("-1")),
            ("0:+1:1", bad_value("+1")),
            ("0:1:4294967296", bad_value("4294967296")),
            (
                "0:1:0",
                OptionError::BadMapping {
                    option: "uidmapping".into(),
                    value: "0:1:0".into(),
                    reason: "range 0:1:0 has length 0".into(),
                },
            ),
            (
                "0:100:10:5:200:1",
                OptionError::BadMapping {
                    option: "uidmapping".into(),
                    value: "0:100:10:5:200:1".into(),
                    reason: "ranges 0:100:10 and 5:200:1 overlap".into(),
                },
            ),
        ];
        for (v, want) in bad {
            assert_eq!(parse_mapping("uidmapping", v).unwrap_err(), *want, "{v}");
        }
        // Through -o, the error names the option and the bad value.
        let e = MountOptions::default()
            .apply("gidmapping=0:1:1:0:2:1")
            .unwrap_err();
        assert!(e.to_string().contains("'gidmapping'"), "{e}");
        assert!(e.to_string().contains("'0:1:1:0:2:1'"), "{e}");

        let mut o = MountOptions::default();
        o.apply("lowerdir=/a,uidmapping=0:1000:1,gidmapping=0:2000:1,squash_to_gid=7")
            .unwrap();
        let m = o.idmap((65534, 65533));
        assert_eq!((m.uid_out(0), m.gid_out(0), m.uid_out(5)), (1000, 7, 65534));
        assert_eq!((m.uid_in(1000), m.gid_in(2000), m.gid_in(1)), (0, 0, 65533));
        let mut o = MountOptions::default();
        o.apply("squash_to_root,squash_to_uid=5").unwrap();
        let m = o.idmap((65534, 65534));
        assert_eq!((m.uid_out(9), m.gid_out(9)), (5, 0));
        assert!(MountOptions::default().idmap((1, 1)).is_identity());
        let bad_ids: &[(&str, &str)] = &[
            ("squash_to_uid=", ""),
            ("squash_to_uid=-1", "-1"),
            ("squash_to_gid=root", "root"),
        ];
        for (opt, value) in bad_ids {
            let (option, _) = opt.split_once('=').unwrap();
            assert_eq!(
                MountOptions::default().apply(opt).unwrap_err(),
                OptionError::BadValue {
                    option: option.into(),
                    value: value.to_string(),
                    expected: "a decimal id",
                },
                "{opt}"
            );
        }
        assert!(MountOptions::default().apply("uidmapping").is_err());
        assert!(MountOptions::default().apply("squash_to_root=1").is_err());
    }

    #[test]
    fn compat_table() {
        let m = |src: Option<&str>, mnt: &str, opts: &[&str], fg: bool| {
            Compat::Mount(CompatArgs {
                source: src.map(String::from),
                mountpoint: mnt.into(),
                options: s(opts),
                foreground: fg,
                debug: false,
            })
        };
        let cases: Vec<(Vec<&str>, Compat)> = vec![
            (
                vec!["-o", "lowerdir=/a", "/m"],
                m(None, "/m", &["lowerdir=/a"], false),
            ),
            (
                vec!["layerfs", "/m", "-o", "rw,lowerdir=/a,dev,suid"],
                m(Some("layerfs"), "/m", &["rw,lowerdir=/a,dev,suid"], false),
            ),
            (
                vec!["/m", "-olowerdir=/a", "-f"],
                m(None, "/m", &["lowerdir=/a"], true),
            ),
            (vec!["--help"], Compat::Help),
            (vec!["-V"], Compat::Version),
        ];
        for (args, want) in cases {
            assert_eq!(parse_compat(&s(&args)).unwrap(), want, "{args:?}");
        }
        assert!(parse_compat(&s(&["-x", "/m"])).is_err());
        assert!(parse_compat(&s(&["-o"])).is_err());
        assert!(parse_compat(&s(&["a", "b", "c"])).is_err());
        assert!(parse_compat(&s(&[])).is_err());
    }
}
