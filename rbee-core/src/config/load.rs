//! Reading and validating the two config files.
//!
//! ```text
//! rbee.conf ─┐  toml + deny_unknown_fields   validate (all problems at once)
//!            ├──────────────────────────────▶ ─────────────────────────────▶ Config
//! hives.conf ┘  (a syntax error stops here)   every Diagnostic has file:line:col
//! ```
//!
//! Each `[[deployment]]` table is read on its own: an unknown key or a wrong type in one is
//! reported together with every other problem, not alone.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rbee_proto::deployment::{DeploymentSpec, Device};
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::model::{
    Config, EngineSource, HiveConfig, MaxUnavailable, PackageSettings, QueenSettings, SshSettings, TransportKind,
    VersionReq, WORKER_TYPES, WorkerSpec, is_localhost,
};
use super::schema::{DeploymentEntry, HivesConfFile, RbeeConfFile};

/// File name of the settings file.
pub const RBEE_CONF: &str = "rbee.conf";
/// File name of the fleet file.
pub const HIVES_CONF: &str = "hives.conf";

pub use rbee_proto::config::Diagnostic;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// hives.conf does not exist; never treated as an empty fleet.
    #[error(
        "no hives.conf at {path}: create it with at least one [[hive]] entry \
         (see `rbee config schema`), e.g.\n\n[[hive]]\nalias = \"local\"\nhostname = \"localhost\"\n\n\
         or point rbee at another directory with --config or RBEE_CONFIG_DIR"
    )]
    MissingHivesConf {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file exists but could not be read.
    #[error("could not read {path}: {}", read_reason(source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not UTF-8 text.
    #[error("{}:{line}:{column}: not UTF-8 text (byte 0x{byte:02x}): save the file as UTF-8", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Line of the first byte that is not UTF-8 (from 1).
        line: usize,
        /// Its column in bytes (from 1).
        column: usize,
        /// The byte.
        byte: u8,
    },
    /// The files were read but are not valid.
    #[error("{}", render_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The diagnostics, if the error is about file contents.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

fn render_diagnostics(diags: &[Diagnostic]) -> String {
    let lines: Vec<String> = diags.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

/// Where the config directory is: `--config` (a directory, or a hives.conf whose directory
/// is used), else `RBEE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/rbee`, else `~/.config/rbee`.
pub fn config_dir(cli: Option<&Path>) -> PathBuf {
    if let Some(path) = cli {
        return if path.is_file() {
            path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        } else {
            path.to_path_buf()
        };
    }
    if let Some(dir) = std::env::var_os("RBEE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("rbee");
    }
    home_dir().join(".config").join("rbee")
}

/// `$HOME`, or `/` when unset.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from)
}

/// The two files to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFiles {
    /// rbee.conf (optional: defaults apply when it does not exist).
    pub rbee_conf: PathBuf,
    /// hives.conf (required).
    pub hives_conf: PathBuf,
}

impl ConfigFiles {
    /// Both files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self { rbee_conf: dir.join(RBEE_CONF), hives_conf: dir.join(HIVES_CONF) }
    }

    /// The files `--config` names: a directory holding both, or a hives.conf file with
    /// rbee.conf beside it. Without `--config`, the files in [`config_dir`].
    pub fn locate(cli: Option<&Path>) -> Self {
        match cli {
            Some(path) if path.is_file() => {
                let dir = path.parent().unwrap_or(Path::new("."));
                Self { rbee_conf: dir.join(RBEE_CONF), hives_conf: path.to_path_buf() }
            }
            _ => Self::in_dir(&config_dir(cli)),
        }
    }
}

/// Loads `rbee.conf` (optional; defaults apply) and `hives.conf` (required) from `dir`.
pub fn load_dir(dir: &Path) -> Result<Config, ConfigError> {
    load(&ConfigFiles::in_dir(dir))
}

/// Why a config file could not be read, in words that say what to do.
fn read_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::IsADirectory => "it is a directory, not a file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied: check its owner and mode".to_owned(),
        _ => e.to_string(),
    }
}

/// A config file's text: `None` when it does not exist; an error that says why otherwise.
fn read_text(path: &Path) -> Result<Option<String>, ConfigError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
    };
    String::from_utf8(bytes).map(Some).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line_start = bytes[..at].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        ConfigError::NotUtf8 {
            path: path.to_owned(),
            line: bytes[..at].iter().filter(|b| **b == b'\n').count() + 1,
            column: at - line_start + 1,
            byte: bytes[at],
        }
    })
}

/// Loads and validates the two files.
pub fn load(files: &ConfigFiles) -> Result<Config, ConfigError> {
    let rbee_path = files.rbee_conf.clone();
    let hives_path = files.hives_conf.clone();
    let rbee = read_text(&rbee_path)?;
    let Some(hives) = read_text(&hives_path)? else {
        return Err(ConfigError::MissingHivesConf { path: hives_path });
    };
    let rbee = rbee.as_deref().map(|text| (rbee_path.as_path(), text));
    parse(rbee, (&hives_path, &hives))
}

/// Parses and validates config text. Each file is given with the name its diagnostics use.
pub fn parse(rbee: Option<(&Path, &str)>, hives: (&Path, &str)) -> Result<Config, ConfigError> {
    let mut diags = Vec::new();
    // Each file is indexed once; every location below is looked up in its index.
    let rbee_lines = LineIndex::new(rbee.map_or("", |(_, text)| text));
    let hives_lines = LineIndex::new(hives.1);
    let rbee_file = match rbee {
        Some((path, _)) => parse_toml::<RbeeConfFile>(path, &rbee_lines, &mut diags),
        None => Some(RbeeConfFile::default()),
    };
    let hives_file = parse_hives(hives.0, &hives_lines, &mut diags);
    let (Some(rbee_file), Some((hives_file, deployment_tables))) = (rbee_file, hives_file) else {
        return Err(ConfigError::Invalid(diags));
    };
    let mut v = Validator { diags, file: PathBuf::new(), lines: &rbee_lines };
    let rbee_path = rbee.map_or(Path::new(RBEE_CONF), |(path, _)| path);
    let (queen, package, ssh) = v.with_file(rbee_path, &rbee_lines, |v| v.settings(&rbee_file));
    let attached = (queen.mode == super::QueenMode::AttachedHive).then_some(queen.hive_alias.as_str());
    let (hives_list, deployments) = v.with_file(hives.0, &hives_lines, |v| {
        let hives_list = v.hives(&hives_file, attached);
        let deployments = v.deployments(&deployment_tables, &hives_list);
        (hives_list, deployments)
    });
    if v.diags.is_empty() {
        Ok(Config { queen, package, ssh, hives: hives_list, deployments })
    } else {
        Err(ConfigError::Invalid(v.diags))
    }
}

fn parse_toml<T: serde::de::DeserializeOwned>(
    path: &Path,
    lines: &LineIndex<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    match toml::from_str::<T>(lines.text) {
        Ok(value) => Some(value),
        Err(err) => {
            diags.push(toml_diagnostic(path, lines, &err));
            None
        }
    }
}

fn toml_diagnostic(path: &Path, lines: &LineIndex<'_>, err: &toml::de::Error) -> Diagnostic {
    let (line, column) = err.span().map_or((1, 1), |s| lines.line_col(s.start));
    Diagnostic { file: path.to_path_buf(), line, column, message: err.message().trim().to_owned() }
}

/// One `[[deployment]]` table as read: its entry, or why it could not be read.
type DeploymentTable = Result<DeploymentEntry, Diagnostic>;

/// Reads hives.conf. The `[[deployment]]` tables are taken out and read one by one, so that a
/// mistake serde stops at (an unknown key, a wrong type, a missing key) in one of them is
/// reported along with everything else; a syntax error, or one in the rest of the file,
/// still stops here.
fn parse_hives(
    path: &Path,
    lines: &LineIndex<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(HivesConfFile, Vec<DeploymentTable>)> {
    let mut root = match DeTable::parse(lines.text) {
        Ok(root) => root,
        Err(err) => {
            diags.push(toml_diagnostic(path, lines, &err));
            return None;
        }
    };
    let all_tables = |v: &Spanned<DeValue<'_>>| match v.get_ref() {
        DeValue::Array(items) => items.iter().all(|t| t.get_ref().is_table()),
        _ => false,
    };
    // Anything else under `deployment` is left for serde to reject with its usual message.
    let tables = match root.get_ref().get("deployment") {
        Some(v) if all_tables(v) => match root.get_mut().remove("deployment").map(Spanned::into_inner) {
            Some(DeValue::Array(items)) => items.into_iter().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let file = match HivesConfFile::deserialize(toml::de::Deserializer::from(root)) {
        Ok(file) => file,
        Err(err) => {
            diags.push(toml_diagnostic(path, lines, &err));
            return None;
        }
    };
    let deployments = tables
        .into_iter()
        .map(|t| DeploymentEntry::deserialize(ValueDeserializer::from(t)).map_err(|e| toml_diagnostic(path, lines, &e)))
        .collect();
    Some((file, deployments))
}

/// Where the lines of a file start, built once per file, so that turning a byte offset into
/// a line and column costs O(log n) instead of a scan from the start of the file (which made
/// validating 10,000 hives quadratic: every hive, worker and diagnostic scanned the text).
struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset of the start of each line; `starts[0] == 0`.
    starts: Vec<usize>,
    /// `chars[k]`: how many characters start before byte `k * CHAR_BLOCK`, for every
    /// `k <= text.len() / CHAR_BLOCK`, so a column is counted from the nearest block, not from
    /// the start of a (possibly very long) line.
    chars: Vec<usize>,
}

/// Bytes between two entries of [`LineIndex::chars`].
const CHAR_BLOCK: usize = 256;

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut starts = vec![0];
        starts.extend(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1));
        let mut chars = Vec::with_capacity(bytes.len() / CHAR_BLOCK + 1);
        chars.push(0);
        let mut count = 0;
        for block in bytes.chunks_exact(CHAR_BLOCK) {
            count += char_starts(block);
            chars.push(count);
        }
        Self { text, starts, chars }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line(offset);
        let line_start = self.starts[line - 1];
        (line, self.chars_before(offset) - self.chars_before(line_start) + 1)
    }

    /// 1-based line of a byte offset.
    fn line(&self, offset: usize) -> usize {
        // `starts[0] == 0`, so at least one start is at or before any offset.
        self.starts.partition_point(|&start| start <= offset)
    }

    /// How many characters start before byte `offset` (at most `text.len()`).
    fn chars_before(&self, offset: usize) -> usize {
        let block = offset / CHAR_BLOCK;
        self.chars[block] + char_starts(&self.text.as_bytes()[block * CHAR_BLOCK..offset])
    }
}

/// How many characters start in `bytes`: every byte that is not a UTF-8 continuation byte.
fn char_starts(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| (**b & 0xC0) != 0x80).count()
}

struct Validator<'a> {
    diags: Vec<Diagnostic>,
    file: PathBuf,
    /// The index of the file being checked.
    lines: &'a LineIndex<'a>,
}

impl<'a> Validator<'a> {
    fn with_file<R>(&mut self, file: &Path, lines: &'a LineIndex<'a>, f: impl FnOnce(&mut Self) -> R) -> R {
        self.file = file.to_path_buf();
        self.lines = lines;
        f(self)
    }

    /// A path from the config: absolute or `~/…` as written; a relative one is relative to the
    /// directory of the file that names it, not to wherever rbee happens to run.
    fn resolve(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() || value.starts_with('~') {
            return path.to_path_buf();
        }
        let dir = self.file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::path::absolute(dir.join(path)).unwrap_or_else(|_| dir.join(path))
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.lines.line_col(span.start);
        self.diags.push(Diagnostic { file: self.file.clone(), line, column, message: message.into() });
    }

    fn int_in(&mut self, key: &str, value: &Spanned<i64>, range: Range<i64>) -> i64 {
        let v = *value.get_ref();
        if !range.contains(&v) {
            let max = range.end - 1;
            self.error(value.span(), format!("{key} = {v} is out of range: use {}..={max}", range.start));
            return range.start;
        }
        v
    }

    fn port(&mut self, key: &str, value: &Spanned<i64>) -> u16 {
        u16::try_from(self.int_in(key, value, 1..65536)).unwrap_or(1)
    }

    fn settings(&mut self, file: &RbeeConfFile) -> (QueenSettings, PackageSettings, SshSettings) {
        let port = self.port("port", &file.queen.port);
        let bind = match &file.queen.bind {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(b) => b.get_ref().parse().unwrap_or_else(|_| {
                self.error(
                    b.span(),
                    format!("bind {:?} is not an IP address (e.g. \"127.0.0.1\" or \"0.0.0.0\")", b.get_ref()),
                );
                IpAddr::from([127, 0, 0, 1])
            }),
        };
        let advertise_url = match &file.queen.advertise_url {
            Some(u) => {
                let url = u.get_ref();
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && !url.chars().any(char::is_whitespace);
                if !ok {
                    self.error(
                        u.span(),
                        format!("advertise_url {url:?} is not an http(s) URL like \"http://10.0.0.1:8500\""),
                    );
                }
                url.trim_end_matches('/').to_owned()
            }
            None if bind.is_unspecified() => {
                let span = file.queen.bind.as_ref().map(Spanned::span).unwrap_or(0..0);
                self.error(span, "bind = \"0.0.0.0\" needs advertise_url: the address hives should send heartbeats to");
                String::new()
            }
            None if bind.is_ipv6() => format!("http://[{bind}]:{port}"),
            None => format!("http://{bind}:{port}"),
        };
        let hive_alias = match &file.queen.hive_alias {
            Some(a) => {
                if let Some(problem) = alias_problem(a.get_ref()) {
                    self.error(a.span(), format!("hive_alias {:?} {problem}", a.get_ref()));
                }
                a.get_ref().clone()
            }
            None => "localhost".to_owned(),
        };
        let reschedule_after = self.int_in("reschedule_after", &file.queen.reschedule_after, 1..86_401);
        let max_beats = self.int_in("max_heartbeats_per_second", &file.queen.max_heartbeats_per_second, 1..100_001);
        let queen = QueenSettings {
            mode: file.queen.mode,
            port,
            auto_start: file.queen.auto_start,
            bind,
            advertise_url,
            hive_alias,
            reschedule_after: Duration::from_secs(reschedule_after.unsigned_abs()),
            max_heartbeats_per_second: u32::try_from(max_beats).unwrap_or(1),
            metrics_public: file.queen.metrics_public,
        };
        let p = &file.package;
        let concurrency = self.int_in("max_concurrent_installs", &p.max_concurrent_installs, 1..1025);
        let ssh_timeout = self.int_in("ssh_timeout", &p.ssh_timeout, 1..86_401);
        let health = self.int_in("health_check_timeout", &p.health_check_timeout, 1..86_401);
        let source = p.source.as_ref().map(|s| {
            if s.get_ref().trim().is_empty() {
                self.error(s.span(), "source is empty: give a directory or an http(s) URL, or leave it out");
            } else if let Some(problem) = path_problem(s.get_ref()) {
                self.error(s.span(), format!("source {:?} {problem}", s.get_ref()));
            } else if s.get_ref().starts_with("http://") && !p.allow_insecure_source {
                self.error(
                    s.span(),
                    format!(
                        "source {:?} is plain HTTP: anyone on the way can change what gets installed; use https://, or set allow_insecure_source = true in [package] on a network you trust",
                        s.get_ref()
                    ),
                );
            }
            s.get_ref().clone()
        });
        let max_unavailable = match &p.max_unavailable {
            None => MaxUnavailable::default(),
            Some(v) => self.max_unavailable(v),
        };
        let max_failed =
            p.max_failed.as_ref().map(|m| usize::try_from(self.int_in("max_failed", m, 1..100_001)).unwrap_or(1));
        if let Some(k) = &file.ssh.known_hosts
            && let Some(problem) = path_problem(k.get_ref())
        {
            self.error(k.span(), format!("known_hosts {:?} {problem}", k.get_ref()));
        }
        let package = PackageSettings {
            max_concurrent_installs: usize::try_from(concurrency).unwrap_or(1),
            max_unavailable,
            max_failed,
            ssh_timeout: Duration::from_secs(ssh_timeout.unsigned_abs()),
            health_check_timeout: Duration::from_secs(health.unsigned_abs()),
            source,
        };
        let ssh = SshSettings {
            host_key_policy: file.ssh.host_key_policy,
            known_hosts: file.ssh.known_hosts.as_ref().map(|k| self.resolve(k.get_ref())),
        };
        (queen, package, ssh)
    }

    fn hives(&mut self, file: &HivesConfFile, attached_alias: Option<&str>) -> Vec<HiveConfig> {
        if file.hive.is_empty() && attached_alias.is_none() {
            self.error(
                0..0,
                "declares no hive: add one, e.g.\n[[hive]]\nalias = \"gpu-1\"\nhostname = \"192.168.1.10\"\nworkers = [{ type = \"llama-cpp\" }]",
            );
        }
        let mut seen_alias: BTreeMap<String, usize> = BTreeMap::new();
        let mut local_ports: BTreeMap<(Option<String>, u16), String> = BTreeMap::new();
        let mut out = Vec::new();
        for entry in &file.hive {
            let alias = entry.alias.get_ref();
            if let Some(problem) = alias_problem(alias) {
                self.error(entry.alias.span(), format!("alias {alias:?} {problem}"));
            }
            let line = self.lines.line(entry.alias.span().start);
            if let Some(first) = seen_alias.insert(alias.clone(), line) {
                self.error(
                    entry.alias.span(),
                    format!("duplicate alias {alias:?} (first declared at line {first}): aliases must be unique"),
                );
                seen_alias.insert(alias.clone(), first);
            }
            let hostname = entry.hostname.get_ref();
            if let Some(problem) = hostname_problem(hostname) {
                self.error(entry.hostname.span(), format!("hostname {hostname:?} {problem}"));
            }
            if let Some(user) = &entry.ssh_user
                && let Some(problem) = user_problem(user.get_ref())
            {
                self.error(user.span(), format!("ssh_user {:?} {problem}", user.get_ref()));
            }
            for (key, value) in [("ssh_key", &entry.ssh_key), ("local_home", &entry.local_home)] {
                if let Some(v) = value
                    && let Some(problem) = path_problem(v.get_ref())
                {
                    self.error(v.span(), format!("{key} {:?} {problem}", v.get_ref()));
                }
            }
            let ssh_port = self.port("ssh_port", &entry.ssh_port);
            let hive_port = self.port("hive_port", &entry.hive_port);
            let workers = self.workers(entry);
            let local = is_localhost(hostname);
            let ssh_options = entry.ssh_user.is_some() || entry.ssh_key.is_some() || *entry.ssh_port.get_ref() != 22;
            let transport = match entry.transport {
                Some(TransportKind::Local) if !local => {
                    self.error(
                        entry.hostname.span(),
                        format!(
                            "transport = \"local\" needs hostname \"localhost\" or \"127.0.0.1\", not {hostname:?}"
                        ),
                    );
                    TransportKind::Local
                }
                Some(kind) => kind,
                None if local && !ssh_options => TransportKind::Local,
                None => TransportKind::Ssh,
            };
            if transport == TransportKind::Ssh && entry.local_home.is_some() {
                self.error(
                    entry.alias.span(),
                    format!("hive {alias:?} sets local_home but is reached over SSH: remove local_home or set transport = \"local\""),
                );
            }
            let attached = attached_alias == Some(alias.as_str());
            if attached && transport != TransportKind::Local {
                self.error(
                    entry.alias.span(),
                    format!("hive {alias:?} is the queen's attached hive (mode = \"attached-hive\"), so it is this machine: set hostname = \"localhost\" and transport = \"local\", or name another hive in [queen] hive_alias"),
                );
            }
            if transport == TransportKind::Local {
                let key = (entry.local_home.as_ref().map(|h| h.get_ref().clone()), hive_port);
                if let Some(other) = local_ports.insert(key, alias.clone()) {
                    self.error(
                        entry.hive_port.span(),
                        format!("hive {alias:?} and hive {other:?} are both local with the same home and hive_port {hive_port}: give one a different hive_port or local_home"),
                    );
                }
            }
            out.push(HiveConfig {
                alias: alias.clone(),
                hostname: hostname.clone(),
                ssh_user: entry.ssh_user.as_ref().map(|u| u.get_ref().clone()),
                ssh_port,
                ssh_key: entry.ssh_key.as_ref().map(|k| self.resolve(k.get_ref())),
                hive_port,
                workers,
                auto_start: entry.auto_start,
                transport,
                local_home: entry.local_home.as_ref().map(|h| self.resolve(h.get_ref())),
                attached,
            });
        }
        out
    }

    /// The `[[deployment]]` tables, checked against each other and against the hives.
    fn deployments(&mut self, tables: &[DeploymentTable], hives: &[HiveConfig]) -> Vec<DeploymentSpec> {
        let mut seen_name: BTreeMap<&str, usize> = BTreeMap::new();
        let declared = DeclaredHives::new(hives);
        let mut out = Vec::new();
        for table in tables {
            let d = match table {
                Ok(d) => d,
                Err(diag) => {
                    self.diags.push(diag.clone());
                    continue;
                }
            };
            let name = d.name.get_ref();
            if name.is_empty() {
                self.error(
                    d.name.span(),
                    "deployment name \"\" is empty: give it the name clients ask for, like \"llama-8b\"",
                );
            } else if let Some(problem) = alias_problem(name) {
                self.error(d.name.span(), format!("deployment name {name:?} {problem}"));
            }
            let line = self.lines.line(d.name.span().start);
            if let Some(&first) = seen_name.get(name.as_str()) {
                self.error(
                    d.name.span(),
                    format!(
                        "duplicate deployment name {name:?} (first declared at line {first}): names must be unique"
                    ),
                );
            } else {
                seen_name.insert(name, line);
            }
            self.model(d);
            let sha256 = d.sha256.as_ref().and_then(|s| match rbee_proto::Sha256::parse(s.get_ref()) {
                Ok(digest) => Some(digest),
                Err(_) => {
                    self.error(
                        s.span(),
                        format!(
                            "sha256 {} is not a digest: give the model's sha256 as 64 hex digits",
                            shown(s.get_ref())
                        ),
                    );
                    None
                }
            });
            let worker = d.worker.get_ref();
            let known_worker = WORKER_TYPES.contains(&worker.as_str());
            if !known_worker {
                self.error(
                    d.worker.span(),
                    format!("unknown worker type {worker:?}: use one of {}", WORKER_TYPES.join(", ")),
                );
            }
            let replicas = self.int_in("replicas", &d.replicas, 1..1001);
            let hive_list = self.deployment_hives(d, &declared, known_worker);
            let device = match &d.device {
                None => Device::Cpu,
                Some(text) => Device::parse(text.get_ref()).unwrap_or_else(|| {
                    self.error(
                        text.span(),
                        format!("device {:?} is not \"cpu\", \"cuda\" (any GPU) or \"cuda:N\" (GPU N)", text.get_ref()),
                    );
                    Device::Cpu
                }),
            };
            let device_ok = d.device.as_ref().is_none_or(|t| Device::parse(t.get_ref()).is_some());
            let gpu_memory_mib = d.gpu_memory_mib.as_ref().map(|m| {
                if device == Device::Cpu && device_ok {
                    self.error(
                        m.span(),
                        "gpu_memory_mib needs a GPU: set device = \"cuda\" or \"cuda:N\", or remove gpu_memory_mib",
                    );
                }
                self.int_in("gpu_memory_mib", m, 1..16_777_217).unsigned_abs()
            });
            let args = self.args(&d.args);
            let ready = self.int_in("ready_timeout", &d.ready_timeout, 1..86_401);
            let drain = self.int_in("drain_timeout", &d.drain_timeout, 0..86_401);
            out.push(DeploymentSpec {
                name: name.clone(),
                model: d.model.get_ref().clone(),
                sha256,
                worker: worker.clone(),
                replicas: u32::try_from(replicas).unwrap_or(1),
                hives: hive_list,
                device,
                gpu_memory_mib,
                share_gpu: d.share_gpu,
                args,
                ready_timeout_ms: ready.unsigned_abs() * 1000,
                drain_timeout_ms: drain.unsigned_abs() * 1000,
            });
        }
        out
    }

    /// `model`: an http(s) URL with a sha256, or an absolute path.
    fn model(&mut self, d: &DeploymentEntry) {
        let model = d.model.get_ref();
        if model.starts_with("http://") || model.starts_with("https://") {
            let rest = model.split_once("://").map_or("", |(_, rest)| rest);
            if rest.is_empty() || model.chars().any(|c| c.is_whitespace() || c.is_control()) {
                self.error(
                    d.model.span(),
                    format!("model {model:?} is not a valid URL (no host, or a space or control character)"),
                );
            } else if d.sha256.is_none() {
                self.error(
                    d.model.span(),
                    format!("model {model:?} is a URL, so sha256 is required: add sha256 = \"<64 hex digits>\" to check the download"),
                );
            }
        } else if model.starts_with('/') {
            if let Some(problem) = path_problem(model) {
                self.error(d.model.span(), format!("model {model:?} {problem}"));
            }
        } else {
            self.error(
                d.model.span(),
                format!("model {model:?} is neither an http(s) URL (\"https://…\", with sha256) nor an absolute path (\"/models/…\")"),
            );
            return;
        }
        // What the model becomes in a hive's models directory must be a plain file name.
        let fetched = d.sha256.is_some() || !model.starts_with('/');
        let last = model.split(['?', '#']).next().unwrap_or_default().rsplit('/').next().unwrap_or_default();
        if fetched && matches!(last, "." | "..") {
            self.error(d.model.span(), format!("model {model:?} must end in a file name, not {last:?}"));
        }
    }

    /// `hives`: the listed ones (declared, without duplicates, each with the worker type), or
    /// by default every hive that declares the worker type.
    fn deployment_hives(&mut self, d: &DeploymentEntry, hives: &DeclaredHives<'_>, known_worker: bool) -> Vec<String> {
        let worker = d.worker.get_ref();
        let has_worker = |h: &HiveConfig| h.workers.iter().any(|w| &w.kind == worker);
        let Some(listed) = &d.hives else {
            let all: Vec<String> = hives.all.iter().filter(|h| has_worker(h)).map(|h| h.alias.clone()).collect();
            if all.is_empty() && known_worker {
                self.error(
                    d.worker.span(),
                    format!(
                        "no hive declares worker {worker:?}: add {{ type = {worker:?} }} to the workers of a hive, or use another worker"
                    ),
                );
            }
            return all;
        };
        if listed.get_ref().is_empty() {
            self.error(
                listed.span(),
                format!("hives is empty: list at least one hive, or leave hives out to use every hive with worker {worker:?}"),
            );
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut lacking: Vec<(&Spanned<String>, &str)> = Vec::new();
        let mut out = Vec::new();
        for item in listed.get_ref() {
            let alias = item.get_ref().as_str();
            if !seen.insert(alias) {
                self.error(item.span(), format!("hive {alias:?} is listed twice in hives: keep one"));
                continue;
            }
            match hives.by_alias.get(alias) {
                None => {
                    let known = hives.names();
                    self.error(item.span(), format!("unknown hive {alias:?}: the declared hives are {known}"));
                }
                Some(h) if !has_worker(h) => lacking.push((item, alias)),
                Some(_) => {}
            }
            out.push(alias.to_owned());
        }
        if let Some((first, _)) = lacking.first()
            && known_worker
        {
            let names: Vec<String> = lacking.iter().map(|(_, a)| format!("{a:?}")).collect();
            let (which, their) = if names.len() == 1 { ("hive", "its") } else { ("hives", "their") };
            self.error(
                first.span(),
                format!(
                    "worker {worker:?} is not declared on {which} {}: add {{ type = {worker:?} }} to {their} workers, or remove {} from hives",
                    names.join(", "),
                    if names.len() == 1 { "it" } else { "them" }
                ),
            );
        }
        out
    }

    /// `args`: argv entries, so no control character can split or end one anywhere later.
    fn args(&mut self, args: &[Spanned<String>]) -> Vec<String> {
        for (i, arg) in args.iter().enumerate() {
            let value = arg.get_ref();
            if i == MAX_ARGS {
                self.error(arg.span(), format!("args has {} entries: at most {MAX_ARGS}", args.len()));
            }
            if value.chars().any(char::is_control) {
                self.error(
                    arg.span(),
                    format!(
                        "args[{i}] {} contains a control character (newline, tab, NUL, ...): each argument is one argv entry, so write it without one",
                        shown(value)
                    ),
                );
            } else if value.len() > MAX_ARG_BYTES {
                self.error(
                    arg.span(),
                    format!("args[{i}] {} is {} bytes long: at most {MAX_ARG_BYTES}", shown(value), value.len()),
                );
            }
        }
        args.iter().map(|a| a.get_ref().clone()).collect()
    }

    fn workers(&mut self, entry: &super::schema::HiveEntry) -> Vec<WorkerSpec> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for w in &entry.workers {
            let kind = w.kind.get_ref().as_str();
            if !WORKER_TYPES.contains(&kind) {
                self.error(
                    w.kind.span(),
                    format!("unknown worker type {kind:?}: use one of {}", WORKER_TYPES.join(", ")),
                );
            }
            let line = self.lines.line(w.kind.span().start);
            if let Some(first) = seen.insert(kind, line) {
                self.error(
                    w.kind.span(),
                    format!(
                        "worker type {kind:?} appears twice in hive {:?} (first at line {first}): keep one",
                        entry.alias.get_ref()
                    ),
                );
            }
            let raw = w.version.get_ref();
            let version = if raw == "latest" {
                VersionReq::Latest
            } else {
                match semver::Version::parse(raw) {
                    Ok(v) => VersionReq::Exact(v),
                    Err(e) => {
                        self.error(
                            w.version.span(),
                            format!("version {raw:?} is neither \"latest\" nor a semver version like \"1.2.3\" ({e})"),
                        );
                        VersionReq::Latest
                    }
                }
            };
            let engine = self.engine(kind, w.engine.as_ref(), w.kind.span());
            out.push(WorkerSpec { kind: kind.to_owned(), version, engine });
        }
        out.sort_by(|a, b| a.kind.cmp(&b.kind));
        out
    }
}

impl Validator<'_> {
    /// `max_unavailable`: a count 1..=100000 or `"N%"` with N in 1..=100.
    fn max_unavailable(&mut self, value: &Spanned<super::schema::CountOrPercent>) -> MaxUnavailable {
        use super::schema::CountOrPercent;
        match value.get_ref() {
            CountOrPercent::Count(n) if (1..=100_000).contains(n) => {
                MaxUnavailable::Count(usize::try_from(*n).unwrap_or(1))
            }
            CountOrPercent::Text(t) => match t.strip_suffix('%').and_then(|n| n.trim().parse::<u32>().ok()) {
                Some(p) if (1..=100).contains(&p) => MaxUnavailable::Percent(p),
                _ => {
                    self.error(
                        value.span(),
                        format!(
                            "max_unavailable = {} must be a number of hives or a percentage like \"25%\"",
                            shown(t)
                        ),
                    );
                    MaxUnavailable::default()
                }
            },
            CountOrPercent::Count(n) => {
                self.error(value.span(), format!("max_unavailable = {n} is out of range: use 1..=100000 or \"N%\""));
                MaxUnavailable::default()
            }
        }
    }

    /// A worker's engine: the declared one, checked, or the type's default.
    fn engine(
        &mut self,
        kind: &str,
        entry: Option<&super::schema::EngineEntry>,
        at: Range<usize>,
    ) -> Option<EngineSource> {
        let Some(entry) = entry else {
            return (kind == "llama-cpp").then_some(EngineSource::Artifact { variant: None });
        };
        let given: Vec<(&str, &Spanned<String>)> =
            [("artifact", &entry.artifact), ("pip", &entry.pip), ("path", &entry.path)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
                .collect();
        let [(key, value)] = given[..] else {
            self.error(at, format!("engine of worker {kind:?} needs exactly one of artifact, pip or path"));
            return None;
        };
        let text = value.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "llama-cpp" => &["artifact", "path"],
            "vllm" => &["pip", "path"],
            "comfyui" => &["path"],
            _ => &[],
        };
        if !allowed.contains(&key) {
            let hint = if allowed.is_empty() {
                "it has no engine: remove `engine`".to_owned()
            } else {
                format!("use {}", allowed.join(" or "))
            };
            self.error(value.span(), format!("worker {kind:?} cannot take its engine from {key}: {hint}"));
            return None;
        }
        match key {
            "artifact" => {
                let ok = !text.is_empty()
                    && text.len() <= 32
                    && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
                if !ok {
                    self.error(
                        value.span(),
                        format!("engine variant {} must be `auto` or a name like `cpu` or `cuda12`", shown(text)),
                    );
                    return None;
                }
                Some(EngineSource::Artifact { variant: (text != "auto").then(|| text.to_owned()) })
            }
            "pip" => {
                let ok = text.len() <= 200
                    && text.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && text.chars().all(|c| c.is_ascii_alphanumeric() || "._-[],<>=!~ ".contains(c));
                if !ok {
                    self.error(
                        value.span(),
                        format!(
                            "pip requirement {} must be a plain requirement such as \"vllm==0.6.3\" (no pip options, URLs or paths)",
                            shown(text)
                        ),
                    );
                    return None;
                }
                Some(EngineSource::Pip { spec: text.to_owned() })
            }
            _ => {
                let ok = text.starts_with('/') && text.len() <= 4096 && !text.chars().any(char::is_control);
                if !ok {
                    self.error(
                        value.span(),
                        format!("engine path {} must be an absolute path without control characters", shown(text)),
                    );
                    return None;
                }
                Some(EngineSource::Path { path: text.to_owned() })
            }
        }
    }
}

/// The declared hives, for the deployments to look up by alias (once per file, not once per
/// deployment and listed hive).
struct DeclaredHives<'h> {
    all: &'h [HiveConfig],
    /// Each alias's first hive.
    by_alias: HashMap<&'h str, &'h HiveConfig>,
    /// The aliases, as an unknown hive's message lists them (joined on first use).
    names: OnceCell<String>,
}

impl<'h> DeclaredHives<'h> {
    fn new(all: &'h [HiveConfig]) -> Self {
        let mut by_alias = HashMap::with_capacity(all.len());
        for h in all {
            by_alias.entry(h.alias.as_str()).or_insert(h);
        }
        Self { all, by_alias, names: OnceCell::new() }
    }

    /// `a, b, c`, or `none`.
    fn names(&self) -> &str {
        self.names.get_or_init(|| {
            let names: Vec<&str> = self.all.iter().map(|h| h.alias.as_str()).collect();
            if names.is_empty() { "none".to_owned() } else { names.join(", ") }
        })
    }
}

/// The most arguments a deployment may pass to its engine.
const MAX_ARGS: usize = 256;
/// The longest argument, in bytes.
const MAX_ARG_BYTES: usize = 4096;

/// A value for a message: escaped, and cut to 60 characters.
fn shown(value: &str) -> String {
    let escaped: String = value.escape_debug().collect();
    match escaped.char_indices().nth(60) {
        Some((at, _)) => format!("\"{}…\"", &escaped[..at]),
        None => format!("\"{escaped}\""),
    }
}

/// Why an alias is unusable, if it is. Aliases become file names and shell words.
fn alias_problem(alias: &str) -> Option<&'static str> {
    let mut chars = alias.chars();
    match chars.next() {
        None => return Some("is empty: give each hive a short name like \"gpu-1\""),
        Some(c) if !(c.is_ascii_lowercase() || c.is_ascii_digit()) => {
            return Some("must start with a lowercase letter or digit ([a-z0-9][a-z0-9._-]*)");
        }
        Some(_) => {}
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')) {
        return Some("may only contain a-z, 0-9, '.', '_' and '-' ([a-z0-9][a-z0-9._-]*)");
    }
    if alias.len() > 63 {
        return Some("is longer than 63 characters");
    }
    None
}

/// Why an SSH user name is unusable, if it is: POSIX-style names only, never an option.
fn user_problem(user: &str) -> Option<&'static str> {
    let mut chars = user.chars();
    match chars.next() {
        None => Some("is empty: leave ssh_user out to use ~/.ssh/config or the current user"),
        Some(c) if !(c.is_ascii_alphanumeric() || c == '_') => {
            Some("must start with a letter, digit or '_' ([A-Za-z0-9_][A-Za-z0-9._-]*)")
        }
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) => {
            Some("may only contain letters, digits, '.', '_' and '-' ([A-Za-z0-9_][A-Za-z0-9._-]*)")
        }
        _ if user.len() > 32 => Some("is longer than 32 characters"),
        _ => None,
    }
}

/// Why a path is unusable, if it is: empty, or with control characters (a newline would end
/// a line of a remote script or of known_hosts).
fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        Some("is empty")
    } else if path.chars().any(char::is_control) {
        Some("contains a control character (newline, tab, ...)")
    } else {
        None
    }
}

/// Why a hostname is unusable, if it is.
fn hostname_problem(host: &str) -> Option<&'static str> {
    if host.is_empty() {
        return Some("is empty: give a DNS name, an IP address or an ~/.ssh/config alias");
    }
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    if host.len() > 253 {
        return Some("is longer than 253 characters");
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Some("has an empty label (two dots in a row, or a leading or trailing dot)");
        }
        if label.len() > 63 {
            return Some("has a label longer than 63 characters");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some("has a label that starts or ends with '-'");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Some("may only contain letters, digits, '-', '_' and '.'");
        }
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Some("looks like an IPv4 address but is not a valid one");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`LineIndex::line_col`] must answer: the scan from the start of the text it
    /// replaces.
    fn scanned_line_col(text: &str, offset: usize) -> (usize, usize) {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(LineIndex::new("ab\ncdé f").line_col(8), (2, 5));
        assert_eq!(LineIndex::new("").line_col(0), (1, 1));
        assert_eq!(LineIndex::new("ab").line_col(99), (1, 3), "an offset past the end is the end");
        // Across the blocks of the character index, on one long line and after it.
        let long = format!("{}x\né", "é".repeat(CHAR_BLOCK));
        let lines = LineIndex::new(&long);
        assert_eq!(lines.line_col(2 * CHAR_BLOCK), (1, CHAR_BLOCK + 1));
        assert_eq!(lines.line_col(2 * CHAR_BLOCK + 1), (1, CHAR_BLOCK + 2));
        assert_eq!(lines.line_col(2 * CHAR_BLOCK + 2), (2, 1));
        assert_eq!(lines.line_col(long.len()), (2, 2));
    }

    proptest::proptest! {
        /// The index answers what a scan from the start answers, at every character boundary
        /// of any text (newlines, `\r`, multi-byte characters, lines longer than a block).
        #[test]
        fn line_index_matches_a_scan(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("\n".to_owned()),
                    proptest::strategy::Just("\r\n".to_owned()),
                    "[a-zé€😀 ]{0,8}",
                    "x{200,300}",
                ],
                0..40,
            )
        ) {
            let text = pieces.concat();
            let lines = LineIndex::new(&text);
            for offset in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
                proptest::prop_assert_eq!(lines.line_col(offset), scanned_line_col(&text, offset), "offset {}", offset);
                proptest::prop_assert_eq!(lines.line(offset), scanned_line_col(&text, offset).0);
            }
        }
    }

    #[test]
    fn aliases() {
        for ok in ["a", "gpu-1", "0", "x.y_z"] {
            assert_eq!(alias_problem(ok), None, "{ok}");
        }
        for bad in ["", "-a", "A", "a b", "a/b", "a;rm"] {
            assert!(alias_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn hostnames() {
        for ok in ["localhost", "10.0.0.1", "::1", "gpu-1.lab.example", "my_box"] {
            assert_eq!(hostname_problem(ok), None, "{ok}");
        }
        for bad in ["", "a..b", "-a", "a b", "300.1.1.1", "x/y"] {
            assert!(hostname_problem(bad).is_some(), "{bad}");
        }
    }
}
