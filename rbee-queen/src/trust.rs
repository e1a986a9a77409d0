//! What the queen trusts and hands out: the key each hive's credential is derived from
//! (`hive-credentials.key`, see [`rbee_core::credentials`]), and a small CA (`ca/`) that
//! issues each hive a certificate when a sync links it, and the queen its own identity at
//! start (for [`rbee_core::credentials::QUEEN_TLS_NAME`], server and client). Hives and the
//! queen verify each other by that CA alone; the queen serves TLS and plain HTTP on one port,
//! plain only to local clients (the operator's `rbee`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rbee_core::credentials::{QUEEN_TLS_NAME, hive_credential, hive_tls_name};
use rbee_core::link::{HiveIssuer, IssuedCert};
use rbee_http::tls::{self, Ca, Usage};

/// How long a hive's certificate is valid (a sync renews it when 30 days are left).
pub const HIVE_CERT_VALID_FOR: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long the queen's own certificate is valid (made again at every start).
const QUEEN_CERT_VALID_FOR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The queen's key, CA and TLS configs.
pub struct Trust {
    key: RwLock<String>,
    key_path: PathBuf,
    ca: Ca,
    /// For serving: the queen's certificate; hives' client certificates required.
    pub(crate) acceptor: tls::TlsAcceptor,
    /// For calling hives: trusts only the CA, presents the queen's certificate.
    pub(crate) client: Arc<tls::rustls::ClientConfig>,
}

/// Why the queen's trust could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The key file.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA or a certificate.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

impl Trust {
    /// Opens (creating on first use) the key and the CA in `state_dir`, and issues the queen's
    /// own certificate.
    pub fn open(state_dir: &Path) -> Result<Self, TrustError> {
        let key_path = state_dir.join("hive-credentials.key");
        let key = crate::state::ensure_token(&key_path)
            .map_err(|source| TrustError::Key { path: key_path.clone(), source })?;
        let ca = Ca::load_or_create(&state_dir.join("ca"))?;
        let me = ca.issue("rbee-queen", &[QUEEN_TLS_NAME.to_owned()], QUEEN_CERT_VALID_FOR, Usage::Both)?;
        let server = tls::server_config(&me.cert_pem, &me.key_pem, Some(ca.cert_pem()))?;
        let client = tls::client_config(ca.cert_pem(), Some((&me.cert_pem, &me.key_pem)))?;
        Ok(Self { key: RwLock::new(key), key_path, ca, acceptor: tls::TlsAcceptor::from(server), client })
    }

    fn key(&self) -> String {
        self.key.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Hive `alias`'s credential.
    pub fn credential(&self, alias: &str) -> String {
        hive_credential(&self.key(), alias)
    }

    /// True when `authorization` (the header's value) carries hive `alias`'s credential.
    pub fn is_hive(&self, alias: &str, authorization: Option<&str>) -> bool {
        rbee_core::proto::authorized(authorization, &self.credential(alias))
    }

    /// A new key: every hive's credential changes; each is linked again by the next sync
    /// (until then its heartbeats are refused). The new key is on disk before it is used.
    pub fn rotate(&self) -> Result<(), TrustError> {
        let fresh = rbee_core::credentials::new_secret()
            .and_then(|key| rbee_core::fsio::write_atomic(&self.key_path, key.as_bytes(), 0o600).map(|()| key));
        let key = fresh.map_err(|source| TrustError::Key { path: self.key_path.clone(), source })?;
        *self.key.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }

    /// What a sync run by this queen gives the hives it links.
    pub fn issuer(self: &Arc<Self>) -> Arc<dyn HiveIssuer> {
        Arc::new(Issuer(self.clone()))
    }
}

struct Issuer(Arc<Trust>);

impl HiveIssuer for Issuer {
    fn credential(&self, alias: &str) -> String {
        self.0.credential(alias)
    }

    fn ca_pem(&self) -> Option<String> {
        Some(self.0.ca.cert_pem().to_owned())
    }

    fn issue(&self, alias: &str) -> Result<IssuedCert, String> {
        let issued = self
            .0
            .ca
            .issue(&format!("hive {alias}"), &[hive_tls_name(alias)], HIVE_CERT_VALID_FOR, Usage::Both)
            .map_err(|e| e.to_string())?;
        let not_after_ms = issued
            .not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Ok(IssuedCert {
            ca_pem: self.0.ca.cert_pem().to_owned(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            not_after_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_key_and_rotation_changes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Trust::open(dir.path()).unwrap();
        let (a, b) = (trust.credential("a"), trust.credential("b"));
        assert_ne!(a, b);
        assert!(trust.is_hive("a", Some(&format!("Bearer {a}"))));
        assert!(!trust.is_hive("b", Some(&format!("Bearer {a}"))), "a's credential is not b's");
        let again = Trust::open(dir.path()).unwrap();
        assert_eq!(again.credential("a"), a, "the key survives a restart");
        trust.rotate().unwrap();
        assert_ne!(trust.credential("a"), a);
        assert_eq!(Trust::open(dir.path()).unwrap().credential("a"), trust.credential("a"), "the new key is on disk");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("hive-credentials.key")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn issued_hive_certificates_name_the_alias() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Arc::new(Trust::open(dir.path()).unwrap());
        let cert = trust.issuer().issue("h1").unwrap();
        assert!(cert.not_after_ms > rbee_core::execute::now_ms() + 80 * 24 * 3600 * 1000);
        assert_eq!(cert.ca_pem, trust.issuer().ca_pem().unwrap());
        assert!(cert.key_pem.contains("PRIVATE KEY"));
    }
}
