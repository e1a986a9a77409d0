//! Mutual TLS between the queen and its hives, with a small certificate authority (CA) that
//! the queen keeps.
//!
//! ```text
//!            queen                                     hive
//!  Ca::load_or_create(dir) ── ca.pem (public) ──────▶  trusts only ca.pem
//!  Ca::issue(hive, [IP/DNS], 90 days, Server) ──────▶  server_config(cert, key, Some(ca.pem))
//!  Ca::issue("queen", [], 90 days, Client)
//!  client_config(ca.pem, Some((cert, key))) ── https ─▶ serve_tls: PeerIdentity { "queen", … }
//! ```
//!
//! - **The CA** ([`Ca`]) is an ECDSA P-256 key (`ca.key`, mode 0600) and a self-signed
//!   certificate for it (`ca.pem`), made with `rcgen`. The key is the source of truth: the
//!   certificate is derived from it (its name includes the key's fingerprint) and is made
//!   again, for the same name and key, when it is missing, does not match the key, or nears
//!   its end ([`CA_RENEW_BEFORE`]); certificates issued before stay valid, and peers that hold
//!   the older `ca.pem` keep trusting new ones (rustls trusts an anchor by its name and key).
//! - **Certificates** ([`Ca::issue`]) are short-lived (the caller chooses; 90 days, say): each
//!   has a fresh key, subject alternative names that are IP addresses or DNS names, and the
//!   extended key usage of a server, a client, or both ([`Usage`]). [`not_after`] tells a
//!   holder when to renew; [`fingerprint`] identifies one (SHA-256 of its DER, in hex).
//! - **rustls configurations** ([`server_config`], [`client_config`]) trust only the given
//!   CA, never the web's roots, speak TLS 1.3 only (both ends are rbee's) and use the `ring`
//!   crypto provider explicitly, whatever the process-wide default is. A server given a client
//!   CA requires every client to present a certificate issued by it.
//! - **Serving and calling**: [`crate::serve_tls`] is [`crate::serve()`] behind a
//!   [`TlsAcceptor`], with a bounded handshake; it attaches the client's [`PeerIdentity`] to
//!   each request; [`crate::serve_auto`] takes TLS and, from loopback clients only, plain
//!   HTTP on one port. [`crate::send_with`] is [`crate::send`] with a
//!   [`rustls::ClientConfig`]: the server is verified by the CA and by the URL's host (an IP
//!   address or a DNS name) among its certificate's subject alternative names;
//!   [`crate::send_with_name`] checks a given name instead of the URL's host (a hive's name
//!   derived from its alias, wherever it is reached).

use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::rustls;

/// The CA's certificate in its directory (public: what peers trust).
pub const CA_CERT_FILE: &str = "ca.pem";

/// The CA's private key in its directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a CA certificate made by [`Ca::load_or_create`] is valid: ten years.
pub const CA_VALID_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A CA certificate this close to its end is made again (same name, same key) by
/// [`Ca::load_or_create`]: one year.
pub const CA_RENEW_BEFORE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Certificates start being valid this long before they are made, so that a peer whose clock
/// is a little behind accepts them at once.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Why a CA, a certificate or a TLS configuration could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a file of the CA's directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The CA's key file can be read or written by others than its owner: it is not used.
    #[error("{} is accessible to others (mode {mode:o}); make it private with chmod 600", path.display())]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A certificate or key (PEM or DER) that cannot be read.
    #[error("{what}: {reason}")]
    Pem {
        /// What was read (`certificate`, `private key`, `CA certificate`, …).
        what: &'static str,
        /// Why it cannot be used.
        reason: String,
    },
    /// A subject alternative name that is neither an IP address nor a DNS name.
    #[error("{name:?} is neither an IP address nor a DNS name: {reason}")]
    BadName {
        /// The name as given.
        name: String,
        /// Why.
        reason: String,
    },
    /// Making a key or a certificate failed.
    #[error("making a certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration (a key that does not match its certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What a certificate may be used for: its extended key usage, which rustls checks (a server
/// certificate cannot authenticate a client, and the other way round).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (`serverAuth`): a hive's API.
    Server,
    /// A TLS client (`clientAuth`): the queen calling hives, a hive calling the queen.
    Client,
    /// Both (`serverAuth` and `clientAuth`): a daemon that serves and calls with one identity.
    Both,
}

impl Usage {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        }
    }
}

/// A certificate issued by a [`Ca`], with its own new private key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    /// The certificate (PEM). The CA's certificate is not appended: peers hold it already.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM): to be written only to a file of mode 0600.
    pub key_pem: String,
    /// When it stops being valid (whole seconds, as the certificate holds it): renew before.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    /// Shows the certificate, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[private]")
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A small certificate authority: a key and its self-signed certificate, kept in a directory
/// of their own ([`Ca::load_or_create`]), that issues short-lived certificates
/// ([`Ca::issue`]).
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    /// Shows the certificate's fingerprint, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fingerprint = fingerprint(&self.cert_pem).unwrap_or_default();
        f.debug_struct("Ca").field("fingerprint", &fingerprint).finish_non_exhaustive()
    }
}

impl Ca {
    /// The CA kept in `dir`: [`CA_KEY_FILE`] and [`CA_CERT_FILE`], made when missing.
    ///
    /// - `dir` is created (with its parents) with mode 0700 if missing, and made 0700 if it
    ///   is open to others: it should be a directory of the CA's own.
    /// - A missing key is generated (ECDSA P-256) and written to a new file that has mode
    ///   0600 from its first byte, flushed to disk, then linked into place; of several
    ///   processes creating it at once, one wins and the others load its key. An existing key
    ///   is never replaced. A key file that others may read is refused
    ///   ([`TlsError::KeyExposed`]).
    /// - The certificate is kept when it is a CA certificate for the key that is valid for
    ///   more than [`CA_RENEW_BEFORE`]; otherwise it is made again from the key (same name,
    ///   [`CA_VALID_FOR`]) and replaces the file.
    ///
    /// Loading it again gives the same CA: the same key and, while it stays valid, the same
    /// certificate.
    pub fn load_or_create(dir: &Path) -> Result<Ca, TlsError> {
        private_dir(dir)?;
        let key_path = dir.join(CA_KEY_FILE);
        let key = match read_private(&key_path)? {
            Some(pem) => parse_key(&pem, &key_path)?,
            None => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
                match rbee_core::fsio::create_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600) {
                    Ok(()) => key,
                    // Another process made it first: its key is the CA's.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        let pem = read_private(&key_path)?.ok_or_else(|| TlsError::Io {
                            path: key_path.clone(),
                            source: std::io::Error::new(std::io::ErrorKind::NotFound, "removed while being created"),
                        })?;
                        parse_key(&pem, &key_path)?
                    }
                    Err(source) => return Err(TlsError::Io { path: key_path, source }),
                }
            }
        };
        let cert_path = dir.join(CA_CERT_FILE);
        let existing = match std::fs::read_to_string(&cert_path) {
            Ok(pem) => Some(pem),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(TlsError::Io { path: cert_path, source }),
        };
        let cert_pem = match existing {
            Some(pem) if ca_cert_fits(&pem, &key) => pem,
            existing => {
                if existing.is_some() {
                    tracing::warn!(
                        "{}: not a current CA certificate for {}; making it again",
                        cert_path.display(),
                        key_path.display()
                    );
                }
                let pem = ca_params(&key).self_signed(&key).map_err(generate)?.pem();
                rbee_core::fsio::write_atomic(&cert_path, pem.as_bytes(), 0o644)
                    .map_err(|source| TlsError::Io { path: cert_path.clone(), source })?;
                pem
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(generate)?;
        Ok(Ca { cert_pem, issuer })
    }

    /// The CA's certificate (PEM): what servers and clients trust ([`server_config`]'s
    /// `client_ca_pem`, [`client_config`]'s `ca_pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate with a new key: subject `CN=common_name`; subject alternative
    /// names `sans`, each an IP address (`10.0.0.7`, `::1`, `[::1]`) or else a DNS name
    /// (`gpu-1.lan`); valid from [`BACKDATE`] ago until `valid_for` from now (to the
    /// second); for `usage`. A server's certificate needs the names clients connect to
    /// (rustls checks the URL's host against them); a client's may have none.
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        valid_for: Duration,
        usage: Usage,
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.subject_alt_names = sans.iter().map(|name| san(name)).collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usage.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = whole_seconds(now + valid_for);
        params.not_before = whole_seconds(now - BACKDATE).into();
        params.not_after = not_after.into();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), not_after })
    }
}

/// When the (first) certificate of `cert_pem` stops being valid, to the second.
pub fn not_after(cert_pem: &str) -> Result<SystemTime, TlsError> {
    let der = first_cert(cert_pem, "certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| pem_error("certificate", e))?;
    Ok(from_unix(cert.validity().not_after.timestamp()))
}

/// The SHA-256 fingerprint of the (first) certificate of `cert_pem`: 64 lowercase hex
/// characters of the digest of its DER.
pub fn fingerprint(cert_pem: &str) -> Result<String, TlsError> {
    Ok(fingerprint_der(&first_cert(cert_pem, "certificate")?))
}

/// The SHA-256 fingerprint of a DER certificate (64 lowercase hex characters).
pub fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

/// A TLS server configuration presenting `cert_pem` (the certificate, then any intermediate
/// ones) with `key_pem`. With `client_ca_pem`, every client must present a certificate issued
/// by that CA for client use ([`Usage::Client`] or [`Usage::Both`]), or the handshake fails;
/// without it, clients are not asked for one. TLS 1.3, ALPN `http/1.1`, the `ring` provider.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?;
    let builder = match client_ca_pem {
        Some(ca_pem) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_pem)?), provider)
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(cert_pem)?, private_key(key_pem)?).map_err(config)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS client configuration that trusts only the CA(s) of `ca_pem` (not the web's roots,
/// not `$SSL_CERT_FILE`) and, with `client_identity` (certificate PEM, key PEM), presents
/// that certificate to servers that ask for one. TLS 1.3, ALPN `http/1.1`, the `ring`
/// provider. Use it with [`crate::send_with`].
pub fn client_config(
    ca_pem: &str,
    client_identity: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config)?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match client_identity {
        Some((cert_pem, key_pem)) => {
            builder.with_client_auth_cert(certs(cert_pem)?, private_key(key_pem)?).map_err(config)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Who the client of a TLS connection is, by the certificate it presented (verified by the
/// server's client CA). [`crate::serve_tls`] attaches it to every request of a connection
/// whose client presented a certificate.
///
/// A handler takes it as an extractor: `PeerIdentity` answers 401 when the request has none
/// (plain HTTP, or a server that does not ask for client certificates);
/// `Option<PeerIdentity>` lets the handler decide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The certificate's subject common name (empty when it has none): the name the CA
    /// issued it to.
    pub common_name: String,
    /// The SHA-256 fingerprint of the certificate's DER ([`fingerprint_der`]).
    pub fingerprint: String,
}

impl PeerIdentity {
    /// The identity in a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, TlsError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| pem_error("peer certificate", e))?;
        let common_name =
            cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).unwrap_or_default().to_owned();
        Ok(PeerIdentity { common_name, fingerprint: fingerprint_der(der) })
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerIdentity {
    type Rejection = crate::ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<PeerIdentity>().cloned().ok_or_else(|| {
            crate::ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "this API needs a client certificate")
        })
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for PeerIdentity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<PeerIdentity>().cloned())
    }
}

/// The crypto provider of every configuration here, whatever the process default is.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM text, in order; at least one.
fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem { what: "certificate", reason: "no CERTIFICATE in the PEM text".into() });
    }
    Ok(certs)
}

fn first_cert(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, TlsError> {
    match CertificateDer::pem_slice_iter(pem.as_bytes()).next() {
        Some(cert) => cert.map_err(|e| pem_error(what, e)),
        None => Err(TlsError::Pem { what, reason: "no CERTIFICATE in the PEM text".into() }),
    }
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| pem_error("private key", e))
}

/// The trust store of a CA PEM text (one or more certificates).
fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_pem).map_err(|e| relabel(e, "CA certificate"))? {
        roots.add(cert).map_err(|e| TlsError::Pem { what: "CA certificate", reason: e.to_string() })?;
    }
    Ok(roots)
}

fn relabel(e: TlsError, what: &'static str) -> TlsError {
    match e {
        TlsError::Pem { reason, .. } => TlsError::Pem { what, reason },
        other => other,
    }
}

/// A subject alternative name: an IP address (brackets allowed around IPv6), else a DNS name.
fn san(name: &str) -> Result<SanType, TlsError> {
    if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |reason: String| TlsError::BadName { name: name.to_owned(), reason };
    rustls::pki_types::DnsName::try_from(name).map_err(|e| bad(e.to_string()))?;
    Ok(SanType::DnsName(name.try_into().map_err(|e: rcgen::Error| bad(e.to_string()))?))
}

/// The CA certificate's parameters, all derived from its key (so that the certificate can be
/// made again with the same name): `O=rbee, CN=rbee CA <first 8 hex of the key's SHA-256>`,
/// CA for end-entity certificates only (path length 0).
fn ca_params(key: &KeyPair) -> CertificateParams {
    let id = hex::encode(&sha2::Sha256::digest(key.der_bytes())[..4]);
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "rbee");
    params.distinguished_name.push(DnType::CommonName, format!("rbee CA {id}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = whole_seconds(now - BACKDATE).into();
    params.not_after = whole_seconds(now + CA_VALID_FOR).into();
    params
}

/// Whether `pem` is a CA certificate for `key`, valid for more than [`CA_RENEW_BEFORE`].
fn ca_cert_fits(pem: &str, key: &KeyPair) -> bool {
    let Ok(der) = first_cert(pem, "CA certificate") else { return false };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else { return false };
    let same_key = cert.public_key().subject_public_key.data.as_ref() == key.der_bytes();
    let renew_at = from_unix(cert.validity().not_after.timestamp()).checked_sub(CA_RENEW_BEFORE);
    same_key && cert.is_ca() && renew_at.is_some_and(|at| SystemTime::now() < at)
}

/// Makes `dir` (and its parents) with mode 0700, or makes an existing one 0700 if others may
/// enter it.
fn private_dir(dir: &Path) -> Result<(), TlsError> {
    let io = |source| TlsError::Io { path: dir.to_owned(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
    let mode = std::fs::metadata(dir).map_err(io)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// The contents of a private file (`None` if it does not exist); refused if others may read
/// or write it.
fn read_private(path: &Path) -> Result<Option<String>, TlsError> {
    let io = |source| TlsError::Io { path: path.to_owned(), source };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mode = file.metadata().map_err(io)?.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyExposed { path: path.to_owned(), mode });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    Ok(Some(text))
}

fn parse_key(pem: &str, path: &Path) -> Result<KeyPair, TlsError> {
    KeyPair::from_pem(pem).map_err(|e| TlsError::Pem { what: "CA key", reason: format!("{}: {e}", path.display()) })
}

/// `at` without its fraction of a second (what an X.509 time holds).
fn whole_seconds(at: SystemTime) -> SystemTime {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => at,
    }
}

fn from_unix(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

fn generate(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

fn config(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

fn pem_error(what: &'static str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { what, reason: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn names_are_ip_addresses_or_dns_names() {
        assert_eq!(san("127.0.0.1").unwrap(), SanType::IpAddress("127.0.0.1".parse().unwrap()));
        assert_eq!(san("[::1]").unwrap(), SanType::IpAddress("::1".parse().unwrap()));
        assert_eq!(san("::1").unwrap(), SanType::IpAddress("::1".parse().unwrap()));
        assert!(matches!(san("gpu-1.lan").unwrap(), SanType::DnsName(_)));
        for bad in ["", "two words", "a..b", "x/y"] {
            assert!(matches!(san(bad), Err(TlsError::BadName { .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn issued_certificates_say_when_they_end_and_who_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(&dir.path().join("ca")).unwrap();
        let before = SystemTime::now();
        let issued = ca.issue("hive-a", &["10.0.0.7".into(), "gpu-1.lan".into()], 90 * DAY, Usage::Both).unwrap();
        assert_eq!(not_after(&issued.cert_pem).unwrap(), issued.not_after);
        let lasts = issued.not_after.duration_since(before).unwrap();
        assert!(lasts > 90 * DAY - Duration::from_secs(2) && lasts <= 90 * DAY, "{lasts:?}");

        let der = first_cert(&issued.cert_pem, "certificate").unwrap();
        let identity = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(identity.common_name, "hive-a");
        assert_eq!(identity.fingerprint, fingerprint(&issued.cert_pem).unwrap());
        assert_eq!(identity.fingerprint.len(), 64);
        assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "Debug shows the key");
        assert!(!format!("{ca:?}").contains("PRIVATE KEY"));

        // Each certificate has its own key.
        let other = ca.issue("hive-a", &[], 90 * DAY, Usage::Client).unwrap();
        assert_ne!(other.key_pem, issued.key_pem);
        assert_ne!(fingerprint(&other.cert_pem).unwrap(), identity.fingerprint);
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let a = ca.issue("a", &["127.0.0.1".into()], DAY, Usage::Server).unwrap();
        let b = ca.issue("b", &["127.0.0.1".into()], DAY, Usage::Server).unwrap();
        assert!(matches!(server_config(&a.cert_pem, &b.key_pem, None), Err(TlsError::Config(_))));
        assert!(matches!(client_config(ca.cert_pem(), Some((&a.cert_pem, &b.key_pem))), Err(TlsError::Config(_))));
        assert!(server_config(&a.cert_pem, &a.key_pem, Some(ca.cert_pem())).is_ok());
        assert!(matches!(client_config("not a certificate", None), Err(TlsError::Pem { what: "CA certificate", .. })));
        assert!(matches!(not_after(""), Err(TlsError::Pem { .. })));
    }

    #[test]
    fn a_ca_certificate_that_does_not_fit_its_key_is_made_again_with_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let leaf = ca.issue("hive", &[], DAY, Usage::Client).unwrap();
        let other = tempfile::tempdir().unwrap();
        let foreign = Ca::load_or_create(other.path()).unwrap();
        std::fs::write(dir.path().join(CA_CERT_FILE), foreign.cert_pem()).unwrap();

        let again = Ca::load_or_create(dir.path()).unwrap();
        assert_ne!(again.cert_pem(), foreign.cert_pem());
        let subject = |pem: &str| {
            let der = first_cert(pem, "certificate").unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            (cert.subject().to_string(), cert.public_key().raw.to_vec())
        };
        assert_eq!(subject(again.cert_pem()), subject(ca.cert_pem()), "same name and key");
        // What the first certificate issued is still trusted under the new one.
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(again.cert_pem()).unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        let leaf = first_cert(&leaf.cert_pem, "certificate").unwrap();
        verifier.verify_client_cert(&leaf, &[], rustls::pki_types::UnixTime::now()).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(Ca::load_or_create(dir.path()), Err(TlsError::KeyExposed { mode: 0o640, .. })));
    }
}
