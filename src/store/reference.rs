//! Image references as users type them (`busybox`, `busybox:1.36`,
//! `registry:5000/team/app:v1`, an image ID or its prefix), parsed without
//! any I/O. Resolving a reference against the store is in [`super::Store`].
//!
//! Normalization follows docker's display: a missing tag is `latest`, and
//! `docker.io/library/` and `docker.io/` prefixes are dropped, so that
//! `docker.io/library/busybox:latest` and `busybox` name the same image.

use std::fmt;

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    Empty,
    /// `name@sha256:...`: digests of manifests are not references here.
    DigestReference(String),
    BadName(String),
    BadTag(String),
}

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReferenceError::Empty => write!(f, "empty image reference"),
            ReferenceError::DigestReference(s) => {
                write!(
                    f,
                    "'{s}': references by manifest digest are not supported; use NAME[:TAG] or an image ID"
                )
            }
            ReferenceError::BadName(s) => write!(
                f,
                "invalid repository name in '{s}': use lowercase letters, digits, '.', '_', '-' and '/'"
            ),
            ReferenceError::BadTag(s) => write!(
                f,
                "invalid tag in '{s}': use up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
            ),
        }
    }
}

impl std::error::Error for ReferenceError {}

/// A repository and tag, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    pub repo: String,
    pub tag: String,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.repo, self.tag)
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !t.starts_with(['.', '-'])
}

fn valid_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-'
        })
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

/// A registry host may carry a port and uppercase letters (`Localhost:5000`).
fn valid_host(c: &str) -> bool {
    let (host, port) = match c.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (c, None),
    };
    host.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl Reference {
    /// Parses `[HOST[:PORT]/]PATH[:TAG]`.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.contains('@') {
            return Err(ReferenceError::DigestReference(s.into()));
        }
        // The tag is after the last ':' that follows the last '/'; a ':'
        // before a '/' is a registry port.
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, "latest"),
        };
        if !valid_tag(tag) {
            return Err(ReferenceError::BadTag(s.into()));
        }
        let parts: Vec<&str> = name.split('/').collect();
        let host_like = parts.len() > 1
            && (parts[0].contains(['.', ':'])
                || parts[0] == "localhost"
                || parts[0].bytes().any(|b| b.is_ascii_uppercase()));
        let ok = parts.iter().enumerate().all(|(i, c)| {
            if i == 0 && host_like {
                valid_host(c)
            } else {
                valid_component(c)
            }
        });
        if !ok {
            return Err(ReferenceError::BadName(s.into()));
        }
        let repo = name
            .strip_prefix("docker.io/library/")
            .or_else(|| name.strip_prefix("index.docker.io/library/"))
            .or_else(|| name.strip_prefix("docker.io/"))
            .or_else(|| name.strip_prefix("index.docker.io/"))
            .unwrap_or(name);
        Ok(Reference {
            repo: repo.into(),
            tag: tag.into(),
        })
    }
}

/// What a command argument naming an image can be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// A name; `id_prefix` is set when the text could also be an ID prefix
    /// (docker tries the name first, then the ID).
    Name {
        reference: Reference,
        id_prefix: Option<String>,
    },
    /// `sha256:HEX...` or a hex prefix that cannot be a name.
    Id(String),
}

/// Hex digits that may abbreviate an image ID (docker needs at least one;
/// we ask for 4 so that short names like `abc` stay names only).
fn id_prefix(s: &str) -> Option<String> {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    (hex.len() >= 4
        && hex.len() <= 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then(|| hex.to_string())
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.starts_with("sha256:") {
            return id_prefix(s)
                .map(ImageRef::Id)
                .ok_or_else(|| ReferenceError::BadName(s.into()));
        }
        match Reference::parse(s) {
            Ok(reference) => Ok(ImageRef::Name {
                reference,
                id_prefix: id_prefix(s),
            }),
            Err(e) => id_prefix(s).map(ImageRef::Id).ok_or(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let cases: &[(&str, Option<(&str, &str)>)] = &[
            ("busybox", Some(("busybox", "latest"))),
            ("busybox:1.36", Some(("busybox", "1.36"))),
            ("docker.io/library/busybox:1", Some(("busybox", "1"))),
            ("docker.io/team/app", Some(("team/app", "latest"))),
            ("localhost:5000/app:v1", Some(("localhost:5000/app", "v1"))),
            ("localhost:5000/app", Some(("localhost:5000/app", "latest"))),
            ("quay.io/a/b/c:x_y", Some(("quay.io/a/b/c", "x_y"))),
            ("Busybox", None),
            ("busybox:", None),
            ("busybox:-x", None),
            ("a//b", None),
            ("../etc", None),
            ("busybox@sha256:abc", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = Reference::parse(input).ok().map(|r| (r.repo, r.tag));
            let want = want.map(|(r, t)| (r.to_string(), t.to_string()));
            assert_eq!(got, want, "{input}");
        }
    }

    #[test]
    fn image_ref_table() {
        let name = |r: &str, t: &str, id: Option<&str>| ImageRef::Name {
            reference: Reference {
                repo: r.into(),
                tag: t.into(),
            },
            id_prefix: id.map(String::from),
        };
        let cases: Vec<(&str, Option<ImageRef>)> = vec![
            ("busybox", Some(name("busybox", "latest", None))),
            ("abc", Some(name("abc", "latest", None))),
            ("abcd12", Some(name("abcd12", "latest", Some("abcd12")))),
            ("sha256:abcd", Some(ImageRef::Id("abcd".into()))),
            ("sha256:xyz", None),
            ("ABCD", None),
        ];
        for (input, want) in cases {
            assert_eq!(ImageRef::parse(input).ok(), want, "{input}");
        }
    }
}
