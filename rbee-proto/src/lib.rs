//! # rbee-proto
//!
//! Every message that crosses a process boundary in rbee, defined once: what `rbee` sends the
//! queen ([`operation::Operation`]), what a job streams back ([`queen::JobEvent`]: sync
//! events, hive events, the [`result::OperationResult`]), what a hive answers and sends
//! ([`hive::HiveHealth`], [`operation::Heartbeat`], [`hive::HiveEvent`], worker and model
//! records), plans and reports, the files a sync leaves on a host ([`layout::Layout`],
//! [`hive::InstallRecord`], [`hive::QueenLink`]) and the exit codes.
//!
//! Plain data with serde and schemars, no runtime: a program that only talks to a queen or a
//! hive needs nothing else (as kube-core holds Kubernetes' types without a client).
#![warn(missing_docs)]

pub mod config;
pub mod deployment;
pub mod digest;
pub mod engine;
pub mod exit;
pub mod hive;
pub mod layout;
pub mod operation;
pub mod plan;
mod plan_render;
pub mod queen;
pub mod report;
pub mod result;
pub mod state;

pub use digest::{DigestError, Sha256};

/// The `authorization` header value for a token: `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Whether an `authorization` header carries `token`, compared in constant time (for equal
/// lengths), so the time an answer takes says nothing about how much of a guess was right.
pub fn authorized(header: Option<&str>, token: &str) -> bool {
    let expected = bearer(token);
    let Some(given) = header else { return false };
    if given.len() != expected.len() {
        return false;
    }
    given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        assert!(super::authorized(Some("Bearer s3cret"), "s3cret"));
        for wrong in
            [None, Some(""), Some("Bearer s3creT"), Some("Bearer s3cret "), Some("bearer s3cret"), Some("s3cret")]
        {
            assert!(!super::authorized(wrong, "s3cret"), "{wrong:?}");
        }
    }
}
