//! Property-based fuzzing of what rbee reads from other processes: heartbeats, `/health`
//! answers, the NDJSON lines of a hive's answer ([`HiveEvent`]), the events of a job's
//! Server-Sent Events stream ([`JobEvent`]), operations, `queen.link`, capabilities, install
//! records, digests and devices.
//!
//! Each target is fed arbitrary text, arbitrary JSON built from the types' own keys, and
//! valid samples with random bytes inserted, deleted or replaced or a random part of the
//! document swapped for arbitrary JSON. Nothing may panic, and what is accepted must come
//! back unchanged from its own serialization.
//!
//! Every property runs `PROPTEST_CASES` cases, 256 unless set:
//! `PROPTEST_CASES=200000 cargo test --release -p rbee-proto --test fuzz`.

use std::fmt::Debug;

use proptest::prelude::*;
use proptest::sample::Index;
use rbee_proto::Sha256;
use rbee_proto::deployment::Device;
use rbee_proto::hive::{Capabilities, HiveEvent, HiveHealth, InstallRecord, QueenLink};
use rbee_proto::operation::{Heartbeat, HeartbeatAck, Operation};
use rbee_proto::queen::JobEvent;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

const HEARTBEAT: &str = r#"{"alias":"gpu-1","version":"0.1.0","sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","pid":42,"port":8600,"interval_ms":5000,"workers":["llama-cpp","vllm"],"installed":{"llama-cpp":"0.1.0"},"home":"/home/rbee","processes":[{"id":"w1","worker_type":"llama-cpp","model":"/models/m.gguf","device":"cuda:0","port":9000,"pid":43,"started_ms":1,"last_heartbeat_ms":2,"adopted":true,"replica":{"deployment":"m","spec_hash":"abc","worker_version":"0.1.0"},"args":["--ctx-size","4096"],"state":"crashed","exit_code":1,"signal":null,"message":"boom"},{"id":"w2","worker_type":"vllm","model":"m","device":"cpu","port":9001,"pid":44,"started_ms":1,"last_heartbeat_ms":null,"state":"ready"}],"gpus":[{"index":0,"name":"NVIDIA H100","memory_total_mib":81920,"memory_used_mib":1024,"driver":"550.54"}],"models":[{"name":"m.gguf","path":"/models/m.gguf","size":1024,"sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},{"name":"n","path":"/n","size":0,"sha256":null}]}"#;

const HEALTH: &str = r#"{"status":"ok","version":"0.1.0","sha256":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","pid":42}"#;

/// Lines of a hive's NDJSON answer to a forwarded operation.
const HIVE_EVENTS: &[&str] = &[
    r#"{"kind":"log","message":"downloading m.gguf"}"#,
    r#"{"kind":"progress","done":1024,"total":4096}"#,
    r#"{"kind":"progress","done":1024,"total":null}"#,
    r#"{"kind":"token","text":"hé 😀"}"#,
    r#"{"kind":"result","result":{"kind":"inferred","hive":"h","worker_id":"w1","text":"hello"}}"#,
    r#"{"kind":"result","result":{"kind":"models","hive":"h","models":[{"name":"m","path":"/m","size":1,"sha256":null}]}}"#,
    r#"{"kind":"result","result":{"kind":"worker","hive":"h","worker":{"id":"w1","worker_type":"vllm","model":"m","device":"cpu","port":1,"pid":2,"started_ms":3,"last_heartbeat_ms":null,"state":"stopped"}}}"#,
    r#"{"kind":"result","result":{"kind":"error","message":"bad config","diagnostics":[{"file":"hives.conf","line":3,"column":9,"message":"alias \"A\" must start with a lowercase letter"}]}}"#,
];

/// The `data:` of events of a job's Server-Sent Events stream.
const JOB_EVENTS: &[&str] = &[
    r#"{"seq":0,"kind":"log","message":"planning"}"#,
    r#"{"seq":1,"kind":"sync","event":{"alias":"gpu-1","at_ms":5,"event":"step_started","step":"install-hive","description":"install rbee-hive 0.1.0"}}"#,
    r#"{"seq":2,"kind":"sync","event":{"alias":"gpu-1","at_ms":6,"event":"hive_started"}}"#,
    r#"{"seq":3,"kind":"hive","hive":"gpu-1","event":{"kind":"token","text":"hi"}}"#,
    r#"{"seq":4,"kind":"result","exit_code":0,"result":{"kind":"valid","hives":["gpu-1"]}}"#,
    r#"{"seq":5,"kind":"result","exit_code":1,"result":{"kind":"error","message":"no","diagnostics":[]}}"#,
];

const OPERATIONS: &[&str] = &[
    r#"{"type":"package_sync","config_path":null,"dry_run":true,"remove_extra":false,"force":false,"hive_aliases":["a"]}"#,
    r#"{"type":"hive_get","alias":"gpu-1"}"#,
    r#"{"type":"hive_list"}"#,
    r#"{"type":"worker_build","worker_type":"vllm"}"#,
];

const QUEEN_LINK: &str = r#"{"url":"http://127.0.0.1:8500","interval_ms":5000}"#;

const HEARTBEAT_ACK: &str = r#"{"interval_ms":100000}"#;

const CAPABILITIES: &str = r#"{"cpu_cores":16,"ram_bytes":137438953472,"gpus":[{"index":0,"name":"H200","memory_total_mib":143771,"memory_used_mib":0,"driver":"560.35"}],"gpu_error":null,"engines":[{"worker_type":"llama-cpp","id":"abc","version":"b11434","program":"/x/llama-server","present":true}]}"#;

/// Keys the documents above use: arbitrary JSON made of them reaches past "unknown field"
/// into the types' own checks.
const KEYS: &[&str] = &[
    "alias",
    "version",
    "sha256",
    "pid",
    "port",
    "interval_ms",
    "workers",
    "installed",
    "home",
    "processes",
    "gpus",
    "models",
    "id",
    "worker_type",
    "model",
    "device",
    "started_ms",
    "last_heartbeat_ms",
    "adopted",
    "replica",
    "deployment",
    "spec_hash",
    "worker_version",
    "args",
    "state",
    "exit_code",
    "signal",
    "message",
    "index",
    "name",
    "memory_total_mib",
    "memory_used_mib",
    "driver",
    "path",
    "size",
    "status",
    "kind",
    "text",
    "done",
    "total",
    "result",
    "hive",
    "worker_id",
    "diagnostics",
    "file",
    "line",
    "column",
    "seq",
    "event",
    "at_ms",
    "step",
    "description",
    "type",
    "config_path",
    "dry_run",
    "hive_aliases",
    "url",
    "cpu_cores",
    "ram_bytes",
    "gpu_error",
    "engines",
    "program",
    "present",
    "hives",
];

/// Tag values of the internally tagged enums.
const TAGS: &[&str] = &[
    "log",
    "progress",
    "token",
    "result",
    "sync",
    "hive",
    "inferred",
    "models",
    "model",
    "worker",
    "workers",
    "error",
    "valid",
    "catalog",
    "status",
    "starting",
    "ready",
    "unresponsive",
    "crashed",
    "stopped",
    "hive_started",
    "step_started",
    "step_finished",
    "step_failed",
    "hive_done",
    "package_sync",
    "hive_get",
    "hive_list",
    "ok",
];

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(TAGS).prop_map(str::to_owned),
        proptest::sample::select(KEYS).prop_map(str::to_owned),
        Just(DIGEST.to_owned()),
        Just(DIGEST.to_ascii_uppercase()),
        Just("é".repeat(32)),
        (0..64usize).prop_map(|n| DIGEST[..n].to_owned()),
        any::<String>(),
    ]
}

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        proptest::sample::select(&[0u64, 1, 255, 256, 65535, 65536, u32::MAX as u64, u32::MAX as u64 + 1][..])
            .prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
    ]
}

/// Arbitrary JSON whose object keys and strings are mostly the types' own.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((json_string(), inner), 0..10)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Replaces the `at`-th node (in pre-order) of `doc` by `new`.
fn replace_node(doc: &mut Value, at: Index, new: Value) {
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(items) => items.iter().map(count).sum(),
            Value::Object(fields) => fields.values().map(count).sum(),
            _ => 0,
        }
    }
    fn walk(v: &mut Value, n: &mut usize, new: &mut Option<Value>) {
        if *n == 0 {
            *v = new.take().unwrap_or(Value::Null);
            return;
        }
        *n -= 1;
        match v {
            Value::Array(items) => items.iter_mut().for_each(|i| walk(i, n, new)),
            Value::Object(fields) => fields.values_mut().for_each(|f| walk(f, n, new)),
            _ => {}
        }
    }
    let mut n = at.index(count(doc));
    walk(doc, &mut n, &mut Some(new));
}

/// One change to a document's text.
#[derive(Debug, Clone)]
enum Edit {
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Replace(Index, u8),
}

const SPECIAL: &[u8] = b"{}[]\":,\\0123456789-+.eEtrufalsn \n\t\x00\xc3\xa9\xff";

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![3 => proptest::sample::select(SPECIAL), 1 => any::<u8>()]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<Index>(), proptest::collection::vec(byte(), 1..5)).prop_map(|(at, b)| Edit::Insert(at, b)),
        (any::<Index>(), 1..10usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<Index>(), byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
    ];
    proptest::collection::vec(edit, 1..5)
}

fn mutate(sample: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = sample.as_bytes().to_vec();
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Replace(i, b) if len > 0 => bytes[i.index(len)] = *b,
            _ => {}
        }
    }
    bytes
}

/// A document rbee reads as `T`, in every form a peer could send it: it never panics, and
/// what is accepted comes back the same from its own serialization.
fn check<T: Serialize + DeserializeOwned + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let from_bytes = serde_json::from_slice::<T>(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        // The readers take lines as `String`s (lossy) or whole bodies as bytes: both agree.
        prop_assert_eq!(serde_json::from_str::<T>(text).is_ok(), from_bytes.is_ok());
    }
    let Ok(value) = from_bytes else { return Ok(()) };
    let json = serde_json::to_value(&value).map_err(|e| TestCaseError::fail(format!("{value:?}: {e}")))?;
    let again: T = serde_json::from_str(&json.to_string())
        .map_err(|e| TestCaseError::fail(format!("{value:?} does not read back from {json}: {e}")))?;
    prop_assert_eq!(serde_json::to_value(&again).unwrap(), json);
    Ok(())
}

/// Every document type, from the same bytes.
fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    check::<Heartbeat>(bytes)?;
    check::<HiveHealth>(bytes)?;
    check::<HiveEvent>(bytes)?;
    check::<JobEvent>(bytes)?;
    check::<Operation>(bytes)?;
    check::<QueenLink>(bytes)?;
    check::<HeartbeatAck>(bytes)?;
    check::<Capabilities>(bytes)?;
    check::<Sha256>(bytes)?;
    Ok(())
}

fn samples() -> Vec<&'static str> {
    let mut all = vec![HEARTBEAT, HEALTH, QUEEN_LINK, HEARTBEAT_ACK, CAPABILITIES];
    all.extend(HIVE_EVENTS);
    all.extend(JOB_EVENTS);
    all.extend(OPERATIONS);
    all
}

#[test]
fn fuzz_samples_are_valid() {
    serde_json::from_str::<Heartbeat>(HEARTBEAT).unwrap();
    serde_json::from_str::<HiveHealth>(HEALTH).unwrap();
    serde_json::from_str::<QueenLink>(QUEEN_LINK).unwrap();
    serde_json::from_str::<HeartbeatAck>(HEARTBEAT_ACK).unwrap();
    serde_json::from_str::<Capabilities>(CAPABILITIES).unwrap();
    for line in HIVE_EVENTS {
        serde_json::from_str::<HiveEvent>(line).unwrap();
    }
    for data in JOB_EVENTS {
        serde_json::from_str::<JobEvent>(data).unwrap();
    }
    for op in OPERATIONS {
        serde_json::from_str::<Operation>(op).unwrap();
    }
    for sample in samples() {
        check_all(sample.as_bytes()).unwrap();
    }
}

proptest! {
    /// Arbitrary bytes as each document.
    #[test]
    fn fuzz_json_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_all(&bytes)?;
    }

    /// Arbitrary JSON made of the types' keys and tags.
    #[test]
    fn fuzz_json_arbitrary_documents(doc in json()) {
        check_all(doc.to_string().as_bytes())?;
    }

    /// A valid heartbeat, /health, NDJSON line, SSE data, ... with random bytes changed.
    #[test]
    fn fuzz_json_mutated_samples(sample in proptest::sample::select(samples()), edits in edits()) {
        check_all(&mutate(sample, &edits))?;
    }

    /// A valid document with one of its values (or objects, or the whole) swapped for
    /// arbitrary JSON: wrong types, missing and extra keys, other tags.
    #[test]
    fn fuzz_json_swapped_values(sample in proptest::sample::select(samples()), at in any::<Index>(), new in json()) {
        let mut doc: Value = serde_json::from_str(sample).unwrap();
        replace_node(&mut doc, at, new);
        check_all(doc.to_string().as_bytes())?;
    }

    /// Install records (`SHA256 SIZE MTIME CTIME INODE VERSION`): read or refused, and a
    /// record read is written back as the same record.
    #[test]
    fn fuzz_install_record(
        text in prop_oneof![
            any::<String>(),
            proptest::collection::vec(
                prop_oneof![
                    Just(DIGEST.to_owned()),
                    Just("é".repeat(32)),
                    "[0-9]{0,25}",
                    "-?[0-9]{1,10}\\.[0-9]{9}",
                    "[^ \n]{0,8}",
                ],
                0..8,
            )
            .prop_map(|f| f.join(" ")),
        ],
        trailer in "(\n[^\n]{0,10})?",
    ) {
        let text = format!("{text}{trailer}");
        match InstallRecord::parse(&text) {
            Ok(r) => {
                prop_assert_eq!(r.sha256.as_str().len(), 64);
                prop_assert_eq!(InstallRecord::parse(&r.format()), Ok(r));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    /// Digests: exactly 64 hex characters (surrounding whitespace ignored), kept lower case,
    /// and shortened without panicking.
    #[test]
    fn fuzz_sha256(text in prop_oneof![any::<String>(), "\\s{0,2}[0-9a-fA-Fé]{60,68}\\s{0,2}"]) {
        match Sha256::parse(&text) {
            Ok(d) => {
                prop_assert_eq!(d.as_str(), text.trim().to_ascii_lowercase());
                prop_assert_eq!(d.short().len(), 12);
                prop_assert_eq!(Sha256::parse(d.as_str()), Ok(d.clone()));
            }
            Err(e) => prop_assert!(e.shown.chars().count() <= 80, "{}", e.shown),
        }
    }

    /// Devices: `cpu`, `cuda` or `cuda:N`, written back as read.
    #[test]
    fn fuzz_device(text in prop_oneof![any::<String>(), "cuda:[0-9+-]{0,12}", Just("cpu".to_owned())]) {
        if let Some(d) = Device::parse(&text) {
            prop_assert_eq!(Device::parse(&d.to_string()), Some(d));
        }
    }
}
