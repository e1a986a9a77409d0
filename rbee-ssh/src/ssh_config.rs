//! The part of `~/.ssh/config` rbee honours: `Host` blocks with `HostName`, `User`, `Port` and
//! `IdentityFile`, with OpenSSH's rule that the first value obtained wins (IdentityFile
//! accumulates). `Match` blocks and `Include` are not evaluated.

use std::path::{Path, PathBuf};

/// What `~/.ssh/config` says about one host alias.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// `HostName`.
    pub hostname: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `IdentityFile`s, in order, with `~` and `%d`/`%h`/`%u`/`%%` expanded.
    pub identity_files: Vec<PathBuf>,
}

/// A parsed ssh config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshConfig {
    blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    /// `None` for the lines before the first Host (apply to all), and for Match blocks
    /// (`Some(vec![])`, which never matches).
    patterns: Option<Vec<String>>,
    entries: Vec<(String, String)>,
}

impl SshConfig {
    /// Reads a config file; a missing file is an empty config.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Self::parse(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Self {
        let mut blocks = vec![Block { patterns: None, entries: Vec::new() }];
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(|c: char| c.is_whitespace() || c == '=') {
                Some((k, v)) => {
                    (k.to_ascii_lowercase(), v.trim_start_matches(|c: char| c.is_whitespace() || c == '=').trim())
                }
                None => continue,
            };
            let value = value.trim_matches('"').to_owned();
            match key.as_str() {
                "host" => blocks.push(Block {
                    patterns: Some(value.split_whitespace().map(str::to_owned).collect()),
                    entries: Vec::new(),
                }),
                "match" => blocks.push(Block { patterns: Some(Vec::new()), entries: Vec::new() }),
                _ => blocks.last_mut().expect("a block").entries.push((key, value)),
            }
        }
        Self { blocks }
    }

    /// The concrete host aliases of `Host` lines (no wildcards, no negations), in file order.
    pub fn hosts(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for block in &self.blocks {
            for p in block.patterns.iter().flatten() {
                if !p.contains(['*', '?', '!']) && !out.contains(p) {
                    out.push(p.clone());
                }
            }
        }
        out
    }

    /// The settings for `alias`, expanding `~` against `home` and `%u` to `local_user`.
    pub fn lookup(&self, alias: &str, home: &Path, local_user: &str) -> HostSettings {
        let mut s = HostSettings::default();
        for block in &self.blocks {
            let applies = match &block.patterns {
                None => true,
                Some(p) => host_matches(p, alias),
            };
            if !applies {
                continue;
            }
            for (key, value) in &block.entries {
                match key.as_str() {
                    "hostname" if s.hostname.is_none() => s.hostname = Some(value.replace("%h", alias)),
                    "user" if s.user.is_none() => s.user = Some(value.clone()),
                    "port" if s.port.is_none() => s.port = value.parse().ok(),
                    "identityfile" => s.identity_files.push(expand(value, home, alias, local_user)),
                    _ => {}
                }
            }
        }
        s
    }
}

fn expand(value: &str, home: &Path, host: &str, user: &str) -> PathBuf {
    let home_s = home.display().to_string();
    let mut out = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('d') => out.push_str(&home_s),
                Some('h') => out.push_str(host),
                Some('u') => out.push_str(user),
                Some('%') => out.push('%'),
                Some(other) => {
                    out.push('%');
                    out.push(other);
                }
                None => out.push('%'),
            }
        } else {
            out.push(c);
        }
    }
    match out.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None => PathBuf::from(out),
    }
}

/// OpenSSH pattern list semantics: any positive match and no negated match.
fn host_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), host.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), host.as_bytes()) {
            matched = true;
        }
    }
    matched
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
# comment
Host gpu-*  !gpu-9
    HostName %h.lab.example
    User vince
    IdentityFile ~/.ssh/lab_key

Host gpu-1
    Port 2222
    User ignored-because-first-wins

Host=box
  HostName=10.0.0.5
  Port=2200

Match host foo
  User never

Host *
    IdentityFile %d/.ssh/fallback_%u
    User default-user
";

    fn lookup(alias: &str) -> HostSettings {
        SshConfig::parse(CONFIG).lookup(alias, Path::new("/home/me"), "me")
    }

    #[test]
    fn first_value_wins_and_identity_files_accumulate() {
        let s = lookup("gpu-1");
        assert_eq!(s.hostname.as_deref(), Some("gpu-1.lab.example"));
        assert_eq!(s.user.as_deref(), Some("vince"));
        assert_eq!(s.port, Some(2222));
        assert_eq!(
            s.identity_files,
            [PathBuf::from("/home/me/.ssh/lab_key"), PathBuf::from("/home/me/.ssh/fallback_me")]
        );
    }

    #[test]
    fn negation_and_equals_syntax() {
        let s = lookup("gpu-9");
        assert_eq!((s.hostname, s.user.as_deref()), (None, Some("default-user")));
        let b = lookup("box");
        assert_eq!((b.hostname.as_deref(), b.port), (Some("10.0.0.5"), Some(2200)));
    }

    #[test]
    fn match_blocks_are_not_applied() {
        assert_eq!(lookup("foo").user.as_deref(), Some("default-user"));
    }
}
