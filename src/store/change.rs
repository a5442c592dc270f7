//! The `-c INSTRUCTION` changes of `layerfs commit`, as `docker commit
//! --change` takes them: parsing a Dockerfile-like line and applying it to
//! the `config` object of an image config.
//!
//! Owns: the syntax of CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL and EXPOSE
//! (JSON and shell forms, quoting) and how each one edits the config. Does
//! not own: reading or writing configs (see [`super::commit`]). No I/O.
//!
//! Invariants: [`parse`] either returns an instruction that [`apply`]
//! cannot fail on, or an error that names the instruction and the reason in
//! one line. The shell form of CMD and ENTRYPOINT becomes
//! `["/bin/sh", "-c", TEXT]`, as in a Dockerfile. Changes apply in the
//! order given; each edits only its own field (ENTRYPOINT keeps Cmd, as
//! `docker commit --change` does).

use std::fmt;

use serde_json::{Map, Value};

/// Why a `-c` instruction was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeError {
    Empty,
    /// An instruction docker commit does not apply (or layerfs does not).
    Unsupported {
        instruction: String,
    },
    /// The instruction is known, its arguments are not valid.
    Invalid {
        instruction: String,
        reason: String,
    },
}

impl fmt::Display for ChangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Empty => write!(f, "invalid -c instruction: it is empty"),
            ChangeError::Unsupported { instruction } => write!(
                f,
                "invalid -c instruction '{instruction}': only CMD, ENTRYPOINT, ENV, WORKDIR, USER, LABEL and EXPOSE are supported"
            ),
            ChangeError::Invalid {
                instruction,
                reason,
            } => write!(f, "invalid -c instruction '{instruction}': {reason}"),
        }
    }
}

impl std::error::Error for ChangeError {}

/// One parsed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    /// `KEY=VALUE` pairs in order.
    Env(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Label(Vec<(String, String)>),
    /// Normalized `PORT/PROTO` keys.
    Expose(Vec<String>),
}

fn invalid(text: &str, reason: impl Into<String>) -> ChangeError {
    ChangeError::Invalid {
        instruction: text.trim().to_string(),
        reason: reason.into(),
    }
}

/// Parses one instruction (`CMD ["/app/run"]`, `ENV A=1 B="x y"`, ...).
pub fn parse(text: &str) -> Result<Change, ChangeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(ChangeError::Empty);
    }
    let (word, rest) = match t.find(char::is_whitespace) {
        Some(i) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let upper = word.to_ascii_uppercase();
    let known = matches!(
        upper.as_str(),
        "CMD" | "ENTRYPOINT" | "ENV" | "WORKDIR" | "USER" | "LABEL" | "EXPOSE"
    );
    if !known {
        return Err(ChangeError::Unsupported {
            instruction: word.to_string(),
        });
    }
    if rest.is_empty() {
        return Err(invalid(t, format!("{upper} needs an argument")));
    }
    match upper.as_str() {
        "CMD" => Ok(Change::Cmd(command_form(t, rest)?)),
        "ENTRYPOINT" => Ok(Change::Entrypoint(command_form(t, rest)?)),
        "ENV" => Ok(Change::Env(pairs(t, rest, true)?)),
        "LABEL" => Ok(Change::Label(pairs(t, rest, false)?)),
        "WORKDIR" => Ok(Change::Workdir(single_word(t, rest)?)),
        "USER" => Ok(Change::User(single_word(t, rest)?)),
        _ => Ok(Change::Expose(ports(t, rest)?)),
    }
}

/// JSON form (`["a","b"]`) or shell form (`a b` → `/bin/sh -c "a b"`).
fn command_form(t: &str, rest: &str) -> Result<Vec<String>, ChangeError> {
    if rest.starts_with('[') {
        let v: Vec<String> = serde_json::from_str(rest)
            .map_err(|e| invalid(t, format!("not a JSON array of strings: {e}")))?;
        return Ok(v);
    }
    Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
}

/// Splits shell-like words: whitespace separates, `"..."` and `'...'`
/// quote, `\` escapes (outside single quotes).
fn words(t: &str, s: &str) -> Result<Vec<String>, ChangeError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err(invalid(t, "a trailing backslash")),
                }
            }
            '"' | '\'' => {
                in_word = true;
                let q = c;
                loop {
                    match chars.next() {
                        Some(n) if n == q => break,
                        Some('\\') if q == '"' => match chars.next() {
                            Some(n) => cur.push(n),
                            None => return Err(invalid(t, "an unterminated quote")),
                        },
                        Some(n) => cur.push(n),
                        None => return Err(invalid(t, "an unterminated quote")),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `K=V K2="v 2"`, or (ENV only, legacy) `K the rest of the line`.
fn pairs(t: &str, rest: &str, legacy: bool) -> Result<Vec<(String, String)>, ChangeError> {
    let first = rest.split_whitespace().next().unwrap_or_default();
    if legacy && !first.contains('=') {
        let value = rest[first.len()..].trim();
        if value.is_empty() {
            return Err(invalid(t, format!("{first} has no value")));
        }
        let v = words(t, value)?.join(" ");
        return Ok(vec![(first.to_string(), v)]);
    }
    let mut out = Vec::new();
    for w in words(t, rest)? {
        let Some((k, v)) = w.split_once('=') else {
            return Err(invalid(t, format!("'{w}' is not KEY=VALUE")));
        };
        if k.is_empty() {
            return Err(invalid(t, format!("'{w}' has an empty key")));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn single_word(t: &str, rest: &str) -> Result<String, ChangeError> {
    let w = words(t, rest)?;
    match w.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        _ => Err(invalid(t, "expected exactly one argument")),
    }
}

/// `80`, `80/tcp`, `53/udp`, `8000-8002/tcp`.
fn ports(t: &str, rest: &str) -> Result<Vec<String>, ChangeError> {
    let mut out = Vec::new();
    for w in words(t, rest)? {
        let (range, proto) = match w.split_once('/') {
            Some((r, p)) => (r, p.to_ascii_lowercase()),
            None => (w.as_str(), "tcp".to_string()),
        };
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(invalid(
                t,
                format!("'{w}': protocol must be tcp, udp or sctp"),
            ));
        }
        let port = |s: &str| {
            s.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid(t, format!("'{w}' is not a port (1-65535)")))
        };
        let (lo, hi) = match range.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(range)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(invalid(t, format!("'{w}': empty port range")));
        }
        for p in lo..=hi {
            out.push(format!("{p}/{proto}"));
        }
    }
    Ok(out)
}

/// Applies a change to an image config's `config` object.
pub fn apply(config: &mut Map<String, Value>, change: &Change) {
    let strings = |v: &[String]| Value::Array(v.iter().cloned().map(Value::String).collect());
    match change {
        Change::Cmd(v) => {
            config.insert("Cmd".into(), strings(v));
        }
        Change::Entrypoint(v) => {
            config.insert("Entrypoint".into(), strings(v));
        }
        Change::Env(pairs) => {
            let mut env: Vec<String> = config
                .get("Env")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            for (k, v) in pairs {
                let item = format!("{k}={v}");
                let prefix = format!("{k}=");
                match env.iter_mut().find(|e| e.starts_with(&prefix) || *e == k) {
                    Some(slot) => *slot = item,
                    None => env.push(item),
                }
            }
            config.insert("Env".into(), strings(&env));
        }
        Change::Workdir(w) => {
            let cur = config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("/");
            let new = if w.starts_with('/') {
                w.clone()
            } else {
                format!("{}/{w}", cur.trim_end_matches('/'))
            };
            config.insert("WorkingDir".into(), Value::String(new));
        }
        Change::User(u) => {
            config.insert("User".into(), Value::String(u.clone()));
        }
        Change::Label(pairs) => {
            let labels = config
                .entry("Labels")
                .or_insert_with(|| Value::Object(Map::new()));
            if !labels.is_object() {
                *labels = Value::Object(Map::new());
            }
            if let Value::Object(m) = labels {
                for (k, v) in pairs {
                    m.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        Change::Expose(ports) => {
            let e = config
                .entry("ExposedPorts")
                .or_insert_with(|| Value::Object(Map::new()));
            if !e.is_object() {
                *e = Value::Object(Map::new());
            }
            if let Value::Object(m) = e {
                for p in ports {
                    m.insert(p.clone(), Value::Object(Map::new()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn kv(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parse_table() {
        let cases: Vec<(&str, Change)> = vec![
            (r#"CMD ["/app/run"]"#, Change::Cmd(s(&["/app/run"]))),
            (
                r#"cmd ["/app/run", "--port", "80"]"#,
                Change::Cmd(s(&["/app/run", "--port", "80"])),
            ),
            (
                "CMD echo hello world",
                Change::Cmd(s(&["/bin/sh", "-c", "echo hello world"])),
            ),
            (
                r#"ENTRYPOINT ["/bin/sh","-c"]"#,
                Change::Entrypoint(s(&["/bin/sh", "-c"])),
            ),
            (
                "ENTRYPOINT /app/run",
                Change::Entrypoint(s(&["/bin/sh", "-c", "/app/run"])),
            ),
            ("ENV A=1", Change::Env(kv(&[("A", "1")]))),
            (
                r#"ENV A=1 B="two words" C='x y'"#,
                Change::Env(kv(&[("A", "1"), ("B", "two words"), ("C", "x y")])),
            ),
            (
                "ENV PATH /usr/bin:/bin",
                Change::Env(kv(&[("PATH", "/usr/bin:/bin")])),
            ),
            (
                "ENV MSG hello  world",
                Change::Env(kv(&[("MSG", "hello world")])),
            ),
            ("ENV EMPTY=", Change::Env(kv(&[("EMPTY", "")]))),
            ("WORKDIR /app", Change::Workdir("/app".into())),
            ("USER 1000:1000", Change::User("1000:1000".into())),
            ("USER nobody", Change::User("nobody".into())),
            (
                r#"LABEL version=1.0 "com.example.x"="a b""#,
                Change::Label(kv(&[("version", "1.0"), ("com.example.x", "a b")])),
            ),
            ("EXPOSE 80", Change::Expose(s(&["80/tcp"]))),
            (
                "EXPOSE 53/udp 8000-8002",
                Change::Expose(s(&["53/udp", "8000/tcp", "8001/tcp", "8002/tcp"])),
            ),
            ("  expose 443/TCP ", Change::Expose(s(&["443/tcp"]))),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn parse_errors_table() {
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("   ", "empty"),
            ("RUN echo hi", "only CMD, ENTRYPOINT"),
            ("FROM busybox", "only CMD"),
            ("CMD", "needs an argument"),
            (r#"CMD ["/app/run""#, "not a JSON array"),
            (r#"CMD [1, 2]"#, "not a JSON array"),
            ("ENV", "needs an argument"),
            ("ENV A", "has no value"),
            ("ENV A=1 B", "not KEY=VALUE"),
            ("ENV =1", "empty key"),
            (r#"ENV A="unterminated"#, "unterminated quote"),
            ("LABEL justakey", "not KEY=VALUE"),
            ("WORKDIR /a /b", "exactly one argument"),
            ("USER a b", "exactly one argument"),
            ("EXPOSE http", "not a port"),
            ("EXPOSE 0", "not a port"),
            ("EXPOSE 70000", "not a port"),
            ("EXPOSE 80/icmp", "protocol"),
            ("EXPOSE 90-80", "empty port range"),
        ];
        for (text, needle) in cases {
            let e = parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: {e}");
        }
    }

    #[test]
    fn apply_table() {
        let mut c: Map<String, Value> = serde_json::from_str(
            r#"{"Env":["PATH=/bin","A=0"],"Cmd":["sh"],"WorkingDir":"/srv","Labels":null}"#,
        )
        .unwrap();
        for t in [
            r#"CMD ["/app/run"]"#,
            "ENV A=1 B=2",
            "WORKDIR app",
            "USER 1000",
            "LABEL k=v",
            "EXPOSE 80 53/udp",
            "ENTRYPOINT /e",
        ] {
            apply(&mut c, &parse(t).unwrap());
        }
        let want: Value = serde_json::json!({
            "Env": ["PATH=/bin", "A=1", "B=2"],
            "Cmd": ["/app/run"],
            "Entrypoint": ["/bin/sh", "-c", "/e"],
            "WorkingDir": "/srv/app",
            "User": "1000",
            "Labels": {"k": "v"},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        });
        assert_eq!(Value::Object(c), want);
    }
}
