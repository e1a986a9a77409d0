//! [`SshTransport`]: one SSH connection per host, many channels on it.
//!
//! ```text
//! connect ─▶ TCP (deadline) ─▶ host key vs known_hosts ─▶ auth: agent keys, then files
//!    run: channel ─ exec `timeout N argv...` ─ stdin ─ eof ─ collect stdout/stderr/status
//! upload: channel ─ exec `cat > .tmp, check size, chmod, mv -f` ─ stream chunks (progress) ─ status
//! ```
//!
//! Every remote command runs under `timeout` on the host, so a step rbee gave up on does not
//! keep running there. A dropped connection is re-opened by the next call.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rbee_core::config::HostKeyPolicy;
use rbee_core::transport::{
    CommandOutput, MAX_OUTPUT, Progress, RemoteCommand, Transport, TransportError, Upload, UploadData, append_capped,
    shell_line,
};
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, client};
use tokio::sync::Semaphore;

/// Channels open at once on one connection; OpenSSH allows 10 by default.
pub const MAX_CHANNELS: usize = 8;

/// Everything needed to reach one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The hive's alias (for messages).
    pub alias: String,
    /// Host to connect to (after `~/.ssh/config` HostName).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Identity files to try after the agent's keys, in order.
    pub identity_files: Vec<PathBuf>,
    /// known_hosts file.
    pub known_hosts: PathBuf,
    /// What to do with an unknown host key.
    pub policy: HostKeyPolicy,
    /// Deadline for connecting and authenticating.
    pub connect_timeout: Duration,
    /// Try the ssh-agent at `SSH_AUTH_SOCK` first.
    pub use_agent: bool,
}

impl SshTarget {
    fn describe(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

struct Client {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    policy: HostKeyPolicy,
    verdict: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &russh::keys::PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            *self.verdict.lock().expect("verdict") = Some(format!(
                "{}:{} offered a host certificate; rbee checks plain host keys only",
                self.host, self.port
            ));
            return Ok(false);
        };
        let path = &self.known_hosts;
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, path) {
            Ok(true) => Ok(true),
            Ok(false) if self.policy == HostKeyPolicy::AcceptNew => {
                match russh::keys::known_hosts::learn_known_hosts_path(&self.host, self.port, key, path) {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        *self.verdict.lock().expect("verdict") = Some(format!(
                            "cannot record the host key of {}:{} in {}: {e}",
                            self.host,
                            self.port,
                            path.display()
                        ));
                        Ok(false)
                    }
                }
            }
            Ok(false) => {
                let hint = if self.port == 22 {
                    format!("ssh-keyscan {} >> {}", self.host, path.display())
                } else {
                    format!("ssh-keyscan -p {} {} >> {}", self.port, self.host, path.display())
                };
                *self.verdict.lock().expect("verdict") = Some(format!(
                    "the host key of {}:{} ({}) is not in {}; check it and add it (e.g. `{hint}`), or set [ssh] host_key_policy = \"accept-new\" in rbee.conf",
                    self.host,
                    self.port,
                    key.fingerprint(Default::default()),
                    path.display()
                ));
                Ok(false)
            }
            Err(russh::keys::Error::KeyChanged { line }) => {
                *self.verdict.lock().expect("verdict") = Some(format!(
                    "HOST KEY CHANGED for {}:{}: it does not match line {line} of {} — possible man-in-the-middle; nothing was run. If the host was reinstalled, remove that line (`ssh-keygen -R {}`) and verify the new key",
                    self.host,
                    self.port,
                    path.display(),
                    self.host
                ));
                Ok(false)
            }
            Err(e) => {
                *self.verdict.lock().expect("verdict") = Some(format!(
                    "cannot check the host key of {}:{} against {}: {e}",
                    self.host,
                    self.port,
                    path.display()
                ));
                Ok(false)
            }
        }
    }
}

/// A transport over one SSH connection.
pub struct SshTransport {
    target: SshTarget,
    handle: tokio::sync::Mutex<Option<Arc<client::Handle<Client>>>>,
    channels: Semaphore,
    /// The most a command's stdout, or its stderr, may hold.
    output_limit: usize,
    /// The connection's TCP round trip (its handshake), in microseconds: how much an upload
    /// keeps on the way ([`crate::flow`]).
    round_trip_us: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport").field("target", &self.target).finish_non_exhaustive()
    }
}

impl SshTransport {
    /// Connects and authenticates.
    pub async fn connect(target: SshTarget) -> Result<Self, TransportError> {
        let (handle, rtt) = open(&target).await?;
        Ok(Self {
            target,
            handle: tokio::sync::Mutex::new(Some(Arc::new(handle))),
            channels: Semaphore::new(MAX_CHANNELS),
            output_limit: MAX_OUTPUT,
            round_trip_us: std::sync::atomic::AtomicU64::new(micros(rtt)),
        })
    }

    /// The same transport, keeping at most `limit` bytes of a command's stdout and of its
    /// stderr (instead of [`MAX_OUTPUT`]); a command that prints more is stopped and fails.
    pub fn with_output_limit(self, limit: usize) -> Self {
        Self { output_limit: limit, ..self }
    }

    /// The target.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    async fn session(&self) -> Result<Arc<client::Handle<Client>>, TransportError> {
        let mut guard = self.handle.lock().await;
        if let Some(h) = guard.as_ref().filter(|h| !h.is_closed()) {
            return Ok(h.clone());
        }
        let (h, rtt) = open(&self.target).await?;
        self.round_trip_us.store(micros(rtt), std::sync::atomic::Ordering::Relaxed);
        let h = Arc::new(h);
        *guard = Some(h.clone());
        Ok(h)
    }

    fn lost(&self, e: impl std::fmt::Display) -> TransportError {
        TransportError::Disconnected { host: self.target.describe(), reason: e.to_string() }
    }

    /// Runs a shell line on a new channel, feeding `stdin` (in chunks, reporting progress; a
    /// file is read one chunk at a time, as the channel's window lets it be sent), and
    /// collects its output, at most `limit` bytes of each stream: a command printing more is
    /// stopped (its channel closed) and fails. If `stdin` cannot be read to its end, the
    /// channel is closed without an end-of-file and the local error returned.
    async fn exec(
        &self,
        line: String,
        stdin: Option<UploadData<'_>>,
        progress: Progress<'_>,
        deadline: Duration,
        what: &str,
        limit: usize,
    ) -> Result<CommandOutput, TransportError> {
        let _permit = self.channels.acquire().await.expect("semaphore never closed");
        let work = async {
            let session = self.session().await?;
            let channel = session.channel_open_session().await.map_err(|e| self.lost(e))?;
            let rtt = Duration::from_micros(self.round_trip_us.load(std::sync::atomic::Ordering::Relaxed));
            let pacer = if stdin.is_some() { crate::flow::Pacer::new(rtt) } else { crate::flow::Pacer::off() };
            let (mut read, write) = channel.split();
            write.exec(true, line.into_bytes()).await.map_err(|e| self.lost(e))?;
            let reader = async {
                let mut out = CommandOutput { status: -1, ..CommandOutput::default() };
                let mut got_status = false;
                let mut overflow = None;
                while let Some(msg) = read.wait().await {
                    match msg {
                        ChannelMsg::Data { data } => {
                            overflow = (!append_capped(&mut out.stdout, &data, limit)).then_some("stdout");
                        }
                        ChannelMsg::ExtendedData { data, ext: 1 } => {
                            overflow = (!append_capped(&mut out.stderr, &data, limit)).then_some("stderr");
                        }
                        ChannelMsg::ExitStatus { exit_status } => {
                            out.status = i32::try_from(exit_status).unwrap_or(-1);
                            got_status = true;
                        }
                        ChannelMsg::ExitSignal { signal_name, .. } => {
                            out.stderr.extend_from_slice(format!("killed by signal {signal_name:?}").as_bytes());
                            got_status = true;
                        }
                        ChannelMsg::Close => break,
                        ChannelMsg::WindowAdjusted { new_size } => pacer.window_adjusted(new_size),
                        _ => {}
                    }
                    if overflow.is_some() {
                        break;
                    }
                }
                (out, got_status, overflow)
            };
            let writer = async {
                if let Some(data) = stdin {
                    // Take a chunk and hand it to the channel whole (russh cuts it into packets
                    // of the channel's maximum size, each waiting for the channel's window: the
                    // backpressure), then the next: a file is read a few chunks ahead
                    // ([`UploadData::chunks`]), never whole, and progress is told once a chunk.
                    // As owned bytes (`data_bytes`), not through `data(AsyncRead)`, which copies
                    // through an 8 KiB buffer and so sends 8 KiB packets: four times the packets
                    // for the host's sshd to handle (it spent most of an upload's time on them).
                    // Paced ([`crate::flow`]): only so much on the way as the link needs.
                    let mut chunks = data.chunks(UPLOAD_CHUNK).await?;
                    let mut sent = 0u64;
                    while let Some(chunk) = chunks.next().await? {
                        let mut chunk = bytes::Bytes::from(chunk.into_owned());
                        while !chunk.is_empty() {
                            let piece = chunk.split_to(pacer.next_piece(chunk.len()).await);
                            let len = piece.len() as u64;
                            // A failed write means the command ended early; its status says why.
                            if write.data_bytes(piece).await.is_err() {
                                return Ok(());
                            }
                            pacer.sent(len);
                            sent += len;
                        }
                        progress(sent);
                    }
                }
                let _ = write.eof().await;
                Ok::<(), TransportError>(())
            };
            // If the command ends early (e.g. disk full), stop sending: the host no longer
            // reads, and its exit status says why.
            tokio::pin!(reader);
            let (out, got_status, overflow) = tokio::select! {
                result = &mut reader => result,
                fed = writer => match fed {
                    Ok(()) => reader.await,
                    Err(e) => {
                        // No end-of-file: what the host received is short of the length the
                        // upload script expects, so it keeps nothing.
                        let _ = write.close().await;
                        return Err(e);
                    }
                },
            };
            if let Some(stream) = overflow {
                // Stop it: the host's end of the channel goes, and the command with it.
                let _ = write.close().await;
                return Err(TransportError::OutputTooLarge {
                    host: self.target.describe(),
                    what: what.to_owned(),
                    stream,
                    limit: limit as u64,
                });
            }
            if !got_status {
                return Err(self.lost(format!("{what}: the connection closed before the command finished")));
            }
            Ok(out)
        };
        // The remote side has its own `timeout`; this local one is a little longer, for the
        // case where the host stops answering altogether.
        let local = deadline + Duration::from_secs(5);
        match tokio::time::timeout(local, work).await {
            Ok(Ok(out)) if out.status == 124 => {
                Err(TransportError::Timeout { host: self.target.describe(), what: what.to_owned(), after: deadline })
            }
            Ok(result) => result,
            Err(_) => {
                // The connection may be wedged (partition): drop it so the next call reconnects.
                *self.handle.lock().await = None;
                Err(TransportError::Timeout { host: self.target.describe(), what: what.to_owned(), after: deadline })
            }
        }
    }
}

impl SshTransport {
    /// Runs `command` under its deadline, with `stdin` (if any) as its input.
    async fn run_command(
        &self,
        command: &RemoteCommand,
        stdin: Option<UploadData<'_>>,
        progress: Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        let what = command.argv.iter().take(2).cloned().collect::<Vec<_>>().join(" ");
        let line = with_deadline(&command.argv, command.deadline);
        self.exec(line, stdin, progress, command.deadline, &what, self.output_limit).await
    }
}

/// The line sent to the host for `argv`: its words become the login shell's positional
/// parameters, run under `timeout` when the host has it (coreutils, busybox), else as they
/// are. Read by the login shell itself, so a command costs the host no extra shell.
fn with_deadline(argv: &[String], deadline: Duration) -> String {
    format!(
        "set -- {}; if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {} \"$@\"; else exec \"$@\"; fi",
        shell_line(argv),
        deadline.as_secs().max(1)
    )
}

/// `$3` is the length the upload sends: a stream cut short (the connection dropped, the local
/// file could not be read to its end) is never put in place.
const UPLOAD: &str = r#"set -e
target=$1; mode=$2; len=$3
dir=$(dirname "$target"); mkdir -p "$dir"
tmp="$dir/.$(basename "$target").upload-$$"
trap 'rm -f "$tmp"' EXIT
umask 077
cat > "$tmp"
got=$(wc -c < "$tmp" | tr -d ' ')
if [ "$got" != "$len" ]; then echo "received $got of $len bytes" >&2; exit 1; fi
chmod "$mode" "$tmp"
mv -f "$tmp" "$target"
trap - EXIT"#;

/// How much of an upload is read and handed to the channel at once.
const UPLOAD_CHUNK: usize = 256 * 1024;

#[async_trait]
impl Transport for SshTransport {
    fn describe(&self) -> String {
        format!("ssh {}", self.target.describe())
    }

    async fn run(&self, command: RemoteCommand) -> Result<CommandOutput, TransportError> {
        let stdin = command.stdin.as_deref().map(UploadData::Bytes);
        self.run_command(&command, stdin, &|_| {}).await
    }

    async fn upload(&self, file: Upload<'_>) -> Result<(), TransportError> {
        let Upload { data, path, mode, deadline, progress } = file;
        let argv = ["sh", "-c", UPLOAD, "sh", path, &format!("{mode:o}"), &data.len().to_string()].map(str::to_owned);
        let what = format!("upload to {path}");
        let out =
            self.exec(with_deadline(&argv, deadline), Some(data), progress, deadline, &what, self.output_limit).await?;
        if out.success() {
            Ok(())
        } else {
            Err(TransportError::Remote {
                host: self.target.describe(),
                what,
                reason: format!("exit status {}: {}", out.status, out.stderr_text()),
            })
        }
    }

    async fn run_with_input(
        &self,
        command: RemoteCommand,
        input: UploadData<'_>,
        progress: Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        self.run_command(&command, Some(input), progress).await
    }

    async fn read_file(&self, path: &str, max: u64, deadline: Duration) -> Result<Option<Vec<u8>>, TransportError> {
        let script = r#"[ -e "$1" ] || exit 3; head -c "$2" "$1""#;
        let argv = ["sh", "-c", script, "sh", path, &max.to_string()].map(str::to_owned);
        let what = format!("reading {path}");
        // `head -c` prints at most `max`; a file may be larger than the output limit.
        let limit = self.output_limit.max(usize::try_from(max).unwrap_or(usize::MAX));
        let out = self.exec(with_deadline(&argv, deadline), None, &|_| {}, deadline, &what, limit).await?;
        match out.status {
            0 => Ok(Some(out.stdout)),
            3 => Ok(None),
            s => Err(TransportError::Remote {
                host: self.target.describe(),
                what,
                reason: format!("exit status {s}: {}", out.stderr_text()),
            }),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Opens a TCP connection to the first of `host`'s addresses that answers, timing its
/// handshake: a round trip on the link, taken by the kernels alone.
async fn tcp_connect(host: &str, port: u16) -> std::io::Result<(tokio::net::TcpStream, Duration)> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let started = std::time::Instant::now();
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok((stream, started.elapsed())),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")))
}

/// Connects and authenticates; also the connection's TCP round trip.
async fn open(target: &SshTarget) -> Result<(client::Handle<Client>, Duration), TransportError> {
    let host = target.describe();
    let verdict = Arc::new(Mutex::new(None));
    let handler = Client {
        host: target.host.clone(),
        port: target.port,
        known_hosts: target.known_hosts.clone(),
        policy: target.policy,
        verdict: verdict.clone(),
    };
    let config = Arc::new(client::Config {
        keepalive_interval: Some(Duration::from_secs(5)),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        // AES-GCM first: ring runs it on AES-NI, several times faster than ChaCha20 for
        // the megabytes an install sends.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::CHACHA20_POLY1305,
                russh::cipher::AES_256_CTR,
            ]),
            ..russh::Preferred::DEFAULT
        },
        ..client::Config::default()
    });
    let work = async {
        let (stream, rtt) = tcp_connect(&target.host, target.port)
            .await
            .map_err(|e| TransportError::Connect { host: host.clone(), reason: e.to_string() })?;
        // As russh's own `connect` does.
        if config.nodelay {
            let _ = stream.set_nodelay(true);
        }
        let connected = client::connect_stream(config, stream, handler).await;
        let mut handle = match connected {
            Ok(h) => h,
            Err(e) => {
                if let Some(reason) = verdict.lock().expect("verdict").take() {
                    return Err(TransportError::Refused { host: host.clone(), reason });
                }
                return Err(TransportError::Connect { host: host.clone(), reason: e.to_string() });
            }
        };
        authenticate(&mut handle, target).await?;
        Ok((handle, rtt))
    };
    match tokio::time::timeout(target.connect_timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(TransportError::Connect {
            host,
            reason: format!(
                "no answer within {}s (connect timeout: [package] ssh_timeout)",
                target.connect_timeout.as_secs()
            ),
        }),
    }
}

async fn authenticate(handle: &mut client::Handle<Client>, target: &SshTarget) -> Result<(), TransportError> {
    let host = target.describe();
    let auth_err =
        |e: russh::Error| TransportError::Connect { host: host.clone(), reason: format!("during authentication: {e}") };
    let mut tried = Vec::new();
    let rsa_hash = handle.best_supported_rsa_hash().await.map_err(auth_err)?.flatten();
    if target.use_agent
        && let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await
    {
        let identities = agent.request_identities().await.unwrap_or_default();
        for identity in identities {
            let key: PublicKey = identity.public_key().into_owned();
            tried.push(format!("agent key {}", key.fingerprint(Default::default())));
            if let Ok(r) = handle.authenticate_publickey_with(target.user.as_str(), key, rsa_hash, &mut agent).await
                && r.success()
            {
                return Ok(());
            }
        }
    }
    for path in &target.identity_files {
        if !path.is_file() {
            continue;
        }
        let key = match russh::keys::load_secret_key(path, None) {
            Ok(k) => k,
            Err(e) => {
                tried.push(format!("{} (unreadable: {e})", path.display()));
                continue;
            }
        };
        tried.push(path.display().to_string());
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), rsa_hash);
        if handle.authenticate_publickey(target.user.as_str(), key).await.map_err(auth_err)?.success() {
            return Ok(());
        }
    }
    let tried =
        if tried.is_empty() { "no key found (no agent, no identity file)".to_owned() } else { tried.join(", ") };
    Err(TransportError::Refused {
        host: host.clone(),
        reason: format!(
            "authentication failed for user {} on {}:{}: the host accepted none of the keys tried ({tried}); add your public key to ~{}/.ssh/authorized_keys on the host, or set ssh_key / ssh_user for this hive",
            target.user, target.host, target.port, target.user
        ),
    })
}
