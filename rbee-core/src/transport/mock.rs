//! [`MockTransport`]: a scripted host for tests of the observer and executor.
//!
//! Each expectation matches calls by a substring of the command line (or the path) and is
//! used once; expectations may be met in any order, because a hive's workers install
//! concurrently. A call nothing expects fails with an error and is recorded, and
//! [`MockTransport::verify`] reports unexpected calls and unmet expectations.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{CommandOutput, RemoteCommand, Transport, TransportError, Upload, shell_line};

/// A call the mock received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MockCall {
    /// `run`, with its command line.
    Run(String),
    /// `upload`, with the path and size.
    Upload(String, usize),
    /// `read_file`, with the path.
    Read(String),
}

#[derive(Debug)]
enum Kind {
    Run,
    Upload,
    Read,
}

#[derive(Debug)]
struct Expectation {
    kind: Kind,
    needle: String,
    delay: Duration,
    reply: Result<Option<CommandOutput>, TransportError>,
}

/// What a [`MockTransport`] saw that its script did not say, or did not see that it did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{host}: unexpected calls {unexpected}; unmet expectations {unmet:?}")]
pub struct MockMismatch {
    /// The mock host.
    pub host: String,
    /// Calls no expectation matched.
    pub unexpected: String,
    /// Expectations no call met.
    pub unmet: Vec<String>,
}

/// A scripted transport.
#[derive(Debug)]
pub struct MockTransport {
    name: String,
    expectations: Mutex<Vec<Expectation>>,
    calls: Mutex<Vec<MockCall>>,
    unexpected: Mutex<Vec<MockCall>>,
}

impl MockTransport {
    /// A host called `name` that expects nothing yet.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            expectations: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            unexpected: Mutex::new(Vec::new()),
        }
    }

    fn push(
        self,
        kind: Kind,
        needle: &str,
        delay: Duration,
        reply: Result<Option<CommandOutput>, TransportError>,
    ) -> Self {
        self.expectations.lock().expect("mock lock").push(Expectation {
            kind,
            needle: needle.to_owned(),
            delay,
            reply,
        });
        self
    }

    /// Expects one `run` whose command line contains `needle`, answering `reply`.
    pub fn on_run(self, needle: &str, reply: Result<CommandOutput, TransportError>) -> Self {
        self.push(Kind::Run, needle, Duration::ZERO, reply.map(Some))
    }

    /// Like [`Self::on_run`], answering only after `delay` (use with `tokio::time::pause`).
    pub fn on_run_after(self, needle: &str, delay: Duration, reply: Result<CommandOutput, TransportError>) -> Self {
        self.push(Kind::Run, needle, delay, reply.map(Some))
    }

    /// Expects one `upload` to a path containing `needle`.
    pub fn on_upload(self, needle: &str, reply: Result<(), TransportError>) -> Self {
        self.push(Kind::Upload, needle, Duration::ZERO, reply.map(|()| None))
    }

    /// Expects one `read_file` of a path containing `needle`; `Ok(None)` means missing.
    pub fn on_read(self, needle: &str, reply: Result<Option<Vec<u8>>, TransportError>) -> Self {
        self.push(Kind::Read, needle, Duration::ZERO, reply.map(|d| d.map(CommandOutput::ok)))
    }

    /// Every call received, in order.
    pub fn calls(&self) -> Vec<MockCall> {
        self.calls.lock().expect("mock lock").clone()
    }

    /// `Err` naming unexpected calls and unmet expectations.
    pub fn verify(&self) -> Result<(), MockMismatch> {
        let unexpected = self.unexpected.lock().expect("mock lock");
        let left = self.expectations.lock().expect("mock lock");
        if unexpected.is_empty() && left.is_empty() {
            return Ok(());
        }
        let unmet: Vec<String> = left.iter().map(|e| format!("{:?} containing {:?}", e.kind, e.needle)).collect();
        Err(MockMismatch { host: self.name.clone(), unexpected: format!("{unexpected:?}"), unmet })
    }

    async fn answer(
        &self,
        kind: fn(&Kind) -> bool,
        call: MockCall,
        subject: &str,
    ) -> Result<Option<CommandOutput>, TransportError> {
        self.calls.lock().expect("mock lock").push(call.clone());
        let found = {
            let mut list = self.expectations.lock().expect("mock lock");
            list.iter().position(|e| kind(&e.kind) && subject.contains(&e.needle)).map(|i| list.remove(i))
        };
        let Some(expectation) = found else {
            self.unexpected.lock().expect("mock lock").push(call);
            return Err(TransportError::Remote {
                host: self.name.clone(),
                what: subject.to_owned(),
                reason: "unexpected call to MockTransport".to_owned(),
            });
        };
        if !expectation.delay.is_zero() {
            tokio::time::sleep(expectation.delay).await;
        }
        expectation.reply
    }
}

#[async_trait]
impl Transport for MockTransport {
    fn describe(&self) -> String {
        format!("mock:{}", self.name)
    }

    async fn run(&self, command: RemoteCommand) -> Result<CommandOutput, TransportError> {
        let line = shell_line(&command.argv);
        let deadline = command.deadline;
        let answer = self.answer(|k| matches!(k, Kind::Run), MockCall::Run(line.clone()), &line);
        match tokio::time::timeout(deadline, answer).await {
            Ok(reply) => reply.map(Option::unwrap_or_default),
            Err(_) => Err(TransportError::Timeout { host: self.name.clone(), what: line, after: deadline }),
        }
    }

    async fn upload(&self, file: Upload<'_>) -> Result<(), TransportError> {
        // Only the size is recorded: a file is not read at all.
        let (len, path) = (file.data.len(), file.path);
        let size = usize::try_from(len).unwrap_or(usize::MAX);
        self.answer(|k| matches!(k, Kind::Upload), MockCall::Upload(path.to_owned(), size), path).await?;
        (file.progress)(len);
        Ok(())
    }

    async fn run_with_input(
        &self,
        command: RemoteCommand,
        input: super::UploadData<'_>,
        progress: super::Progress<'_>,
    ) -> Result<CommandOutput, TransportError> {
        // Recorded as a `run`; the input is not read, only its whole length reported sent.
        let len = input.len();
        let out = self.run(command).await?;
        progress(len);
        Ok(out)
    }

    async fn read_file(&self, path: &str, _max: u64, _deadline: Duration) -> Result<Option<Vec<u8>>, TransportError> {
        let reply = self.answer(|k| matches!(k, Kind::Read), MockCall::Read(path.to_owned()), path).await?;
        Ok(reply.map(|o| o.stdout))
    }
}
