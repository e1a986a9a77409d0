//! From config to transports, and observing the whole fleet concurrently.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::{Config, HiveConfig, TransportKind, home_dir};
use crate::observe::observe;
use crate::state::{Actual, HiveState};
use crate::transport::{LocalTransport, Transport, TransportError};

/// Opens a transport to a hive. The default, [`LocalConnector`], handles local hives; an SSH
/// connector (or any custom one) plugs in here.
#[cfg_attr(test, mockall::automock)]
#[async_trait]
pub trait Connector: Send + Sync {
    /// A transport for this hive, or why there is none.
    async fn connect(&self, hive: &HiveConfig) -> Result<Arc<dyn Transport>, TransportError>;
}

/// Local hives through [`LocalTransport`] (in `local_home`, else `$HOME`); SSH hives are
/// refused with a message saying the SSH transport is not part of this build.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalConnector;

#[async_trait]
impl Connector for LocalConnector {
    async fn connect(&self, hive: &HiveConfig) -> Result<Arc<dyn Transport>, TransportError> {
        match hive.transport {
            TransportKind::Local => Ok(Arc::new(local_transport(hive))),
            TransportKind::Ssh => Err(TransportError::Unsupported("SSH transport not built yet".to_owned())),
        }
    }
}

/// The transport of a local hive.
pub fn local_transport(hive: &HiveConfig) -> LocalTransport {
    LocalTransport::new(hive.local_home.clone().unwrap_or_else(home_dir))
}

/// Open transports by alias, and why the others could not be opened.
#[derive(Default)]
pub struct Connections {
    /// Reachable hives.
    pub transports: BTreeMap<String, Arc<dyn Transport>>,
    /// Hives that could not be connected to, with the reason.
    pub failed: BTreeMap<String, String>,
}

/// Connects to the selected hives (all when `only` is `None`), all at once: one connection
/// per host for the whole sync.
pub async fn connect_fleet(config: &Config, connector: &dyn Connector, only: Option<&BTreeSet<String>>) -> Connections {
    let selected = config.hives.iter().filter(|h| only.is_none_or(|o| o.contains(&h.alias)));
    let results =
        join_all(selected.map(|hive| async move { (hive.alias.clone(), connector.connect(hive).await) })).await;
    let mut c = Connections::default();
    for (alias, result) in results {
        match result {
            Ok(t) => {
                c.transports.insert(alias, t);
            }
            Err(e) => {
                c.failed.insert(alias, e.to_string());
            }
        }
    }
    c
}

/// Observes every connected hive at once, each with one round trip; hives that could not be
/// connected or observed are unreachable, with the reason. Never a made-up state.
pub async fn observe_fleet(config: &Config, connections: &Connections, deadline: Duration) -> Actual {
    let tasks = connections.transports.iter().map(|(alias, t)| async move {
        let port = config.hive(alias).map_or(8600, |h| h.hive_port);
        (alias.clone(), observe(t.as_ref(), port, deadline).await)
    });
    let mut hives: BTreeMap<String, HiveState> = join_all(tasks).await.into_iter().collect();
    for (alias, reason) in &connections.failed {
        hives.insert(alias.clone(), HiveState::Unreachable { reason: reason.clone() });
    }
    Actual { hives }
}

/// Runs futures concurrently on the current task and returns their outputs in input order.
pub(crate) use futures_util::future::join_all;
