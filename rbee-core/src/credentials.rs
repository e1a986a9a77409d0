//! The credentials a queen hands out, one per role.
//!
//! The operator's admin token (`queen.token`) never leaves the operator's machine. Each hive's
//! credential is derived from a key only the queen holds (`hive-credentials.key`):
//! HMAC-SHA256(key, "rbee hive credential" ‖ alias), so the queen needs no table of them, a
//! credential names exactly one alias, and a new key (`rbee queen rotate-credentials`)
//! replaces every one at once. A sync delivers it over SSH as the hive's `hive.token`. Each
//! worker's credential is made by its hive (see the hive's worker registry).
//!
//! Hives and the queen also name each other in TLS by these identities, not by address: a
//! hive's certificate is for [`hive_tls_name`] of its alias, the queen's for
//! [`QUEEN_TLS_NAME`].

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// The TLS name of the queen's certificate.
pub const QUEEN_TLS_NAME: &str = "queen.rbee";

/// The credential of hive `alias` under the queen's hive key.
pub fn hive_credential(key: &str, alias: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(b"rbee hive credential\0");
    mac.update(alias.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A new random secret (a key, a worker's credential, a token): 32 bytes from
/// `/dev/urandom`, as 64 hex characters.
pub fn new_secret() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}

/// What a credential is known by where it must not be shown (plans, `/health`): its sha256.
pub fn credential_digest(credential: &str) -> rbee_proto::Sha256 {
    rbee_proto::Sha256::from_bytes(Sha256::digest(credential.trim().as_bytes()).into())
}

/// The DNS name in the certificate of hive `alias`, whatever its address:
/// `<first 16 bytes of sha256(alias), hex>.hive.rbee`.
pub fn hive_tls_name(alias: &str) -> String {
    let digest = Sha256::digest(alias.as_bytes());
    format!("{}.hive.rbee", hex::encode(&digest[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_per_alias_and_per_key() {
        let a = hive_credential("k1", "h1");
        assert_eq!(a, hive_credential("k1", "h1"), "deterministic");
        assert_eq!(a.len(), 64);
        assert_ne!(a, hive_credential("k1", "h2"));
        assert_ne!(a, hive_credential("k2", "h1"));
        // The alias is not a suffix that could be extended into another alias's credential.
        assert_ne!(hive_credential("k1", "h"), hive_credential("k1", "h1"));
    }

    #[test]
    fn digests_ignore_the_file_s_newline_and_names_are_dns_labels() {
        assert_eq!(credential_digest("abc\n"), credential_digest("abc"));
        let name = hive_tls_name("gpu box/1");
        assert!(name.ends_with(".hive.rbee") && name.len() == 32 + ".hive.rbee".len(), "{name}");
        assert_ne!(hive_tls_name("h1"), hive_tls_name("h2"));
    }
}
