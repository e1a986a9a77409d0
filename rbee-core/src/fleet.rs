//! From config to transports, and observing the whole fleet concurrently.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, HiveConfig, TransportKind, home_dir};
use crate::observe::observe;
use crate::state::{Actual, HiveState};
use crate::transport::{LocalTransport, Transport, TransportError};

/// Opens a transport to a hive. The default, [`LocalConnector`], handles local hives; an SSH
/// connector (or any custom one) plugs in here.
pub trait Connector: Send + Sync {
    /// A transport for this hive, or why there is none.
    fn connect(&self, hive: &HiveConfig) -> Result<Arc<dyn Transport>, TransportError>;
}

/// Local hives through [`LocalTransport`] (in `local_home`, else `$HOME`); SSH hives are
/// refused with a message saying the SSH transport is not part of this build.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalConnector;

impl Connector for LocalConnector {
    fn connect(&self, hive: &HiveConfig) -> Result<Arc<dyn Transport>, TransportError> {
        match hive.transport {
            TransportKind::Local => Ok(Arc::new(LocalTransport::new(
                hive.local_home.clone().unwrap_or_else(home_dir),
            ))),
            TransportKind::Ssh => Err(TransportError::Unsupported(
                "SSH transport not built yet".to_owned(),
            )),
        }
    }
}

/// Observes the selected hives (all when `only` is `None`), all at once, each with one round
/// trip. Hives that cannot be reached are in the result as unreachable, with the reason.
pub async fn observe_fleet(
    config: &Config,
    connector: &dyn Connector,
    only: Option<&BTreeSet<String>>,
    deadline: Duration,
) -> Actual {
    let selected = config
        .hives
        .iter()
        .filter(|h| only.is_none_or(|o| o.contains(&h.alias)));
    let tasks = selected.map(|hive| async move {
        let state = match connector.connect(hive) {
            Ok(t) => observe(t.as_ref(), hive.hive_port, deadline).await,
            Err(e) => HiveState::Unreachable {
                reason: e.to_string(),
            },
        };
        (hive.alias.clone(), state)
    });
    let hives = join_all(tasks).await.into_iter().collect();
    Actual { hives }
}

/// Runs futures concurrently and returns their outputs in input order.
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}
