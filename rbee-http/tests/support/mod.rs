//! What the TLS and serve-loop tests share: deadlines, a fresh CA, a router that shows what
//! a handler sees of its client, and error chains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use rbee_http::tls::{Ca, PeerIdentity};

/// How long a step may take before the test fails: only reached when something is broken.
pub const HANG: Duration = Duration::from_secs(30);

pub const DAY: Duration = Duration::from_secs(24 * 3600);

/// A fresh CA in a temporary directory (removed with it).
pub fn new_ca() -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(&dir.path().join("ca")).unwrap();
    (dir, ca)
}

/// `/whoami` answers the client certificate's common name (401 without one), `/maybe` the
/// name or `none`, `/peer` the peer address; `served` counts the requests that reached a
/// handler.
pub fn router(served: Arc<AtomicUsize>) -> Router {
    let count = move || {
        served.fetch_add(1, Ordering::SeqCst);
    };
    let (a, b, c) = (count.clone(), count.clone(), count);
    Router::new()
        .route(
            "/whoami",
            get(move |identity: PeerIdentity| async move {
                a();
                identity.common_name
            }),
        )
        .route(
            "/maybe",
            get(move |identity: Option<PeerIdentity>| async move {
                b();
                identity.map_or_else(|| "none".to_owned(), |identity| identity.common_name)
            }),
        )
        .route(
            "/peer",
            get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                c();
                peer.to_string()
            }),
        )
}

/// The error's whole chain of causes, for messages and for checking what failed.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
