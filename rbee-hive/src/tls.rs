//! The hive's TLS identity, installed by a sync (`~/.local/state/rbee/tls/`: the queen's CA,
//! the hive's certificate and key). With it, the hive serves TLS to remote clients (the queen,
//! verified by the CA: a client certificate is required) and plain HTTP only to local ones (its
//! workers, the health probe), and sends its heartbeats over TLS, verifying the queen as
//! [`rbee_core::credentials::QUEEN_TLS_NAME`] and presenting its own certificate.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use rbee_core::layout::Layout;
use rbee_core::proto::hive::TlsState;
use rbee_http::tls;

/// A loaded identity.
#[derive(Clone)]
pub struct HiveTls {
    /// For serving.
    pub acceptor: tls::TlsAcceptor,
    /// For calling the queen.
    pub client: Arc<tls::rustls::ClientConfig>,
    /// What `/health` reports of it.
    pub state: TlsState,
}

impl std::fmt::Debug for HiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HiveTls").field("state", &self.state).finish_non_exhaustive()
    }
}

/// The identity under `home`; `None` when none is installed; an error when it is there but
/// cannot be used (the hive then does not start: serving plain HTTP to the network instead
/// would be worse).
pub fn load(home: &Path) -> Option<Result<HiveTls, String>> {
    let read = |rel: String| std::fs::read_to_string(home.join(&rel)).map_err(|e| format!("~/{rel}: {e}"));
    let ca = match read(Layout::hive_tls_ca()) {
        Ok(ca) => ca,
        Err(_) if !home.join(Layout::hive_tls_dir()).exists() => return None,
        Err(e) => return Some(Err(e)),
    };
    Some((|| {
        let cert = read(Layout::hive_tls_cert())?;
        let key = read(Layout::hive_tls_key())?;
        let server = tls::server_config(&cert, &key, Some(&ca)).map_err(|e| e.to_string())?;
        let client = tls::client_config(&ca, Some((&cert, &key))).map_err(|e| e.to_string())?;
        let not_after = tls::not_after(&cert).map_err(|e| e.to_string())?;
        let not_after_ms = not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let state = TlsState { ca: rbee_core::artifact::sha256_of(ca.as_bytes()), not_after_ms };
        Ok(HiveTls { acceptor: tls::TlsAcceptor::from(server), client, state })
    })())
}
