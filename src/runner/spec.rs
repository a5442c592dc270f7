//! What to run, computed from the image config and the command line: the
//! command, its environment, its working directory and its user.
//!
//! Pure functions only (no I/O): the caller reads the image config and the
//! container's `/etc/passwd` and `/etc/group` and passes their contents in.
//! Table-tested below.

use std::fmt;

use serde::Deserialize;

use crate::sys::ns::WaitStatus;

/// `PATH` when the image sets none (docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status for an error of the runner itself.
pub const EXIT_RUNNER: i32 = 125;
/// Exit status for a command that exists but cannot be executed.
pub const EXIT_CANNOT_EXEC: i32 = 126;
/// Exit status for a command that is not found.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Why a run could not be specified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// The image config is not valid JSON of the expected shape.
    Config(String),
    /// Neither the command line nor the image names a command.
    NoCommand,
    /// `-e` with an empty name or a name containing `=` first.
    BadEnv(String),
    /// `-w` or the image's WorkingDir is not absolute.
    RelativeWorkdir(String),
    /// `-u` text that is not `USER[:GROUP]`.
    BadUser(String),
    UnknownUser(String),
    UnknownGroup(String),
    /// `--hostname` that is not a valid host name.
    BadHostname(String),
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Config(e) => write!(f, "invalid image config: {e}"),
            SpecError::NoCommand => write!(
                f,
                "no command specified: the image has no Entrypoint or Cmd, name one after the image"
            ),
            SpecError::BadEnv(s) => {
                write!(f, "invalid environment variable '{s}' (want KEY=VALUE)")
            }
            SpecError::RelativeWorkdir(s) => {
                write!(f, "the working directory '{s}' is not an absolute path")
            }
            SpecError::BadUser(s) => write!(f, "invalid user '{s}' (want USER[:GROUP])"),
            SpecError::UnknownUser(s) => {
                write!(
                    f,
                    "unable to find user {s}: no matching entries in /etc/passwd"
                )
            }
            SpecError::UnknownGroup(s) => {
                write!(
                    f,
                    "unable to find group {s}: no matching entries in /etc/group"
                )
            }
            SpecError::BadHostname(s) => write!(f, "invalid hostname '{s}'"),
        }
    }
}

impl std::error::Error for SpecError {}

/// The `config` object of an OCI image config: what docker uses to run it.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    config: Option<RunConfig>,
}

/// Reads the `config` object of an image config (missing: all defaults).
pub fn parse_run_config(raw: &[u8]) -> Result<RunConfig, SpecError> {
    let doc: ConfigDoc =
        serde_json::from_slice(raw).map_err(|e| SpecError::Config(e.to_string()))?;
    Ok(doc.config.unwrap_or_default())
}

/// Entrypoint + (the command line's args, else the image's Cmd).
pub fn command(cfg: &RunConfig, args: &[String]) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = cfg.entrypoint.clone().unwrap_or_default();
    if args.is_empty() {
        out.extend(cfg.cmd.clone().unwrap_or_default());
    } else {
        out.extend(args.iter().cloned());
    }
    if out.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(out)
}

/// The working directory: `-w`, else the image's, else `/`.
pub fn workdir(cfg: &RunConfig, flag: Option<&str>) -> Result<String, SpecError> {
    let w = flag
        .or(cfg.working_dir.as_deref())
        .filter(|w| !w.is_empty())
        .unwrap_or("/");
    if !w.starts_with('/') {
        return Err(SpecError::RelativeWorkdir(w.into()));
    }
    Ok(w.to_string())
}

/// Checks a host name (RFC 1123 labels, at most 64 bytes as the kernel wants).
pub fn check_hostname(h: &str) -> Result<(), SpecError> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadHostname(h.into()))
    }
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map_or(kv, |(k, _)| k)
}

fn set_env(env: &mut Vec<String>, kv: String) {
    let key = env_key(&kv).to_string();
    env.retain(|e| env_key(e) != key);
    env.push(kv);
}

/// Inputs of [`environment`] besides the image's Env.
pub struct EnvInputs<'a> {
    /// `-e` flags in order: `KEY=VALUE`, or `KEY` to copy the host's value.
    pub flags: &'a [String],
    pub hostname: &'a str,
    /// The user's home directory (None: added later, from the container's
    /// /etc/passwd, once it is mounted).
    pub home: Option<&'a str>,
    pub tty: bool,
}

/// The command's environment: the image's Env, then `-e` (later wins), then
/// defaults for PATH, HOSTNAME, HOME and (with a terminal) TERM.
pub fn environment(
    image_env: &[String],
    inputs: &EnvInputs<'_>,
    host: impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, SpecError> {
    let mut env: Vec<String> = Vec::new();
    for kv in image_env {
        if kv.contains('=') && !kv.starts_with('=') {
            set_env(&mut env, kv.clone());
        }
    }
    for f in inputs.flags {
        match f.split_once('=') {
            Some((k, _)) if !k.is_empty() => set_env(&mut env, f.clone()),
            Some(_) => return Err(SpecError::BadEnv(f.clone())),
            None if f.is_empty() => return Err(SpecError::BadEnv(f.clone())),
            None => {
                if let Some(v) = host(f) {
                    set_env(&mut env, format!("{f}={v}"));
                }
            }
        }
    }
    let has = |env: &Vec<String>, k: &str| env.iter().any(|e| env_key(e) == k);
    let mut defaults = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", inputs.hostname),
    ];
    if let Some(h) = inputs.home {
        defaults.push(format!("HOME={h}"));
    }
    if inputs.tty {
        defaults.push("TERM=xterm".into());
    }
    for d in defaults {
        if !has(&env, env_key(&d)) {
            env.push(d);
        }
    }
    Ok(env)
}

/// The value of `key` in an environment list.
pub fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .filter_map(|e| e.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// The paths to try for `argv0`: itself when it has a `/`, else each
/// directory of `path` (empty entries mean the current directory).
pub fn exec_candidates(argv0: &str, path: &str) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_string()];
    }
    path.split(':')
        .map(|d| {
            if d.is_empty() {
                format!("./{argv0}")
            } else {
                format!("{}/{argv0}", d.trim_end_matches('/'))
            }
        })
        .collect()
}

/// A `-u` value: a name or a number, for the user and the optional group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Id {
    Name(String),
    Num(u32),
}

impl Id {
    fn parse(s: &str) -> Option<Id> {
        if s.is_empty() || s.contains(['\n', ':']) {
            return None;
        }
        Some(match s.parse::<u32>() {
            Ok(n) => Id::Num(n),
            Err(_) => Id::Name(s.to_string()),
        })
    }
}

/// `USER[:GROUP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub user: Id,
    pub group: Option<Id>,
}

impl UserSpec {
    pub fn parse(s: &str) -> Result<UserSpec, SpecError> {
        let bad = || SpecError::BadUser(s.into());
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (s, None),
        };
        Ok(UserSpec {
            user: Id::parse(u).ok_or_else(bad)?,
            group: g.map(|g| Id::parse(g).ok_or_else(bad)).transpose()?,
        })
    }
}

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from /etc/group), without `gid`.
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 7 {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f[3].split(',').filter(|m| !m.is_empty()).collect(),
        })
    })
}

/// Resolves a user spec (`None`: root) against the contents of the
/// container's /etc/passwd and /etc/group (empty when missing). A numeric
/// user needs no entry; a name must have one.
pub fn resolve_user(spec: Option<&UserSpec>, passwd: &str, group: &str) -> Result<Ids, SpecError> {
    let root = UserSpec {
        user: Id::Num(0),
        group: None,
    };
    let spec = spec.unwrap_or(&root);
    let entry = match &spec.user {
        Id::Name(n) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == n)
                .ok_or_else(|| SpecError::UnknownUser(n.clone()))?,
        ),
        Id::Num(u) => passwd_entries(passwd).find(|e| e.uid == *u),
    };
    let uid = match (&spec.user, &entry) {
        (_, Some(e)) => e.uid,
        (Id::Num(u), None) => *u,
        (Id::Name(n), None) => return Err(SpecError::UnknownUser(n.clone())),
    };
    let gid = match &spec.group {
        Some(Id::Num(g)) => *g,
        Some(Id::Name(n)) => group_entries(group)
            .find(|e| e.name == n)
            .map(|e| e.gid)
            .ok_or_else(|| SpecError::UnknownGroup(n.clone()))?,
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut groups = Vec::new();
    if spec.group.is_none()
        && let Some(e) = &entry
    {
        for g in group_entries(group) {
            if g.members.contains(&e.name) && g.gid != gid && !groups.contains(&g.gid) {
                groups.push(g.gid);
            }
        }
    }
    let home = match &entry {
        Some(e) if !e.home.is_empty() => e.home.to_string(),
        _ if uid == 0 => "/root".to_string(),
        _ => "/".to_string(),
    };
    Ok(Ids {
        uid,
        gid,
        groups,
        home,
    })
}

/// The runner's exit status for how the command ended.
pub fn exit_code(s: WaitStatus) -> i32 {
    match s {
        WaitStatus::Exited(c) => c,
        WaitStatus::Signaled(n) => 128 + n,
    }
}

/// The exit status for an `execve` error: not found or not executable.
pub fn exec_error_code(errno: i32) -> i32 {
    match errno {
        libc::ENOENT | libc::ENOTDIR => EXIT_NOT_FOUND,
        _ => EXIT_CANNOT_EXEC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn run_config_parsing() {
        let raw = br#"{"architecture":"amd64","config":{"Env":["A=1"],"Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/app","User":"app"},"rootfs":{}}"#;
        let c = parse_run_config(raw).unwrap();
        assert_eq!(c.env, Some(s(&["A=1"])));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.cmd, Some(s(&["sh"])));
        assert_eq!(c.working_dir.as_deref(), Some("/app"));
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(parse_run_config(b"{}").unwrap(), RunConfig::default());
        assert!(parse_run_config(b"[").is_err());
    }

    #[test]
    fn command_table() {
        let cfg = |ep: Option<&[&str]>, cmd: Option<&[&str]>| RunConfig {
            entrypoint: ep.map(s),
            cmd: cmd.map(s),
            ..Default::default()
        };
        type Case<'a> = (RunConfig, &'a [&'a str], Result<Vec<String>, SpecError>);
        let cases: &[Case] = &[
            (cfg(None, Some(&["sh"])), &[], Ok(s(&["sh"]))),
            (cfg(None, Some(&["sh"])), &["ls", "/"], Ok(s(&["ls", "/"]))),
            (
                cfg(Some(&["/init", "-v"]), Some(&["serve"])),
                &[],
                Ok(s(&["/init", "-v", "serve"])),
            ),
            (
                cfg(Some(&["/init"]), Some(&["serve"])),
                &["x"],
                Ok(s(&["/init", "x"])),
            ),
            (cfg(None, None), &[], Err(SpecError::NoCommand)),
            (cfg(Some(&[]), Some(&[])), &[], Err(SpecError::NoCommand)),
        ];
        for (c, args, want) in cases {
            assert_eq!(&command(c, &s(args)), want, "{c:?} {args:?}");
        }
    }

    #[test]
    fn workdir_table() {
        let img = RunConfig {
            working_dir: Some("/app".into()),
            ..Default::default()
        };
        assert_eq!(workdir(&img, None).unwrap(), "/app");
        assert_eq!(workdir(&img, Some("/tmp")).unwrap(), "/tmp");
        assert_eq!(workdir(&RunConfig::default(), None).unwrap(), "/");
        assert_eq!(
            workdir(&RunConfig::default(), Some("rel")),
            Err(SpecError::RelativeWorkdir("rel".into()))
        );
    }

    #[test]
    fn environment_merging() {
        let host = |k: &str| (k == "FROM_HOST").then(|| "h".to_string());
        let inputs = |flags: &'static [&'static str], tty| {
            let flags: &'static [String] = Box::leak(s(flags).into_boxed_slice());
            EnvInputs {
                flags,
                hostname: "box",
                home: Some("/root"),
                tty,
            }
        };
        let img = s(&["PATH=/bin", "A=1", "B=2", "junk"]);
        let cases: &[(&[&str], bool, &[&str])] = &[
            (
                &[],
                false,
                &["PATH=/bin", "A=1", "B=2", "HOSTNAME=box", "HOME=/root"],
            ),
            (
                &["A=x", "C=3", "FROM_HOST", "MISSING"],
                false,
                &[
                    "PATH=/bin",
                    "B=2",
                    "A=x",
                    "C=3",
                    "FROM_HOST=h",
                    "HOSTNAME=box",
                    "HOME=/root",
                ],
            ),
            (
                &["HOME=/h", "HOSTNAME=n"],
                true,
                &[
                    "PATH=/bin",
                    "A=1",
                    "B=2",
                    "HOME=/h",
                    "HOSTNAME=n",
                    "TERM=xterm",
                ],
            ),
        ];
        for (flags, tty, want) in cases {
            let got = environment(&img, &inputs(flags, *tty), host).unwrap();
            assert_eq!(got, s(want), "{flags:?}");
        }
        let no_path = environment(&[], &inputs(&[], false), host).unwrap();
        assert_eq!(env_value(&no_path, "PATH"), Some(DEFAULT_PATH));
        assert_eq!(
            environment(&[], &inputs(&["=x"], false), host),
            Err(SpecError::BadEnv("=x".into()))
        );
    }

    #[test]
    fn exec_candidates_table() {
        assert_eq!(exec_candidates("/bin/sh", "/x"), s(&["/bin/sh"]));
        assert_eq!(exec_candidates("./a", "/x"), s(&["./a"]));
        assert_eq!(
            exec_candidates("ls", "/usr/bin:/bin/::"),
            s(&["/usr/bin/ls", "/bin/ls", "./ls", "./ls"])
        );
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                          app:x:1000:1000:App:/home/app:/bin/sh\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,root\nstaff:x:50:app\napp:x:1000:\n";

    #[test]
    fn user_spec_parsing() {
        let cases: &[(&str, Option<UserSpec>)] = &[
            (
                "app",
                Some(UserSpec {
                    user: Id::Name("app".into()),
                    group: None,
                }),
            ),
            (
                "1000:50",
                Some(UserSpec {
                    user: Id::Num(1000),
                    group: Some(Id::Num(50)),
                }),
            ),
            (
                "app:staff",
                Some(UserSpec {
                    user: Id::Name("app".into()),
                    group: Some(Id::Name("staff".into())),
                }),
            ),
            ("", None),
            (":x", None),
            ("a:", None),
            ("a:b:c", None),
        ];
        for (text, want) in cases {
            assert_eq!(UserSpec::parse(text).ok(), *want, "{text}");
        }
    }

    #[test]
    fn user_resolution_table() {
        let ids = |uid, gid, groups: &[u32], home: &str| Ids {
            uid,
            gid,
            groups: groups.to_vec(),
            home: home.into(),
        };
        let cases: &[(Option<&str>, Result<Ids, SpecError>)] = &[
            (None, Ok(ids(0, 0, &[10], "/root"))),
            (Some("app"), Ok(ids(1000, 1000, &[10, 50], "/home/app"))),
            (Some("1000"), Ok(ids(1000, 1000, &[10, 50], "/home/app"))),
            (Some("app:staff"), Ok(ids(1000, 50, &[], "/home/app"))),
            (Some("app:7"), Ok(ids(1000, 7, &[], "/home/app"))),
            (Some("4242"), Ok(ids(4242, 0, &[], "/"))),
            (Some("4242:4242"), Ok(ids(4242, 4242, &[], "/"))),
            (Some("nobody"), Err(SpecError::UnknownUser("nobody".into()))),
            (
                Some("app:nogroup"),
                Err(SpecError::UnknownGroup("nogroup".into())),
            ),
        ];
        for (text, want) in cases {
            let spec = text.map(|t| UserSpec::parse(t).unwrap());
            assert_eq!(
                &resolve_user(spec.as_ref(), PASSWD, GROUP),
                want,
                "{text:?}"
            );
        }
        // No passwd at all: root still works, names do not.
        assert_eq!(resolve_user(None, "", ""), Ok(ids(0, 0, &[], "/root")));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(WaitStatus::Exited(0)), 0);
        assert_eq!(exit_code(WaitStatus::Exited(3)), 3);
        assert_eq!(exit_code(WaitStatus::Signaled(libc::SIGKILL)), 137);
        assert_eq!(exit_code(WaitStatus::Signaled(libc::SIGTERM)), 143);
        assert_eq!(exec_error_code(libc::ENOENT), 127);
        assert_eq!(exec_error_code(libc::ENOTDIR), 127);
        assert_eq!(exec_error_code(libc::EACCES), 126);
        assert_eq!(exec_error_code(libc::ENOEXEC), 126);
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("box").is_ok());
        assert!(check_hostname("a-b.example").is_ok());
        for bad in ["", "-a", "a_b", "a..b", &"x".repeat(65)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }
}
