//! The hive registry: the queen's only knowledge of which hives exist, where they listen and
//! which workers they run.
//!
//! Nothing registers a hive but its own heartbeats, so a hive that stops beating fades out
//! (stale after three missed beats) instead of being trusted forever, and a hive that restarts
//! elsewhere is found at its new address by its next beat. Every check takes "now" as a
//! parameter so freshness can be reasoned about (and tested) without clocks or sleeps.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rbee_core::execute::now_ms;
use rbee_core::package::OperationResult;
use rbee_http::ApiError;

use crate::api::{Heartbeat, HiveEntry};
use crate::routes::Queen;
use rbee_core::proto::operation::HeartbeatAck;

/// A hive is stale once this many of its heartbeat intervals pass without a beat.
const MISSED_BEATS: u64 = 3;

// Reported intervals are clamped (`heartbeat_interval_ms`); the one each hive is told is
// paced by the fleet's size (`paced_interval_ms`).
use rbee_core::proto::operation::{heartbeat_interval_ms, paced_interval_ms};

/// The most hives the registry holds: 100,000. A heartbeat of a new hive beyond it replaces
/// the hive silent longest if that one is stale, and is refused otherwise.
pub(crate) const MAX_HIVES: usize = 100_000;

/// The most entries each list of one heartbeat may hold (worker processes, models, GPUs,
/// worker types, installed files): 10,000. A heartbeat with more is refused (413).
pub(crate) const MAX_LIST: usize = 10_000;

/// True if a hive that beats every `interval_ms` and was last heard `age_ms` ago is stale.
pub(crate) fn is_stale(age_ms: u64, interval_ms: u64) -> bool {
    age_ms > MISSED_BEATS.saturating_mul(interval_ms)
}

/// Why a hive cannot be reached through the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HiveError {
    /// It never sent a heartbeat to this queen.
    #[error(
        "no hive {alias} in the registry (known: {known}): it has not sent a heartbeat; run `rbee sync` or \
         `rbee hive start {alias}`"
    )]
    Unknown {
        /// The alias asked for.
        alias: String,
        /// The aliases the registry has, or `none`.
        known: String,
    },
    /// Its heartbeats stopped.
    #[error("hive {alias} is stale: its last heartbeat was {:.1}s ago; check it with `rbee hive status {alias}`", *age_ms as f64 / 1000.0)]
    Stale {
        /// Its alias.
        alias: String,
        /// Milliseconds since its last heartbeat.
        age_ms: u64,
    },
}

/// Why a heartbeat was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejected {
    /// One of its lists is longer than [`MAX_LIST`].
    #[error("the heartbeat of {alias} lists {len} {list}, more than the {max} the queen accepts")]
    TooLarge {
        /// The hive.
        alias: String,
        /// Which list.
        list: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The registry holds [`MAX_HIVES`] hives and none of them is stale.
    #[error("the queen's registry is full ({max} hives, none stale): the heartbeat of new hive {alias} was refused")]
    Full {
        /// The new hive.
        alias: String,
        /// The limit.
        max: usize,
    },
}

impl Rejected {
    fn status(&self) -> StatusCode {
        match self {
            Rejected::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejected::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// True when `a` and `b` list the same worker processes (by id) in the same states.
fn same_states(a: &Heartbeat, b: &Heartbeat) -> bool {
    a.processes.len() == b.processes.len()
        && a.processes.iter().zip(&b.processes).all(|(x, y)| x.id == y.id && x.state == y.state)
}

/// What [`Registry::try_record`] made of a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// The hive is new, was stale, or its worker processes changed state.
    pub(crate) changed: bool,
    /// The answer to the hive: when to beat next.
    pub(crate) ack: HeartbeatAck,
}

/// True when `beat` lists a worker process that is a deployment's replica.
fn has_replica(beat: &Heartbeat) -> bool {
    beat.processes.iter().any(|p| p.replica.is_some())
}

/// A hive as last heard from.
struct Hive {
    /// When its last heartbeat arrived (ms since the epoch).
    seen_ms: u64,
    /// Where its heartbeats come from: its API is at this address and the heartbeat's port.
    ip: IpAddr,
    /// Shared with `GET /v1/hives` answers and routing, which read it without copying it.
    beat: Arc<Heartbeat>,
    /// The interval the queen told it in answer to that beat.
    told_ms: u64,
    /// Its row of `GET /v1/hives?fields=table` but for the age and staleness (see
    /// [`table_prefix`]), written once per beat rather than once per listing.
    table: Arc<[u8]>,
}

impl Hive {
    fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.seen_ms)
    }

    /// The longer of the interval it says it beats at and the one it was told: a hive told a
    /// longer interval beats next after that one.
    fn interval_ms(&self) -> u64 {
        self.beat.interval_ms.max(self.told_ms)
    }

    fn is_stale(&self, now_ms: u64) -> bool {
        is_stale(self.age_ms(now_ms), self.interval_ms())
    }

    fn is_fresh(&self, now_ms: u64) -> bool {
        !self.is_stale(now_ms)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.beat.port)
    }
}

/// Every hive that sent a heartbeat, by alias.
pub(crate) struct Registry {
    hives: Mutex<BTreeMap<String, Hive>>,
    /// When the queen started (ms since the epoch).
    started_ms: u64,
    /// How long after start the registry may still be missing hives that reported to a
    /// previous queen: the configured interval and a second, longer once a beat says its hive
    /// beats less often (a previous queen paced it).
    warmup_ms: std::sync::atomic::AtomicU64,
    /// The configured heartbeat interval.
    base_ms: u64,
    /// `[queen] max_heartbeats_per_second`.
    per_second: u32,
    /// How many hives list a replica ([`has_replica`]), kept as beats and results change them
    /// (under the registry's lock), so the reconciler learns "none" without reading every hive.
    replica_hives: std::sync::atomic::AtomicUsize,
    /// [`MAX_HIVES`], smaller in tests.
    max_hives: usize,
    /// [`MAX_LIST`], smaller in tests.
    max_list: usize,
}

impl Registry {
    /// An empty registry for a queen started at `started_ms` whose hives beat every
    /// `heartbeat_ms`.
    pub(crate) fn new(started_ms: u64, heartbeat_ms: u64) -> Self {
        Self {
            hives: Mutex::new(BTreeMap::new()),
            started_ms,
            warmup_ms: std::sync::atomic::AtomicU64::new(heartbeat_ms.saturating_add(1000)),
            base_ms: heartbeat_ms,
            per_second: rbee_core::proto::operation::DEFAULT_MAX_HEARTBEATS_PER_SECOND,
            replica_hives: std::sync::atomic::AtomicUsize::new(0),
            max_hives: MAX_HIVES,
            max_list: MAX_LIST,
        }
    }

    /// The same registry asking at most `per_second` heartbeats a second of its hives.
    pub(crate) fn with_pacing(self, per_second: u32) -> Self {
        Self { per_second: per_second.max(1), ..self }
    }

    /// The same registry with other limits than [`MAX_HIVES`] and [`MAX_LIST`].
    #[cfg(test)]
    pub(crate) fn with_limits(self, max_hives: usize, max_list: usize) -> Self {
        Self { max_hives, max_list, ..self }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Hive>> {
        rbee_core::locked(&self.hives)
    }

    /// [`Self::try_record`] for tests, where every beat is accepted.
    #[cfg(test)]
    pub(crate) fn record(&self, beat: Heartbeat, ip: IpAddr, now_ms: u64) -> bool {
        self.try_record(beat, ip, now_ms).expect("heartbeat accepted").changed
    }

    /// Takes `beat`, heard from `ip` at `now_ms`, as the hive's whole current state: a hive that
    /// restarted (new port, pid or address) replaces its old entry.
    /// Says whether the hive is new or its worker processes changed state, and when it should
    /// beat next ([`paced_interval_ms`] for the registry's size). Refuses a beat
    /// with a list longer than [`MAX_LIST`], and a new hive when the registry holds
    /// [`MAX_HIVES`] and none of them is stale (else the one silent longest makes room).
    pub(crate) fn try_record(&self, mut beat: Heartbeat, ip: IpAddr, now_ms: u64) -> Result<Recorded, Rejected> {
        let lists = [
            ("worker processes", beat.processes.len()),
            ("models", beat.models.len()),
            ("GPUs", beat.gpus.len()),
            ("worker types", beat.workers.len()),
            ("installed files", beat.installed.len()),
        ];
        if let Some((list, len)) = lists.into_iter().find(|(_, len)| *len > self.max_list) {
            return Err(Rejected::TooLarge { alias: beat.alias, list, len, max: self.max_list });
        }
        // A hostile or broken interval (0, or u64::MAX) must not make a hive fresh forever or
        // stale at once.
        beat.interval_ms = heartbeat_interval_ms(beat.interval_ms);
        self.warmup_ms.fetch_max(beat.interval_ms.saturating_add(1000), std::sync::atomic::Ordering::Relaxed);
        let table = table_prefix(&beat);
        let mut hives = self.lock();
        if hives.len() >= self.max_hives && !hives.contains_key(&beat.alias) {
            let silent_longest = hives
                .iter()
                .filter(|(_, h)| !h.is_fresh(now_ms))
                .min_by_key(|(_, h)| h.seen_ms)
                .map(|(alias, _)| alias.clone());
            match silent_longest {
                Some(alias) => {
                    if let Some(gone) = hives.remove(&alias) {
                        self.count_replicas(has_replica(&gone.beat), false);
                    }
                }
                None => return Err(Rejected::Full { alias: beat.alias, max: self.max_hives }),
            }
        }
        let fleet = hives.len() + usize::from(!hives.contains_key(&beat.alias));
        let told_ms = paced_interval_ms(self.base_ms, fleet, self.per_second);
        let new = Hive { seen_ms: now_ms, ip, beat: Arc::new(beat), told_ms, table };
        let changed = match hives.get_mut(&new.beat.alias) {
            Some(old) => {
                let changed = !same_states(&old.beat, &new.beat) || !old.is_fresh(now_ms);
                self.count_replicas(has_replica(&old.beat), has_replica(&new.beat));
                // The beat it replaces is freed after the lock is released.
                let old = std::mem::replace(old, new);
                drop(hives);
                drop(old);
                changed
            }
            None => {
                self.count_replicas(false, has_replica(&new.beat));
                hives.insert(new.beat.alias.clone(), new);
                true
            }
        };
        Ok(Recorded { changed, ack: HeartbeatAck { interval_ms: told_ms } })
    }

    /// Every hive, fresh or stale, as `GET /v1/hives` lists it, sharing the heartbeats: the
    /// lock is held only to count references.
    fn listed(&self, now_ms: u64) -> Vec<Listed> {
        self.lock()
            .values()
            .map(|hive| {
                let age_ms = hive.age_ms(now_ms);
                Listed {
                    heartbeat: hive.beat.clone(),
                    age_ms,
                    stale: is_stale(age_ms, hive.interval_ms()),
                    address: hive.ip,
                    table: hive.table.clone(),
                }
            })
            .collect()
    }

    /// Every hive, fresh or stale, as `GET /v1/hives` shows it.
    pub(crate) fn entries(&self, now_ms: u64) -> Vec<HiveEntry> {
        self.lock()
            .values()
            .map(|hive| {
                let age_ms = hive.age_ms(now_ms);
                HiveEntry {
                    stale: is_stale(age_ms, hive.interval_ms()),
                    age_ms,
                    heartbeat: Heartbeat::clone(&hive.beat),
                    address: hive.ip.to_string(),
                }
            })
            .collect()
    }

    /// True when the hive said it serves TLS (the queen then calls it over https).
    pub(crate) fn tls(&self, alias: &str) -> bool {
        self.lock().get(alias).is_some_and(|h| h.beat.tls)
    }

    /// The hive's API address, stale or not (for questions a stale hive may still answer).
    pub(crate) fn addr(&self, alias: &str) -> Option<SocketAddr> {
        self.lock().get(alias).map(Hive::addr)
    }

    /// The hive's API address, if it is in the registry and fresh at `now_ms`.
    pub(crate) fn fresh_addr(&self, alias: &str, now_ms: u64) -> Result<SocketAddr, HiveError> {
        let hives = self.lock();
        let Some(hive) = hives.get(alias) else {
            let known: Vec<&str> = hives.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            return Err(HiveError::Unknown { alias: alias.to_owned(), known });
        };
        if !hive.is_fresh(now_ms) {
            return Err(HiveError::Stale { alias: alias.to_owned(), age_ms: hive.age_ms(now_ms) });
        }
        Ok(hive.addr())
    }

    /// The last heartbeat of every hive fresh at `now_ms`, in alias order.
    pub(crate) fn fresh(&self, now_ms: u64) -> Vec<Arc<Heartbeat>> {
        self.lock().values().filter(|h| h.is_fresh(now_ms)).map(|h| h.beat.clone()).collect()
    }

    /// True when some hive reports a worker process that is a deployment's replica.
    pub(crate) fn any_replica(&self) -> bool {
        self.replica_hives.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    /// When the queen started (ms since the epoch).
    pub(crate) fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// True during the queen's first heartbeat interval (plus a second), while hives that
    /// reported to a previous queen are still finding this one: a missing hive may yet appear.
    pub(crate) fn warming_up(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.started_ms) < self.warmup_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A forwarded operation's answer about worker processes updates the registry at once, so
    /// a command right after `rbee worker spawn` sees the worker without waiting for a
    /// heartbeat.
    pub(crate) fn note_result(&self, alias: &str, result: &OperationResult) {
        let mut hives = self.lock();
        let Some(hive) = hives.get_mut(alias) else { return };
        let had_replica = has_replica(&hive.beat);
        // Copied first if an answer or a route still holds the beat.
        let beat = Arc::make_mut(&mut hive.beat);
        // Within the same limit as heartbeats.
        let max = self.max_list;
        match result {
            OperationResult::Workers { workers, .. } => beat.processes = workers.iter().take(max).cloned().collect(),
            OperationResult::Worker { worker, .. } => {
                beat.processes.retain(|p| p.id != worker.id);
                // A stopped or cleared (crashed, then deleted) worker is gone from its hive.
                if worker.state.is_alive() && beat.processes.len() < max {
                    beat.processes.push((**worker).clone());
                }
            }
            OperationResult::Catalog { workers, .. } => beat.workers = workers.iter().take(max).cloned().collect(),
            OperationResult::Model { model, .. } => {
                beat.models.retain(|m| m.name != model.name);
                if beat.models.len() < max {
                    beat.models.push(model.clone());
                }
            }
            _ => {}
        }
        self.count_replicas(had_replica, has_replica(beat));
    }

    /// Keeps [`Self::replica_hives`] as a hive goes from having a replica (`had`) to `has`.
    /// Called with the registry's lock held.
    fn count_replicas(&self, had: bool, has: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        match (had, has) {
            (false, true) => self.replica_hives.fetch_add(1, Relaxed),
            (true, false) => self.replica_hives.fetch_sub(1, Relaxed),
            _ => 0,
        };
    }
}

/// `POST /v1/heartbeats`: the hive's address is taken from the connection, not from the beat,
/// so the queen reaches it the way it reached the queen. A beat beyond the registry's limits
/// is refused: 413 for an oversized list, 503 when the registry is full.
pub(crate) async fn heartbeat(
    State(queen): State<Arc<Queen>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(beat): Json<Heartbeat>,
) -> Response {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if !queen.trust.is_hive(&beat.alias, given) {
        let msg = format!(
            "a heartbeat for hive {} without its credential: run `rbee sync` to link that hive to this queen",
            beat.alias
        );
        return ApiError::new(StatusCode::UNAUTHORIZED, msg).into_response();
    }
    match queen.registry.try_record(beat, peer.ip(), now_ms()) {
        Ok(recorded) => {
            if recorded.changed {
                queen.deployments.wake.notify_one();
            }
            Json(recorded.ack).into_response()
        }
        Err(rejected) => ApiError::new(rejected.status(), rejected.to_string()).into_response(),
    }
}

/// A [`HiveEntry`] as `GET /v1/hives` writes it (the same JSON), sharing the heartbeat.
#[derive(serde::Serialize)]
struct Listed {
    #[serde(flatten)]
    heartbeat: Arc<Heartbeat>,
    age_ms: u64,
    stale: bool,
    address: IpAddr,
    #[serde(skip)]
    table: Arc<[u8]>,
}

/// `GET /v1/hives` is written in pieces of about this size, so that a large registry's answer
/// is never whole in memory.
const LIST_CHUNK_BYTES: usize = 64 << 10;

/// What `rbee hive list` shows of a hive (`GET /v1/hives?fields=table`): a [`HiveEntry`]
/// without its GPUs, models, installed versions, digest and address, about half its size —
/// these fields, then `age_ms` and `stale`.
#[derive(serde::Serialize)]
struct TableRow<'a> {
    alias: &'a str,
    version: &'a str,
    pid: u32,
    port: u16,
    workers: &'a [String],
    processes: &'a [rbee_core::proto::hive::WorkerProcess],
}

/// `beat`'s [`TableRow`] as JSON without its closing brace: the listing appends the age and
/// staleness of the moment and closes it.
fn table_prefix(beat: &Heartbeat) -> Arc<[u8]> {
    let row = TableRow {
        alias: &beat.alias,
        version: &beat.version,
        pid: beat.pid,
        port: beat.port,
        workers: &beat.workers,
        processes: &beat.processes,
    };
    // Plain data serialised into memory: this does not fail, and ends with its `}`.
    let mut json = serde_json::to_vec(&row).unwrap_or_else(|_| b"{}".to_vec());
    json.pop();
    json.into()
}

/// `GET /v1/hives`'s query: `fields=table` for [`TableRow`]s (with their age and staleness)
/// instead of whole entries.
#[derive(serde::Deserialize)]
pub(crate) struct HivesQuery {
    fields: Option<String>,
}

/// `GET /v1/hives`: every hive that sent a heartbeat, stale ones included, so a hive that went
/// quiet shows as stale rather than vanishing. A JSON array of [`HiveEntry`] (with
/// `?fields=table`, of the fields `rbee hive list` shows), written as the client reads it from
/// a snapshot of the registry that shares the heartbeats.
pub(crate) async fn hives(State(queen): State<Arc<Queen>>, Query(query): Query<HivesQuery>) -> Response {
    let table = match query.fields.as_deref() {
        None => false,
        Some("table") => true,
        Some(other) => {
            let msg = format!("fields={other:?}: the only value is `table` (or leave it out for whole entries)");
            return ApiError::new(StatusCode::BAD_REQUEST, msg).into_response();
        }
    };
    let chunks = list_chunks(queen.registry.listed(now_ms()), LIST_CHUNK_BYTES, table);
    let body = axum::body::Body::from_stream(futures_util::stream::iter(
        chunks.map(|chunk| Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk))),
    ));
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `listed` as a JSON array, in pieces of about `chunk_bytes` (one entry more at most).
fn list_chunks(listed: Vec<Listed>, chunk_bytes: usize, table: bool) -> impl Iterator<Item = Vec<u8>> {
    let mut next = 0;
    std::iter::from_fn(move || {
        if next > listed.len() {
            return None;
        }
        let mut chunk = Vec::with_capacity(chunk_bytes + chunk_bytes / 4);
        if next == 0 {
            chunk.push(b'[');
        }
        let first = next;
        // At least one entry a piece, however small `chunk_bytes`.
        while next < listed.len() && (next == first || chunk.len() < chunk_bytes) {
            if next > 0 {
                chunk.push(b',');
            }
            // Plain data serialised into memory: this does not fail.
            if table {
                use std::io::Write;
                let l = &listed[next];
                chunk.extend_from_slice(&l.table);
                let _ = write!(chunk, ",\"age_ms\":{},\"stale\":{}}}", l.age_ms, l.stale);
            } else {
                serde_json::to_writer(&mut chunk, &listed[next]).unwrap_or_default();
            }
            next += 1;
        }
        if next == listed.len() {
            chunk.push(b']');
            next += 1;
        }
        Some(chunk)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rbee_core::proto::hive::{WorkerProcess, WorkerState};
    use rbee_core::proto::operation::{
        MAX_HEARTBEAT_INTERVAL_MS as MAX_INTERVAL_MS, MIN_HEARTBEAT_INTERVAL_MS as MIN_INTERVAL_MS,
    };

    pub(crate) const INTERVAL_MS: u64 = 1000;

    /// A heartbeat from `alias` on `port` with these worker processes.
    pub(crate) fn beat(alias: &str, port: u16, processes: Vec<WorkerProcess>) -> Heartbeat {
        Heartbeat {
            tls: false,
            alias: alias.into(),
            version: "0.0.0".into(),
            sha256: rbee_core::Sha256::from_bytes([0; 32]),
            pid: 42,
            port,
            interval_ms: INTERVAL_MS,
            workers: vec!["llama-cpp".into()],
            installed: BTreeMap::new(),
            home: String::new(),
            processes,
            gpus: Vec::new(),
            models: Vec::new(),
        }
    }

    pub(crate) fn worker(id: &str, model: &str, state: WorkerState) -> WorkerProcess {
        WorkerProcess {
            id: id.into(),
            worker_type: "llama-cpp".into(),
            model: model.into(),
            device: "cpu".into(),
            port: 9000,
            pid: 7,
            started_ms: 0,
            last_heartbeat_ms: None,
            adopted: false,
            replica: None,
            args: Vec::new(),
            state,
        }
    }

    pub(crate) fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    /// `GET /v1/hives` writes the registry in pieces, from heartbeats it shares: the same JSON
    /// as the entries, whole, however it is cut.
    #[test]
    fn hives_are_listed_in_pieces_as_entries() {
        let registry = Registry::new(0, INTERVAL_MS);
        let as_entries = |chunks: Vec<Vec<u8>>| -> Vec<HiveEntry> { serde_json::from_slice(&chunks.concat()).unwrap() };
        assert_eq!(list_chunks(registry.listed(0), 10, false).collect::<Vec<_>>(), vec![b"[]".to_vec()]);
        for i in 0..7u8 {
            let processes = (0..i).map(|k| worker(&format!("w{k}"), "m", WorkerState::Ready)).collect();
            registry.record(beat(&format!("hive-{i}"), 7000 + u16::from(i), processes), ip(i), 1_000 * u64::from(i));
        }
        let entries = registry.entries(8_000);
        assert!(entries.iter().any(|e| e.stale) && entries.iter().any(|e| !e.stale));
        for chunk_bytes in [1, 300, 1 << 20] {
            let chunks: Vec<Vec<u8>> = list_chunks(registry.listed(8_000), chunk_bytes, false).collect();
            assert_eq!(chunks.len() > 1, chunk_bytes < 1 << 20, "{chunk_bytes}: {} pieces", chunks.len());
            assert_eq!(as_entries(chunks), entries, "pieces of {chunk_bytes} bytes");
        }
        let whole = serde_json::to_vec(&entries).unwrap();
        assert_eq!(list_chunks(registry.listed(8_000), 1 << 20, false).next().unwrap(), whole, "byte for byte");

        // The table's fields only: every entry's, nothing else.
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&list_chunks(registry.listed(8_000), 300, true).collect::<Vec<_>>().concat())
                .unwrap();
        assert_eq!(rows.len(), entries.len());
        for (row, entry) in rows.iter().zip(&entries) {
            let keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["age_ms", "alias", "pid", "port", "processes", "stale", "version", "workers"]);
            assert_eq!(row["alias"], entry.heartbeat.alias);
            assert_eq!(row["version"], entry.heartbeat.version);
            assert_eq!((row["pid"].as_u64(), row["port"].as_u64()), (Some(42), Some(u64::from(entry.heartbeat.port))));
            assert_eq!(row["workers"], serde_json::to_value(&entry.heartbeat.workers).unwrap());
            assert_eq!(row["age_ms"], entry.age_ms);
            assert_eq!(row["stale"], entry.stale);
            assert_eq!(row["processes"], serde_json::to_value(&entry.heartbeat.processes).unwrap());
        }
    }

    /// `interval_ms = u64::MAX` kept a dead hive fresh for good (and overflowed the staleness
    /// check); intervals are clamped where they enter.
    #[test]
    fn hostile_heartbeat_intervals_are_clamped() {
        let registry = Registry::new(0, INTERVAL_MS);
        let mut wild = beat("wild", 1, Vec::new());
        wild.interval_ms = u64::MAX;
        registry.record(wild, ip(1), 1_000);
        let later = 1_000 + 3 * MAX_INTERVAL_MS + 1;
        assert!(registry.fresh(later).is_empty(), "a silent hive must go stale");
        let mut zero = beat("zero", 2, Vec::new());
        zero.interval_ms = 0;
        registry.record(zero, ip(2), 1_000);
        let fresh = registry.fresh(1_000);
        let zero = fresh.iter().find(|b| b.alias == "zero").expect("zero is fresh when it beats");
        assert_eq!(zero.interval_ms, MIN_INTERVAL_MS);
        // Judged by the interval it was told, the registry's (it beats faster than asked).
        assert!(registry.fresh(1_000 + 3 * INTERVAL_MS).iter().any(|b| b.alias == "zero"));
        assert!(registry.fresh(1_000 + 3 * INTERVAL_MS + 1).iter().all(|b| b.alias != "zero"));
    }

    /// A heartbeat listing millions of workers or models was kept whole: lists beyond the limit
    /// are refused (413), and a forwarded result cannot grow them past it either.
    #[test]
    fn oversized_heartbeats_are_refused() {
        let registry = Registry::new(0, INTERVAL_MS).with_limits(MAX_HIVES, 3);
        let many = (0..4).map(|i| worker(&format!("w{i}"), "m", WorkerState::Ready)).collect();
        let err = registry.try_record(beat("big", 1, many), ip(1), 0).unwrap_err();
        assert_eq!(err, Rejected::TooLarge { alias: "big".into(), list: "worker processes", len: 4, max: 3 });
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.to_string().contains("lists 4 worker processes, more than the 3"), "{err}");
        let mut types = beat("big", 1, Vec::new());
        types.workers = (0..4).map(|i| format!("type-{i}")).collect();
        assert!(matches!(registry.try_record(types, ip(1), 0), Err(Rejected::TooLarge { list: "worker types", .. })));
        assert!(registry.entries(0).is_empty(), "nothing of a refused beat is kept");

        let three = (0..3).map(|i| worker(&format!("w{i}"), "m", WorkerState::Ready)).collect();
        assert_eq!(registry.try_record(beat("ok", 1, three), ip(1), 0).map(|r| r.changed), Ok(true));
        let listed: Vec<WorkerProcess> = (0..10).map(|i| worker(&format!("x{i}"), "m", WorkerState::Ready)).collect();
        registry.note_result("ok", &OperationResult::Workers { hive: "ok".into(), workers: listed });
        assert_eq!(registry.fresh(0)[0].processes.len(), 3);
        let one_more = worker("y", "m", WorkerState::Ready);
        registry.note_result("ok", &OperationResult::Worker { hive: "ok".into(), worker: Box::new(one_more) });
        assert_eq!(registry.fresh(0)[0].processes.len(), 3);
    }

    /// Heartbeats under ever new aliases grew the registry without bound: it holds at most
    /// its limit, making room by forgetting the hive silent longest once that one is stale.
    #[test]
    fn the_registry_holds_at_most_its_limit_of_hives() {
        let registry = Registry::new(0, INTERVAL_MS).with_limits(2, MAX_LIST);
        assert_eq!(registry.try_record(beat("a", 1, vec![]), ip(1), 0).map(|r| r.changed), Ok(true));
        assert_eq!(registry.try_record(beat("b", 2, vec![]), ip(2), 500).map(|r| r.changed), Ok(true));
        let err = registry.try_record(beat("c", 3, vec![]), ip(3), 1_000).unwrap_err();
        assert_eq!(err, Rejected::Full { alias: "c".into(), max: 2 });
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(registry.try_record(beat("a", 1, vec![]), ip(1), 1_000).is_ok(), "known hives still beat");

        // Later "b" is stale (silent since 500), "a" too but heard later: "b" makes room.
        let later = 1_000 + 3 * INTERVAL_MS + 1;
        assert_eq!(registry.try_record(beat("c", 3, vec![]), ip(3), later).map(|r| r.changed), Ok(true));
        let aliases: Vec<String> = registry.entries(later).into_iter().map(|e| e.heartbeat.alias).collect();
        assert_eq!(aliases, vec!["a", "c"]);
    }

    /// A panic while the registry's lock was held (in any handler) must not take the registry
    /// down with it.
    #[test]
    fn the_registry_survives_a_poisoned_lock() {
        let registry = std::sync::Arc::new(Registry::new(0, INTERVAL_MS));
        let r = registry.clone();
        let _ = std::thread::spawn(move || {
            let _guard = r.hives.lock().unwrap();
            panic!("a handler panicked while holding the registry");
        })
        .join();
        assert!(registry.hives.is_poisoned());
        registry.record(beat("after", 3, Vec::new()), ip(3), 1_000);
        assert_eq!(registry.fresh(1_000).len(), 1);
    }

    #[test]
    fn stale_only_after_three_missed_intervals() {
        assert!(!is_stale(0, 1000));
        assert!(!is_stale(3000, 1000), "exactly three intervals is still fresh");
        assert!(is_stale(3001, 1000));
        assert!(!is_stale(u64::MAX, u64::MAX), "a huge interval must not overflow into staleness");
    }

    #[test]
    fn heartbeat_registers_a_hive_and_later_beats_update_it() {
        let registry = Registry::new(0, INTERVAL_MS);
        assert!(registry.entries(0).is_empty());

        registry.record(beat("alpha", 7000, vec![]), ip(1), 10_000);
        let entries = registry.entries(10_500);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].heartbeat.alias, "alpha");
        assert_eq!(entries[0].age_ms, 500);
        assert!(!entries[0].stale);
        assert_eq!(entries[0].address, "10.0.0.1");
        assert_eq!(registry.fresh_addr("alpha", 10_500), Ok(SocketAddr::new(ip(1), 7000)));

        let mut next = beat("alpha", 7000, vec![worker("w1", "m", WorkerState::Ready)]);
        next.pid = 43;
        registry.record(next.clone(), ip(1), 11_000);
        let entries = registry.entries(11_000);
        assert_eq!(entries.len(), 1, "a second beat updates the entry, not adds one");
        assert_eq!(entries[0].heartbeat, next);
        assert_eq!(entries[0].age_ms, 0);
    }

    #[test]
    fn hive_goes_stale_after_three_missed_beats() {
        let registry = Registry::new(0, INTERVAL_MS);
        registry.record(beat("alpha", 7000, vec![]), ip(1), 10_000);

        let at_limit = 10_000 + 3 * INTERVAL_MS;
        assert!(!registry.entries(at_limit)[0].stale);
        assert!(registry.fresh_addr("alpha", at_limit).is_ok());
        assert_eq!(registry.fresh(at_limit).len(), 1);

        let past = at_limit + 1;
        let entry = &registry.entries(past)[0];
        assert!(entry.stale, "stale hives stay listed, marked stale");
        assert_eq!(entry.age_ms, 3001);
        assert!(registry.fresh(past).is_empty());
        let err = registry.fresh_addr("alpha", past).unwrap_err();
        assert_eq!(err, HiveError::Stale { alias: "alpha".into(), age_ms: 3001 });
        assert!(err.to_string().contains("3.0s ago"), "{err}");
        assert!(err.to_string().contains("`rbee hive status alpha`"), "{err}");
        assert_eq!(registry.addr("alpha"), Some(SocketAddr::new(ip(1), 7000)), "a stale hive can still be asked");
    }

    #[test]
    fn hive_that_re_registers_replaces_its_old_entry() {
        let registry = Registry::new(0, INTERVAL_MS);
        registry.record(beat("alpha", 7000, vec![worker("w1", "m", WorkerState::Ready)]), ip(1), 1_000);
        registry.record(beat("beta", 7001, vec![]), ip(2), 1_000);
        assert!(registry.fresh_addr("alpha", 60_000).is_err(), "stale before it comes back");

        // Restarted on another host and port, without its old workers.
        registry.record(beat("alpha", 7100, vec![]), ip(9), 60_000);
        assert_eq!(registry.fresh_addr("alpha", 60_000), Ok(SocketAddr::new(ip(9), 7100)));
        let entries = registry.entries(60_000);
        assert_eq!(entries.len(), 2);
        let alpha = entries.iter().find(|e| e.heartbeat.alias == "alpha").expect("alpha listed");
        assert!(!alpha.stale);
        assert!(alpha.heartbeat.processes.is_empty(), "old workers are forgotten");
        let beta = entries.iter().find(|e| e.heartbeat.alias == "beta").expect("beta listed");
        assert!(beta.stale, "the other hive is untouched");
    }

    #[test]
    fn unknown_hive_names_the_known_ones() {
        let registry = Registry::new(0, INTERVAL_MS);
        let err = registry.fresh_addr("alpha", 0).unwrap_err();
        assert_eq!(err, HiveError::Unknown { alias: "alpha".into(), known: "none".into() });
        assert!(err.to_string().contains("`rbee hive start alpha`"), "{err}");

        registry.record(beat("beta", 7001, vec![]), ip(2), 0);
        registry.record(beat("gamma", 7002, vec![]), ip(3), 0);
        let err = registry.fresh_addr("alpha", 0).unwrap_err();
        assert!(err.to_string().contains("(known: beta, gamma)"), "{err}");
        assert_eq!(registry.addr("alpha"), None);
    }

    #[test]
    fn warming_up_lasts_one_interval_and_a_second() {
        let registry = Registry::new(100_000, 5000);
        assert!(registry.warming_up(100_000));
        assert!(registry.warming_up(105_999));
        assert!(!registry.warming_up(106_000));
    }

    #[test]
    fn a_large_fleet_is_told_a_longer_interval_and_judged_by_it() {
        // 100 beats a second: up to 500 hives keep the 5 s interval.
        assert_eq!(paced_interval_ms(5000, 1, 100), 5000);
        assert_eq!(paced_interval_ms(5000, 500, 100), 5000);
        assert_eq!(paced_interval_ms(5000, 501, 100), 5010);
        assert_eq!(paced_interval_ms(5000, 10_000, 100), 100_000);
        assert_eq!(paced_interval_ms(5000, 100_000, 1), MAX_INTERVAL_MS, "never beyond the longest interval");
        assert_eq!(paced_interval_ms(0, 0, 0), MIN_INTERVAL_MS, "never below the shortest, never a division by 0");

        // At 2 beats a second and a 1 s interval, the third hive makes it 1.5 s.
        let registry = Registry::new(0, 1000).with_pacing(2);
        let told =
            |alias: &str, at: u64| registry.try_record(beat(alias, 1, vec![]), ip(1), at).unwrap().ack.interval_ms;
        assert_eq!(told("a", 0), 1000);
        assert_eq!(told("b", 0), 1000);
        assert_eq!(told("c", 0), 1500);
        // Each hive is judged by what it was told: c is fresh for three of its 1.5 s.
        assert!(registry.fresh_addr("c", 4_500).is_ok());
        assert!(registry.fresh_addr("c", 4_501).is_err());
        assert!(registry.fresh_addr("a", 3_001).is_err(), "a was told 1 s");
        // Told again when it beats next: the fleet is 3 now.
        assert_eq!(told("a", 3_100), 1500);
    }

    /// The reconciler asks twice a second whether any hive runs a replica: the answer is kept
    /// as beats, results and evictions change it, not read from every hive.
    #[test]
    fn whether_any_hive_runs_a_replica_follows_beats_results_and_evictions() {
        let registry = Registry::new(0, INTERVAL_MS).with_limits(2, MAX_LIST);
        let mut replica = worker("r1", "m", WorkerState::Ready);
        replica.replica = Some(rbee_core::proto::deployment::ReplicaLabel {
            deployment: "d".into(),
            spec_hash: "h".into(),
            worker_version: None,
        });
        registry.record(beat("a", 1, vec![worker("w1", "m", WorkerState::Ready)]), ip(1), 0);
        assert!(!registry.any_replica());
        registry.record(beat("a", 1, vec![replica.clone()]), ip(1), 100);
        registry.record(beat("b", 2, vec![replica.clone()]), ip(2), 100);
        assert!(registry.any_replica());
        registry.record(beat("a", 1, vec![]), ip(1), 200);
        assert!(registry.any_replica(), "b still runs one");
        let mut stopped = replica.clone();
        stopped.state = WorkerState::Stopped;
        registry.note_result("b", &OperationResult::Worker { hive: "b".into(), worker: Box::new(stopped) });
        assert!(!registry.any_replica(), "its replica stopped");
        registry.note_result("b", &OperationResult::Worker { hive: "b".into(), worker: Box::new(replica.clone()) });
        assert!(registry.any_replica());
        // b goes stale and is evicted by a new hive: its replica goes with it.
        let later = 100 + 3 * INTERVAL_MS + 1_000;
        registry.record(beat("a", 1, vec![]), ip(1), later);
        registry.record(beat("c", 3, vec![]), ip(3), later);
        assert!(registry.addr("b").is_none(), "b was evicted");
        assert!(!registry.any_replica());
    }

    #[test]
    fn a_paced_beat_lengthens_the_warmup_of_a_restarted_queen() {
        let registry = Registry::new(100_000, 5000);
        let mut slow = beat("slow", 1, vec![]);
        slow.interval_ms = 100_000;
        registry.record(slow, ip(1), 100_500);
        assert!(registry.warming_up(200_999), "a hive a previous queen paced at 100 s may still appear");
        assert!(!registry.warming_up(201_000));
    }

    #[test]
    fn worker_results_update_processes_before_the_next_heartbeat() {
        let registry = Registry::new(0, INTERVAL_MS);
        registry.record(beat("alpha", 7000, vec![worker("w1", "m", WorkerState::Starting)]), ip(1), 0);
        let processes = |r: &Registry| r.fresh(0)[0].processes.clone();

        let ready = worker("w1", "m", WorkerState::Ready);
        registry
            .note_result("alpha", &OperationResult::Worker { hive: "alpha".into(), worker: Box::new(ready.clone()) });
        assert_eq!(processes(&registry), vec![ready.clone()], "the spawned worker replaces its old record");

        let stopped = worker("w1", "m", WorkerState::Stopped);
        registry.note_result("alpha", &OperationResult::Worker { hive: "alpha".into(), worker: Box::new(stopped) });
        assert!(processes(&registry).is_empty(), "a stopped worker is dropped");

        let listed = vec![worker("w2", "m", WorkerState::Ready), worker("w3", "n", WorkerState::Ready)];
        registry.note_result("alpha", &OperationResult::Workers { hive: "alpha".into(), workers: listed.clone() });
        assert_eq!(processes(&registry), listed);

        registry.note_result("alpha", &OperationResult::Catalog { hive: "alpha".into(), workers: vec!["vllm".into()] });
        assert_eq!(registry.fresh(0)[0].workers, vec!["vllm".to_owned()]);

        // A hive the registry does not know is ignored, not added.
        registry.note_result("ghost", &OperationResult::Workers { hive: "ghost".into(), workers: listed });
        assert_eq!(registry.entries(0).len(), 1);
    }
}
