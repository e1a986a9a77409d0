//! [`LocalTransport`]: this machine, with a chosen directory as the host's home.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{CommandOutput, MAX_OUTPUT, Progress, RemoteCommand, Transport, TransportError, Upload, UploadData};

static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

/// Runs commands on this machine with `HOME` set to `home`, so several "hosts" can live side
/// by side in different directories (tests do exactly that).
#[derive(Debug, Clone)]
pub struct LocalTransport {
    home: PathBuf,
    /// The most a command's stdout, or its stderr, may hold.
    output_limit: usize,
}

impl LocalTransport {
    /// A host whose home directory is `home` (created when needed).
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self { home: home.into(), output_limit: MAX_OUTPUT }
    }

    /// The same host, keeping at most `limit` bytes of a command's stdout and of its stderr
    /// (instead of [`MAX_OUTPUT`]); a command that prints more fails.
    pub fn with_output_limit(self, limit: usize) -> Self {
        Self { output_limit: limit, ..self }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn resolve(&self, path: &str) -> PathBuf {
        self.home.join(path)
    }

    fn remote_err(&self, what: &str, e: &std::io::Error) -> TransportError {
        TransportError::Remote { host: self.describe(), what: what.to_owned(), reason: e.to_string() }
    }

    /// Runs `command` with `input` (if any) written to its stdin a chunk at a time, telling
    /// `progress`; an input that cannot be read to its end fails the call (the child is
    /// killed before it sees an end-of-file).
    async fn spawn(
        &self,
        command: RemoteCommand,
        input: Option<UploadData<'_>>,
        progress: Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        let what = command.argv.first().cloned().unwrap_or_default();
        tokio::fs::create_dir_all(&self.home).await.map_err(|e| self.remote_err("creating home", &e))?;
        let mut cmd = tokio::process::Command::new(&what);
        cmd.args(&command.argv[1..])
            .env("HOME", &self.home)
            .current_dir(&self.home)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| self.remote_err(&what, &e))?;
        let mut stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let work = async {
            let feed = async {
                if let (Some(mut pipe), Some(data)) = (stdin.take(), input) {
                    let mut chunks = data.chunks(1 << 20).await?;
                    let mut sent = 0u64;
                    while let Some(chunk) = chunks.next().await? {
                        // A command that exits without reading its input is not an error here.
                        if pipe.write_all(&chunk).await.is_err() {
                            return Ok(());
                        }
                        sent += chunk.len() as u64;
                        progress(sent);
                    }
                }
                Ok::<(), TransportError>(())
            };
            // Both streams at once, each up to the limit; a stream past it ends the wait at
            // once, and the child is killed when dropped.
            let (_, out, err) = tokio::try_join!(
                feed,
                self.read_capped(&mut stdout, &what, "stdout"),
                self.read_capped(&mut stderr, &what, "stderr"),
            )?;
            let status = child.wait().await.map_err(|e| self.remote_err(&what, &e))?;
            Ok(CommandOutput { status: status.code().unwrap_or(-1), stdout: out, stderr: err })
        };
        match tokio::time::timeout(command.deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { host: self.describe(), what, after: command.deadline }),
        }
    }

    /// Reads `pipe` to its end, failing once it gives more than the output limit.
    async fn read_capped(
        &self,
        pipe: &mut (dyn AsyncRead + Unpin + Send),
        what: &str,
        stream: &'static str,
    ) -> Result<Vec<u8>, TransportError> {
        let mut buf = Vec::new();
        let limit = self.output_limit;
        pipe.take(limit as u64 + 1).read_to_end(&mut buf).await.map_err(|e| self.remote_err(what, &e))?;
        if buf.len() > limit {
            return Err(TransportError::OutputTooLarge {
                host: self.describe(),
                what: what.to_owned(),
                stream,
                limit: limit as u64,
            });
        }
        Ok(buf)
    }
}

#[async_trait]
impl Transport for LocalTransport {
    fn describe(&self) -> String {
        format!("local:{}", self.home.display())
    }

    async fn run(&self, command: RemoteCommand) -> Result<CommandOutput, TransportError> {
        let stdin = command.stdin.clone();
        let input = stdin.as_deref().map(UploadData::Bytes);
        self.spawn(command, input, &|_| {}).await
    }

    async fn run_with_input(
        &self,
        command: RemoteCommand,
        input: UploadData<'_>,
        progress: Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        self.spawn(command, Some(input), progress).await
    }

    async fn upload(&self, file: Upload<'_>) -> Result<(), TransportError> {
        let Upload { data, path, mode, deadline, progress } = file;
        use std::os::unix::fs::PermissionsExt;
        let target = self.resolve(path);
        let what = format!("upload to {path}");
        let io = |e: std::io::Error| self.remote_err(&what, &e);
        let work = async {
            if let Some(dir) = target.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(io)?;
            }
            let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let seq = UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed);
            let tmp = target.with_file_name(format!(".{name}.upload-{}-{seq}", std::process::id()));
            let result = async {
                // The owner's bits only until the data is in: a secret (mode 0600) is never
                // readable by others, not even for an instant; the final mode is set below.
                let _ = tokio::fs::remove_file(&tmp).await;
                let mut file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode & 0o700)
                    .open(&tmp)
                    .await
                    .map_err(io)?;
                // A file is read a chunk at a time as it is written, never whole.
                let mut chunks = data.chunks(1 << 20).await?;
                let mut sent = 0u64;
                while let Some(chunk) = chunks.next().await? {
                    file.write_all(&chunk).await.map_err(io)?;
                    sent += chunk.len() as u64;
                    progress(sent);
                }
                file.sync_all().await.map_err(io)?;
                tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).await.map_err(io)?;
                tokio::fs::rename(&tmp, &target).await.map_err(io)?;
                // The rename itself made durable too.
                match target.parent() {
                    Some(dir) => tokio::fs::File::open(dir).await.map_err(io)?.sync_all().await.map_err(io),
                    None => Ok(()),
                }
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            result
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout { host: self.describe(), what, after: deadline }),
        }
    }

    async fn read_file(&self, path: &str, max: u64, _deadline: Duration) -> Result<Option<Vec<u8>>, TransportError> {
        let file = match tokio::fs::File::open(self.resolve(path)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.remote_err(&format!("reading {path}"), &e)),
        };
        let mut buf = Vec::new();
        file.take(max).read_to_end(&mut buf).await.map_err(|e| self.remote_err(&format!("reading {path}"), &e))?;
        Ok(Some(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::UploadData;

    #[tokio::test]
    async fn runs_in_its_home_and_uploads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(dir.path());
        let out = t
            .run(RemoteCommand::script("echo \"$HOME\"; pwd", Vec::<String>::new(), Duration::from_secs(5)))
            .await
            .unwrap();
        let home = dir.path().display().to_string();
        assert_eq!(out.stdout_text(), format!("{home}\n{home}\n"));
        let seen = std::sync::Mutex::new(Vec::new());
        let progress = |n| seen.lock().unwrap().push(n);
        t.upload(Upload::new(&[7u8; 3_000_000], "a/b/file", 0o755, Duration::from_secs(5)).with_progress(&progress))
            .await
            .unwrap();
        assert_eq!(seen.lock().unwrap().last(), Some(&3_000_000));
        assert_eq!(t.read_file("a/b/file", 10, Duration::from_secs(1)).await.unwrap().unwrap().len(), 10);
        assert_eq!(t.read_file("missing", 10, Duration::from_secs(1)).await.unwrap(), None);
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["file"], "no temporary file left behind");
    }

    /// A transport that only has the three primitives (the trait's default `run_with_input`).
    struct Primitives(LocalTransport);

    #[async_trait]
    impl Transport for Primitives {
        fn describe(&self) -> String {
            self.0.describe()
        }
        async fn run(&self, command: RemoteCommand) -> Result<CommandOutput, TransportError> {
            self.0.run(command).await
        }
        async fn upload(&self, file: Upload<'_>) -> Result<(), TransportError> {
            self.0.upload(file).await
        }
        async fn read_file(&self, path: &str, max: u64, deadline: Duration) -> Result<Option<Vec<u8>>, TransportError> {
            self.0.read_file(path, max, deadline).await
        }
    }

    /// A command gets its input streamed, from memory or from a file, with progress, and its
    /// exit status and output come back; the default (upload, then run on the file) gives the
    /// same and leaves no file behind.
    #[tokio::test]
    async fn run_with_input_feeds_the_command_natively_and_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("input");
        std::fs::write(&file, vec![b'x'; 3 << 20]).unwrap();
        let home = dir.path().join("home");
        let native = LocalTransport::new(&home);
        let by_default = Primitives(LocalTransport::new(&home));
        let script = r#"n=$(wc -c); echo "got ${n##* } $1"; exit 7"#;
        let parts = [UploadData::Bytes(b"hello"), UploadData::File { path: &file, len: 3 << 20 }];
        for t in [&native as &dyn Transport, &by_default] {
            for (input, len) in [(parts[0], 5u64), (parts[1], 3 << 20), (UploadData::Concat(&parts), 5 + (3 << 20))] {
                let seen = std::sync::Mutex::new(0u64);
                let progress = |n| *seen.lock().unwrap() = n;
                let command = RemoteCommand::script(script, ["arg"], Duration::from_secs(10));
                let out = t.run_with_input(command, input, &progress).await.unwrap();
                assert_eq!((out.status, out.stdout_text()), (7, format!("got {len} arg\n")));
                assert_eq!(*seen.lock().unwrap(), len);
            }
        }
        let left: Vec<_> = std::fs::read_dir(&home).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Several parts, nested or not, are read back to back in their order: each chunk from one
    /// part, at most the chunk size, and a file among them read like any other.
    #[tokio::test]
    async fn concatenated_data_is_read_part_after_part() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        let inner = [UploadData::Bytes(b""), UploadData::File { path: &file, len: bytes.len() as u64 }];
        let parts = [UploadData::Bytes(b"abc"), UploadData::Concat(&inner), UploadData::Bytes(b"xyz")];
        let data = UploadData::Concat(&parts);
        assert_eq!(data.len(), 6 + bytes.len() as u64);
        let mut chunks = data.chunks(4096).await.unwrap();
        let (mut got, mut sizes) = (Vec::new(), Vec::new());
        while let Some(c) = chunks.next().await.unwrap() {
            sizes.push(c.len());
            got.extend_from_slice(&c);
        }
        let want: Vec<u8> = [&b"abc"[..], &bytes, b"xyz"].concat();
        assert_eq!(got, want);
        assert_eq!(sizes, [3, 4096, 4096, 1808, 3]);
        // A missing file among the parts fails when its turn comes.
        let gone = dir.path().join("gone");
        let parts = [UploadData::Bytes(b"abc"), UploadData::File { path: &gone, len: 1 }];
        let mut chunks = UploadData::Concat(&parts).chunks(4096).await.unwrap();
        assert_eq!(chunks.next().await.unwrap().as_deref(), Some(&b"abc"[..]));
        assert!(matches!(chunks.next().await, Err(TransportError::LocalFile { .. })));
    }

    /// A file is streamed from disk, from its start at each attempt; a file that is not the
    /// length announced (it changed since) fails the upload and leaves nothing behind.
    #[tokio::test]
    async fn streams_a_file_and_refuses_one_whose_length_changed() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(dir.path().join("home"));
        let src = dir.path().join("artifact");
        let bytes: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let data = UploadData::File { path: &src, len: bytes.len() as u64 };
        let seen = AtomicU64::new(0);
        let progress = |n| seen.store(n, Ordering::Relaxed);
        for _ in 0..2 {
            let upload = Upload::from_data(data, "d/file", 0o644, Duration::from_secs(5)).with_progress(&progress);
            t.upload(upload).await.unwrap();
            assert_eq!(std::fs::read(dir.path().join("home/d/file")).unwrap(), bytes);
        }
        assert_eq!(seen.load(Ordering::Relaxed), bytes.len() as u64);
        let missing = dir.path().join("missing");
        for (path, len, why) in [
            (&src, bytes.len() as u64 - 1, "grew"),
            (&src, bytes.len() as u64 + 1, "shrank"),
            (&missing, 1, "No such file"),
        ] {
            let data = UploadData::File { path, len };
            let err = t.upload(Upload::from_data(data, "d/other", 0o644, Duration::from_secs(5))).await.unwrap_err();
            assert!(matches!(err, TransportError::LocalFile { .. }), "{err:?}");
            assert!(err.to_string().contains(why), "{err}");
            assert!(!err.is_transient(), "retrying sends the same file");
        }
        let names: Vec<_> =
            std::fs::read_dir(dir.path().join("home/d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["file"], "no temporary file left behind");
    }

    /// A host printing endlessly made rbee buffer all of it: each stream is now capped, and a
    /// command past the cap fails at once (not at its deadline) and is stopped.
    #[tokio::test]
    async fn output_past_the_limit_fails_the_command_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(dir.path()).with_output_limit(64 * 1024);
        let started = std::time::Instant::now();
        let err = t.run(RemoteCommand::new(["yes"], Duration::from_secs(60))).await.unwrap_err();
        assert!(matches!(&err, TransportError::OutputTooLarge { stream: "stdout", limit: 65536, .. }), "{err:?}");
        assert!(err.to_string().contains("printed more than 65536 bytes on stdout"), "{err}");
        assert!(!err.is_transient(), "retrying would print as much again");
        let script = RemoteCommand::script("yes >&2", Vec::<String>::new(), Duration::from_secs(60));
        let err = t.run(script).await.unwrap_err();
        assert!(matches!(&err, TransportError::OutputTooLarge { stream: "stderr", .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(30), "stopped at the limit, not at the deadline");

        // Exactly the limit is kept whole.
        let exact = RemoteCommand::new(["head", "-c", "65536", "/dev/zero"], Duration::from_secs(10));
        let out = t.run(exact).await.unwrap();
        assert_eq!(out.stdout.len(), 65536);
        assert_eq!(
            TransportError::OutputTooLarge { host: "h".into(), what: "w".into(), stream: "stdout", limit: 16 << 20 }
                .to_string(),
            "w on h printed more than 16 MiB on stdout, the most rbee keeps; it was stopped"
        );
    }

    #[test]
    fn append_capped_keeps_at_most_the_limit() {
        let mut buf = Vec::new();
        assert!(crate::transport::append_capped(&mut buf, b"abc", 5));
        assert!(crate::transport::append_capped(&mut buf, b"de", 5));
        assert!(!crate::transport::append_capped(&mut buf, b"f", 5));
        assert_eq!(buf, b"abcde");
    }

    #[tokio::test]
    async fn deadline_kills_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(dir.path());
        let err = t.run(RemoteCommand::new(["sleep", "5"], Duration::from_millis(100))).await.unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
        assert!(err.is_transient());
    }
}
