//! The logs of rbee's daemons (`queen-rbee`, `rbee-hive`, the worker launchers).
//!
//! [`init`] installs a `tracing` subscriber: `RUST_LOG` filters (default `info`), and the
//! format is text (one line per event, fields as `key=value`) or JSON (one object a line,
//! fields at the top level beside `timestamp`, `level`, `target` and `message`).
//!
//! Everything goes to standard error. When standard error is a regular file (the hive's
//! `hive.log`, a worker's log, the queen's log: the daemons are started with their output
//! appended to a file), that file is capped: before a write would take it past
//! `RBEE_LOG_MAX_BYTES` (default 10 MiB) it is renamed to `<file>.1` (replacing the previous
//! one) and a new file is opened in its place as the process's standard error (and standard
//! output, when that was the same file), so a chatty daemon or engine keeps at most twice the
//! cap on disk. Output that does not go through [`Output`] (a panic message, a child that
//! inherited the descriptor) still lands in the current file; its size is re-read every few
//! writes.
#![warn(missing_docs)]

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The variable that caps a daemon's log file, in bytes.
pub const MAX_BYTES_VAR: &str = "RBEE_LOG_MAX_BYTES";
/// The variable that chooses the format when no `--log-format` is given (`text` or `json`).
pub const FORMAT_VAR: &str = "RBEE_LOG_FORMAT";
/// The cap when [`MAX_BYTES_VAR`] is not set.
pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// The smallest cap accepted (a smaller value is raised to it).
pub const MIN_MAX_BYTES: u64 = 1024;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

impl LogFormat {
    /// The format named by [`FORMAT_VAR`], or text.
    pub fn from_env() -> Self {
        std::env::var(FORMAT_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or_default()
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Where a daemon's log lines go: its standard error, rotated when that is a capped file.
/// Cheap to clone.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<State>>,
    format: LogFormat,
}

struct State {
    rotation: Option<Rotation>,
}

struct Rotation {
    path: PathBuf,
    max: u64,
    also_stdout: bool,
    /// Whether rotating moves this process's standard error (false only in unit tests).
    swap_descriptors: bool,
    /// The file's size as last known (re-read every `recheck` bytes written).
    size: u64,
    since_check: u64,
    recheck: u64,
}

impl Output {
    /// Standard error, capped at `max` bytes if it is a regular file.
    pub fn stderr(max: u64, format: LogFormat) -> Self {
        Self { inner: Arc::new(Mutex::new(State { rotation: Rotation::of_stderr(max.max(MIN_MAX_BYTES)) })), format }
    }

    /// Standard error, capped at [`MAX_BYTES_VAR`] (or [`DEFAULT_MAX_BYTES`]).
    pub fn from_env(format: LogFormat) -> Self {
        let max = std::env::var(MAX_BYTES_VAR).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_MAX_BYTES);
        Self::stderr(max, format)
    }

    /// The capped file, if standard error is one.
    pub fn file(&self) -> Option<PathBuf> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).rotation.as_ref().map(|r| r.path.clone())
    }

    /// The format the daemon logs in.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Writes `bytes` (whole lines) to standard error, rotating the file first if they would
    /// take it past the cap.
    pub fn write(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut state = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = state.rotation.as_mut() {
            r.before_write(bytes.len() as u64);
        }
        let written = std::io::stderr().lock().write_all(bytes);
        if let Some(r) = state.rotation.as_mut() {
            r.after_write(bytes.len() as u64);
        }
        written
    }
}

impl Rotation {
    fn of_stderr(max: u64) -> Option<Self> {
        let err = std::fs::metadata("/proc/self/fd/2").ok()?;
        if !err.is_file() {
            return None;
        }
        let path = std::fs::read_link("/proc/self/fd/2").ok()?;
        // A file deleted while open shows as "<path> (deleted)": nothing to rotate by name.
        let on_disk = std::fs::metadata(&path).ok()?;
        if (on_disk.dev(), on_disk.ino()) != (err.dev(), err.ino()) {
            return None;
        }
        let also_stdout =
            std::fs::metadata("/proc/self/fd/1").is_ok_and(|out| (out.dev(), out.ino()) == (err.dev(), err.ino()));
        Some(Self {
            path,
            max,
            also_stdout,
            swap_descriptors: true,
            size: err.len(),
            since_check: 0,
            recheck: (max / 8).clamp(512, 64 * 1024),
        })
    }

    fn before_write(&mut self, len: u64) {
        if self.size > 0 && self.size.saturating_add(len) > self.max {
            self.rotate();
        }
    }

    fn after_write(&mut self, len: u64) {
        self.size = self.size.saturating_add(len);
        self.since_check = self.since_check.saturating_add(len);
        if self.since_check >= self.recheck {
            self.since_check = 0;
            if let Ok(m) = std::fs::metadata("/proc/self/fd/2") {
                self.size = m.len();
            }
        }
    }

    /// `<file>` → `<file>.1`, and a new `<file>` as standard error (and output). On failure the
    /// file grows on, and the next attempt is after another `recheck` bytes.
    fn rotate(&mut self) {
        let rotated = rotated_name(&self.path);
        let fresh = std::fs::rename(&self.path, &rotated)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).mode(0o644).open(&self.path));
        let file = match fresh {
            Ok(f) => f,
            Err(_) => {
                self.size = self.max.saturating_sub(self.recheck);
                return;
            }
        };
        if !self.swap_descriptors {
            self.size = 0;
            return;
        }
        let _ = std::io::stderr().flush();
        let redirected = nix::unistd::dup2_stderr(&file).is_ok();
        if self.also_stdout {
            let _ = std::io::stdout().flush();
            let _ = nix::unistd::dup2_stdout(&file);
        }
        if redirected {
            self.size = 0;
            self.since_check = 0;
        }
    }
}

/// `<file>.1`: where a rotated log goes.
pub fn rotated_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// One formatted event, handed to [`Output::write`] whole.
pub struct EventWriter {
    output: Output,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        self.output.write(&buf)
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter { output: self.clone(), buf: Vec::with_capacity(256) }
    }
}

static CURRENT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format [`init`] was first called with (text before that): what a daemon passes on to
/// the processes it starts ([`FORMAT_VAR`]).
pub fn current_format() -> LogFormat {
    CURRENT.get().copied().unwrap_or_default()
}

/// Installs the subscriber for this process (`RUST_LOG`, default `info`; `format`), writing
/// to [`Output::from_env`], and a panic hook that logs the panic as an error event. Returns
/// the output, for copying a child's lines into the same capped file ([`Output::write`]).
/// A second call returns a new output and changes nothing.
pub fn init(format: LogFormat) -> Output {
    let _ = CURRENT.set(format);
    let output = Output::from_env(format);
    let (filter, bad) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()).map(|v| (v, e))),
    };
    let ansi = output.file().is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(output.clone()).with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(false).try_init(),
    };
    if installed.is_ok() {
        std::panic::set_hook(Box::new(|info| {
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            tracing::error!(%location, %thread, "panic: {message}");
        }));
    }
    if let Some((value, e)) = bad {
        tracing::warn!("RUST_LOG={value:?} is not a valid filter ({e}); logging at info");
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().unwrap_err().contains("text or json"));
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn rotated_name_appends_one() {
        assert_eq!(rotated_name(Path::new("/s/hive.log")), PathBuf::from("/s/hive.log.1"));
    }

    #[test]
    fn rotation_decides_before_the_write_that_would_pass_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        std::fs::write(&path, vec![b'x'; 900]).unwrap();
        let mut r = Rotation {
            path: path.clone(),
            max: 1000,
            also_stdout: false,
            swap_descriptors: false,
            size: 900,
            since_check: 0,
            recheck: 512,
        };
        r.before_write(50);
        assert!(!rotated_name(&path).exists(), "950 bytes fit");
        r.after_write(50);
        assert_eq!(r.size, 950);
        // Renaming works on any file; the descriptor swap applies to this process's stderr,
        // which the tests of the daemons check end to end.
        r.before_write(100);
        assert!(rotated_name(&path).exists(), "1050 bytes would not fit: rotated first");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "a new, empty file in its place");
    }
}
