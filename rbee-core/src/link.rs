//! A hive's link to its queen as desired state: the queen's address, the hive's own
//! credential and its TLS certificate. A sync run by a queen ([`LinkSpec`]) wants each hive
//! linked to it; the running hive reports its link in `/health` (digests only); a difference
//! is drift ([`drift`]), planned as a restart that links it again — its workers keep running.

use std::sync::Arc;

use rbee_proto::Sha256;
use rbee_proto::hive::{LinkState, QueenLink};
use rbee_proto::plan::LinkDrift;
use serde::{Deserialize, Serialize};

/// A certificate renewed when it has less than this left.
pub const RENEW_BEFORE_MS: u64 = 30 * 24 * 3600 * 1000;

/// A hive's certificate and key, freshly issued, and the CA both sides trust.
#[derive(Clone)]
pub struct IssuedCert {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The hive's certificate (PEM), for [`crate::credentials::hive_tls_name`] of its alias.
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// When it expires (ms since the Unix epoch).
    pub not_after_ms: u64,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").field("not_after_ms", &self.not_after_ms).finish_non_exhaustive()
    }
}

/// What a queen gives the hives it links: their credentials and certificates.
pub trait HiveIssuer: Send + Sync {
    /// The credential of hive `alias` (the same every time until the queen's key changes).
    fn credential(&self, alias: &str) -> String;
    /// The CA certificate (PEM) hives are issued from; `None`: no TLS.
    fn ca_pem(&self) -> Option<String>;
    /// A new certificate for hive `alias`.
    fn issue(&self, alias: &str) -> Result<IssuedCert, String>;
}

/// How the queen running a sync links hives to itself.
#[derive(Clone)]
pub struct LinkSpec {
    /// Its address, heartbeat interval and settings (the token is filled in per hive).
    pub queen: QueenLink,
    /// Credentials and certificates.
    pub issuer: Arc<dyn HiveIssuer>,
}

impl std::fmt::Debug for LinkSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSpec").field("queen", &self.queen.url).finish_non_exhaustive()
    }
}

impl LinkSpec {
    /// What hive `alias` must run with; certificates must last beyond `renew_after_ms`.
    pub fn desired(&self, alias: &str, now_ms: u64) -> DesiredLink {
        DesiredLink {
            queen_url: self.queen.url.clone(),
            credential: crate::credentials::credential_digest(&self.issuer.credential(alias)),
            ca: self.issuer.ca_pem().map(|pem| crate::artifact::sha256_of(pem.as_bytes())),
            renew_after_ms: now_ms.saturating_add(RENEW_BEFORE_MS),
        }
    }

    /// The link file's content for hive `alias`, its credential in `token`.
    pub fn link_for(&self, alias: &str) -> QueenLink {
        QueenLink { token: self.issuer.credential(alias), ..self.queen.clone() }
    }
}

/// The link a hive must have (digests only: plans are shown and sent around).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredLink {
    /// The queen's URL.
    pub queen_url: String,
    /// sha256 of the hive's credential.
    pub credential: Sha256,
    /// sha256 of the CA certificate, when the queen issues certificates.
    pub ca: Option<Sha256>,
    /// A certificate that expires before this (ms since the Unix epoch) is renewed.
    pub renew_after_ms: u64,
}

/// How the running hive's link (`have`, from its `/health`) differs from `want`; `None`: in
/// sync. Pure.
pub fn drift(want: &DesiredLink, have: Option<&LinkState>) -> Option<LinkDrift> {
    let Some(have) = have else { return Some(LinkDrift::NotLinked) };
    if have.queen_url != want.queen_url {
        return Some(LinkDrift::OtherQueen);
    }
    if have.credential != want.credential {
        return Some(LinkDrift::Credential);
    }
    let ca = want.ca.as_ref()?;
    match &have.tls {
        Some(tls) if tls.ca == *ca && tls.not_after_ms < want.renew_after_ms => Some(LinkDrift::CertificateExpiring),
        Some(tls) if tls.ca == *ca => None,
        _ => Some(LinkDrift::Certificate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbee_proto::hive::TlsState;

    fn digest(s: &str) -> Sha256 {
        crate::artifact::sha256_of(s.as_bytes())
    }

    #[test]
    fn drift_names_the_first_difference() {
        let want = DesiredLink {
            queen_url: "https://q:8500".into(),
            credential: digest("c"),
            ca: Some(digest("ca")),
            renew_after_ms: 1000,
        };
        let tls = Some(TlsState { ca: digest("ca"), not_after_ms: 5000 });
        let have = LinkState { queen_url: "https://q:8500".into(), credential: digest("c"), tls: tls.clone() };
        assert_eq!(drift(&want, Some(&have)), None);
        assert_eq!(drift(&want, None), Some(LinkDrift::NotLinked));
        let other = LinkState { queen_url: "https://other:8500".into(), ..have.clone() };
        assert_eq!(drift(&want, Some(&other)), Some(LinkDrift::OtherQueen));
        let rotated = LinkState { credential: digest("old"), ..have.clone() };
        assert_eq!(drift(&want, Some(&rotated)), Some(LinkDrift::Credential));
        let plain = LinkState { tls: None, ..have.clone() };
        assert_eq!(drift(&want, Some(&plain)), Some(LinkDrift::Certificate));
        let foreign = LinkState { tls: Some(TlsState { ca: digest("x"), not_after_ms: 5000 }), ..have.clone() };
        assert_eq!(drift(&want, Some(&foreign)), Some(LinkDrift::Certificate));
        let expiring = LinkState { tls: Some(TlsState { ca: digest("ca"), not_after_ms: 999 }), ..have.clone() };
        assert_eq!(drift(&want, Some(&expiring)), Some(LinkDrift::CertificateExpiring));
        let no_tls_wanted = DesiredLink { ca: None, ..want };
        assert_eq!(drift(&no_tls_wanted, Some(&plain)), None);
    }
}
