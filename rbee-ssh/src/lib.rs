//! # rbee-ssh
//!
//! The SSH [`Transport`](rbee_core::transport::Transport) for rbee, on russh: ssh-agent and
//! identity-file auth, strict known_hosts checking (or `accept-new`), `~/.ssh/config` host
//! aliases, one connection per host with parallel channels, remote-side deadlines, streamed
//! uploads with progress. [`SshConnector`] plugs it into rbee-core's pipeline.
#![warn(missing_docs)]

mod connector;
mod flow;
pub mod ssh_config;
mod transport;

pub use connector::SshConnector;
pub use transport::{MAX_CHANNELS, SshTarget, SshTransport};
