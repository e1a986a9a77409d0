//! How rbee reaches a host: three primitives (run a command, upload a file, read a small
//! file). Composite steps such as an atomic, verified install are functions built on these
//! (see `crate::install`), never methods each transport re-implements.

mod local;
#[cfg(any(test, feature = "test-util"))]
mod mock;
mod shell;

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;

pub use local::LocalTransport;
#[cfg(any(test, feature = "test-util"))]
pub use mock::{MockCall, MockMismatch, MockTransport};
pub use shell::{quote, shell_line};

/// A command to run on a host, from argv (never a string spliced into a shell).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCommand {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Bytes fed to standard input.
    pub stdin: Option<Vec<u8>>,
    /// The command is killed after this long, on the host itself where the transport
    /// allows, so that a cancelled step does not keep running there.
    pub deadline: Duration,
}

impl RemoteCommand {
    /// A command with no stdin.
    pub fn new<I, S>(argv: I, deadline: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self { argv: argv.into_iter().map(Into::into).collect(), stdin: None, deadline }
    }

    /// `sh -c SCRIPT sh ARGS...`: a fixed script whose inputs arrive as positional
    /// parameters, so no value is ever parsed by the shell.
    pub fn script<I, S>(script: &str, args: I, deadline: Duration) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut argv = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned(), "sh".to_owned()];
        argv.extend(args.into_iter().map(Into::into));
        Self { argv, stdin: None, deadline }
    }
}

/// What a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status; -1 when killed by a signal.
    pub status: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// A successful output with this stdout.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        Self { status: 0, stdout: stdout.into(), stderr: Vec::new() }
    }
    /// True on exit status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
    /// Stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// Stderr as text (lossy), trimmed.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

/// Why a transport call failed. [`TransportError::is_transient`] says whether a retry may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The host could not be reached.
    #[error("cannot connect to {host}: {reason}")]
    Connect {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// A deadline passed.
    #[error("{what} on {host} did not finish within {}s", .after.as_secs())]
    Timeout {
        /// The host.
        host: String,
        /// What was running.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// The connection dropped mid-way.
    #[error("connection to {host} lost: {reason}")]
    Disconnected {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The host refused or failed the request itself (permissions, disk full, no such file).
    #[error("{what} on {host} failed: {reason}")]
    Remote {
        /// The host.
        host: String,
        /// What was attempted.
        what: String,
        /// Why.
        reason: String,
    },
    /// The host is not accepted (e.g. changed host key); nothing was run.
    #[error("refusing {host}: {reason}")]
    Refused {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The transport for this host does not exist yet.
    #[error("{0}")]
    Unsupported(String),
    /// The command printed more on one stream than rbee keeps (by default [`MAX_OUTPUT`]):
    /// it was stopped and its output dropped, so a host that prints endlessly cannot make
    /// rbee use unbounded memory.
    #[error("{what} on {host} printed more than {} on {stream}, the most rbee keeps; it was stopped", size(*limit))]
    OutputTooLarge {
        /// The host.
        host: String,
        /// What was running.
        what: String,
        /// `stdout` or `stderr`.
        stream: &'static str,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A local file being uploaded could not be read, or did not have the length announced
    /// (it changed while it was sent). Nothing was put in place on the host.
    #[error("cannot upload {path}: {reason}")]
    LocalFile {
        /// The file, on this machine.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The most a command's stdout, and separately its stderr, may hold: 16 MiB. Beyond it the
/// command is stopped and fails with [`TransportError::OutputTooLarge`]. (A file read with
/// [`Transport::read_file`] is limited by its own `max` instead.)
pub const MAX_OUTPUT: usize = 16 << 20;

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes & ((1 << 20) - 1) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// Appends `data` to `buf` unless `buf` would then hold more than `limit` bytes; false (and
/// `buf` untouched) when it would. What a transport collecting a command's output uses to
/// enforce [`MAX_OUTPUT`].
pub fn append_capped(buf: &mut Vec<u8>, data: &[u8], limit: usize) -> bool {
    if buf.len().saturating_add(data.len()) > limit {
        return false;
    }
    buf.extend_from_slice(data);
    true
}

impl TransportError {
    /// True for failures a retry may fix: connecting, deadlines, dropped connections.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. } | TransportError::Timeout { .. } | TransportError::Disconnected { .. }
        )
    }
}

/// Called with the number of bytes transferred so far.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// What an upload writes: bytes in memory, or a local file read in chunks as it is sent.
///
/// A file is opened anew by each [`UploadData::chunks`], so a retried upload starts again
/// from its first byte; it must have exactly `len` bytes (a file that shrank or grew since
/// fails the upload rather than sending something else).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum UploadData<'a> {
    /// Bytes held by the caller (a token, a certificate, a small file).
    Bytes(&'a [u8]),
    /// A local file of `len` bytes, streamed.
    File {
        /// The file, on this machine.
        path: &'a Path,
        /// Its length.
        len: u64,
    },
    /// Several of the others, back to back, in one stream: what lets one command receive
    /// several files. A file among them is opened when its turn comes.
    Concat(&'a [UploadData<'a>]),
}

impl<'a> UploadData<'a> {
    /// The number of bytes the upload writes.
    pub fn len(&self) -> u64 {
        match self {
            UploadData::Bytes(b) => b.len() as u64,
            UploadData::File { len, .. } => *len,
            UploadData::Concat(parts) => parts.iter().map(UploadData::len).sum(),
        }
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data from its start, in chunks of at most `chunk` bytes. A file is opened here and
    /// read by a blocking task of its own, [`READ_AHEAD`] chunks ahead of the caller (so a few
    /// chunks of it are held at a time, never the whole file): each chunk is ready when the
    /// previous one has been sent. (Read through `tokio::fs::File`, one hop to the blocking pool
    /// per read, a file's bytes reached SSH hosts in bursts that cost their sshd 2.4 times the
    /// CPU of the same bytes sent from memory.)
    pub async fn chunks(&self, chunk: usize) -> Result<Chunks<'a>, TransportError> {
        let chunk = chunk.max(1);
        let mut parts = Vec::new();
        self.flatten(&mut parts);
        let mut rest = parts.into_iter();
        // A file among several is opened only when the parts before it have been sent.
        let current = rest.next().map(|p| p.leaf(chunk)).transpose()?;
        Ok(Chunks { current, rest, chunk })
    }

    /// The files and bytes this data is made of, in order.
    fn flatten(self, out: &mut Vec<UploadData<'a>>) {
        match self {
            UploadData::Concat(parts) => parts.iter().for_each(|p| p.flatten(out)),
            leaf => out.push(leaf),
        }
    }

    /// A source of chunks of this data, one of [`Self::flatten`]'s parts.
    fn leaf(self, chunk: usize) -> Result<Leaf<'a>, TransportError> {
        Ok(match self {
            UploadData::File { path, len } => {
                let file = std::fs::File::open(path).map_err(|e| local_file(path, &e.to_string()))?;
                let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
                tokio::task::spawn_blocking(move || read_chunks(file, len, chunk, &tx));
                Leaf::File { path, rx }
            }
            UploadData::Bytes(b) => Leaf::Bytes(b),
            UploadData::Concat(_) => Leaf::Bytes(&[]),
        })
    }
}

/// How many chunks of a file are read ahead of the one being sent.
pub const READ_AHEAD: usize = 2;

/// Why a file's chunks stopped: its own error, or a length other than the one announced.
enum ReadEnd {
    Io(std::io::Error),
    Shrank,
    Grew,
}

/// Reads `file` (`len` bytes) in chunks into `tx` until its end, an error, or the receiver is
/// gone (the upload ended).
fn read_chunks(
    mut file: std::fs::File,
    len: u64,
    chunk: usize,
    tx: &tokio::sync::mpsc::Sender<Result<Vec<u8>, ReadEnd>>,
) {
    use std::io::Read;
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk);
        let mut buf = vec![0; n];
        let read = file.read_exact(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ReadEnd::Shrank,
            _ => ReadEnd::Io(e),
        });
        let failed = read.is_err();
        if tx.blocking_send(read.map(|()| buf)).is_err() || failed {
            return;
        }
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    match file.read(&mut probe) {
        Ok(0) => {}
        Ok(_) => drop(tx.blocking_send(Err(ReadEnd::Grew))),
        Err(e) => drop(tx.blocking_send(Err(ReadEnd::Io(e)))),
    }
}

fn local_file(path: &Path, reason: &str) -> TransportError {
    TransportError::LocalFile { path: path.display().to_string(), reason: reason.to_owned() }
}

/// [`UploadData`] read from its start, one chunk at a time: what a transport sends.
#[derive(Debug)]
pub struct Chunks<'a> {
    /// The part being sent (`None` at the end), and the parts after it.
    current: Option<Leaf<'a>>,
    rest: std::vec::IntoIter<UploadData<'a>>,
    chunk: usize,
}

/// One part's chunks.
enum Leaf<'a> {
    Bytes(&'a [u8]),
    File { path: &'a Path, rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, ReadEnd>> },
}

impl std::fmt::Debug for Leaf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leaf::Bytes(b) => write!(f, "Bytes({} left)", b.len()),
            Leaf::File { path, .. } => write!(f, "File({})", path.display()),
        }
    }
}

impl<'a> Leaf<'a> {
    /// The next chunk of this part; `None` at its end.
    async fn next(&mut self, chunk: usize) -> Result<Option<Cow<'a, [u8]>>, TransportError> {
        match self {
            Leaf::Bytes(rest) => {
                if rest.is_empty() {
                    return Ok(None);
                }
                let (head, tail) = rest.split_at(chunk.min(rest.len()));
                *rest = tail;
                Ok(Some(Cow::Borrowed(head)))
            }
            Leaf::File { path, rx } => match rx.recv().await {
                None => Ok(None),
                Some(Ok(chunk)) => Ok(Some(Cow::Owned(chunk))),
                Some(Err(end)) => Err(local_file(
                    path,
                    &match end {
                        ReadEnd::Io(e) => e.to_string(),
                        ReadEnd::Shrank => "it shrank while being uploaded".to_owned(),
                        ReadEnd::Grew => "it grew while being uploaded".to_owned(),
                    },
                )),
            },
        }
    }
}

impl<'a> Chunks<'a> {
    /// The next chunk, or `None` at the end: borrowed from bytes in memory, owned when read
    /// from a file (a transport that needs it owned takes it without a copy). A file that ends
    /// before its announced length, or goes on past it, is an error
    /// ([`TransportError::LocalFile`]).
    pub async fn next(&mut self) -> Result<Option<Cow<'a, [u8]>>, TransportError> {
        loop {
            let Some(leaf) = &mut self.current else { return Ok(None) };
            if let Some(c) = leaf.next(self.chunk).await? {
                return Ok(Some(c));
            }
            self.current = self.rest.next().map(|p| p.leaf(self.chunk)).transpose()?;
        }
    }
}

/// One file to write on a host: what [`Transport::upload`] takes.
#[derive(Clone, Copy)]
pub struct Upload<'a> {
    /// What to write.
    pub data: UploadData<'a>,
    /// Where, relative to the home directory (or absolute).
    pub path: &'a str,
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
    /// Deadline for the whole write.
    pub deadline: Duration,
    /// Told the bytes sent so far.
    pub progress: Progress<'a>,
}

fn no_progress(_: u64) {}

impl<'a> Upload<'a> {
    /// `data` to `path` with `mode` within `deadline`, with no progress reports.
    pub fn new(data: &'a [u8], path: &'a str, mode: u32, deadline: Duration) -> Self {
        Self::from_data(UploadData::Bytes(data), path, mode, deadline)
    }

    /// Like [`Self::new`], for bytes in memory or a file streamed from this machine.
    pub fn from_data(data: UploadData<'a>, path: &'a str, mode: u32, deadline: Duration) -> Self {
        Self { data, path, mode, deadline, progress: &no_progress }
    }

    /// The same, reporting progress to `progress`.
    pub fn with_progress(self, progress: Progress<'a>) -> Self {
        Self { progress, ..self }
    }
}

impl std::fmt::Debug for Upload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Upload({} bytes to {} mode {:o})", self.data.len(), self.path, self.mode)
    }
}

/// One host's primitives. Paths are relative to the home directory of the user rbee acts as
/// (absolute paths are used as given).
#[async_trait]
pub trait Transport: Send + Sync {
    /// A short description for messages, e.g. `local:/srv/h1` or `ssh root@gpu-1:22`.
    fn describe(&self) -> String;

    /// Runs a command in the home directory and waits for it (or its deadline).
    async fn run(&self, command: RemoteCommand) -> Result<CommandOutput, TransportError>;

    /// Writes `file.data` to `file.path` with `file.mode`, atomically: the path is either
    /// untouched or complete. Parent directories are created. `file.progress` gets the bytes
    /// sent so far. A file is read as it is sent ([`UploadData::chunks`]), never whole.
    async fn upload(&self, file: Upload<'_>) -> Result<(), TransportError>;

    /// Reads a file of at most `max` bytes; `None` if it does not exist.
    async fn read_file(&self, path: &str, max: u64, deadline: Duration) -> Result<Option<Vec<u8>>, TransportError>;

    /// Runs `command` (whose own `stdin` is ignored) with `input` streamed to its standard
    /// input, read a chunk at a time as it is sent, never whole; `progress` gets the bytes
    /// sent so far. What lets an install receive, check and rename a file in one command.
    /// If `input` cannot be read to its end, the command gets no end-of-file where the
    /// transport can avoid it, and the local error is returned.
    ///
    /// The default, for transports that cannot stream into a command, uploads `input` to a
    /// private temporary file in the home directory with [`Transport::upload`], then runs
    /// `command` reading that file (removed afterwards): the same result, in two round trips.
    async fn run_with_input(
        &self,
        command: RemoteCommand,
        input: UploadData<'_>,
        progress: Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!(".rbee-input-{}-{seq}", std::process::id());
        self.upload(Upload::from_data(input, &path, 0o600, command.deadline).with_progress(progress)).await?;
        let mut argv = vec!["sh".to_owned(), "-c".to_owned(), FROM_FILE.to_owned(), "sh".to_owned(), path];
        argv.extend(command.argv);
        self.run(RemoteCommand { argv, stdin: None, deadline: command.deadline }).await
    }
}

/// `$1` a file, then a command: runs the command reading the file, removes it, and exits
/// with the command's status ([`Transport::run_with_input`]'s default).
const FROM_FILE: &str = r#"f=$1; shift; "$@" < "$f"; s=$?; rm -f "$f"; exit $s"#;
