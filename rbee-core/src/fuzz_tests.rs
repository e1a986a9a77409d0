//! Property-based fuzzing of every parser in rbee-core that reads outside input: the config
//! files (`rbee.conf`, `hives.conf`), the observation script's output (with the install
//! records and the `/health` answer it carries), SHA256SUMS and `latest` of an artifact
//! source (a release tree on disk and one served over HTTP), and pid files.
//!
//! Each target is fed arbitrary text and, structure-aware, valid samples with random bytes
//! inserted, deleted or replaced (and snippets of the format spliced in). None may panic;
//! where a parser promises more (a diagnostic points inside its file, a resolved digest is
//! one the source listed, ...) that is checked too.
//!
//! Every property runs `PROPTEST_CASES` cases, 256 unless set: a long campaign is
//! `PROPTEST_CASES=200000 cargo test --release -p rbee-core fuzz`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use proptest::sample::Index;

use crate::artifact::{ArtifactError, ArtifactSource, HttpGet, HttpGetError};
use crate::config::{self, ConfigError, VersionReq};
use crate::observe::{ObserveError, parse_observation};
use crate::state::EngineSource;

// ---------------------------------------------------------------------------------------
// Mutations of valid samples.

/// One change to a sample: where (an index into whatever length it has by then) and what.
#[derive(Debug, Clone)]
enum Edit {
    /// Insert these bytes.
    Insert(Index, Vec<u8>),
    /// Delete up to this many bytes.
    Delete(Index, usize),
    /// Replace one byte.
    Replace(Index, u8),
    /// Copy a range of the sample over to another place (duplicates lines, tables, keys).
    Duplicate(Index, Index, usize),
}

/// Bytes that mean something in the formats read here, so a mutation often changes the
/// structure instead of only a value.
const SPECIAL: &[u8] = b"\"'[]{}=,.#\n\r\t \\0123456789-+eE_:/*~\x00\x7f\xc3\xa9\xe2\x80\xa8\xff";

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![3 => proptest::sample::select(SPECIAL), 1 => any::<u8>()]
}

/// Snippets of the formats, spliced in whole.
fn snippet(dictionary: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::sample::select(dictionary).prop_map(|s| s.as_bytes().to_vec()),
        1 => proptest::collection::vec(byte(), 1..6),
        1 => proptest::collection::vec(any::<u8>(), 1..4),
    ]
}

fn edit(dictionary: &'static [&'static str]) -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (any::<Index>(), snippet(dictionary)).prop_map(|(at, b)| Edit::Insert(at, b)),
        2 => (any::<Index>(), 1..12usize).prop_map(|(at, n)| Edit::Delete(at, n)),
        3 => (any::<Index>(), byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        1 => (any::<Index>(), any::<Index>(), 1..80usize).prop_map(|(from, to, n)| Edit::Duplicate(from, to, n)),
    ]
}

fn edits(dictionary: &'static [&'static str]) -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(edit(dictionary), 1..6)
}

fn mutate(sample: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = sample.as_bytes().to_vec();
    for e in edits {
        let len = bytes.len();
        let at = |i: &Index| if len == 0 { 0 } else { i.index(len + 1) };
        match e {
            Edit::Insert(i, b) => {
                let at = at(i);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Replace(i, b) if len > 0 => bytes[i.index(len)] = *b,
            Edit::Duplicate(from, to, n) if len > 0 => {
                let from = from.index(len);
                let piece: Vec<u8> = bytes[from..(from + n).min(len)].to_vec();
                let to = at(to);
                bytes.splice(to..to, piece);
            }
            _ => {}
        }
    }
    bytes
}

/// A mutated sample as text: the loaders read files with `read_to_string`, so invalid UTF-8
/// never reaches a parser; here it becomes U+FFFD.
fn mutated_text(sample: &str, edits: &[Edit]) -> String {
    String::from_utf8_lossy(&mutate(sample, edits)).into_owned()
}

// ---------------------------------------------------------------------------------------
// Config files.

/// A hives.conf that uses every key.
const HIVES_SAMPLE: &str = r#"# the fleet
[[hive]]
alias = "gpu-1"
hostname = "192.168.1.10"
ssh_user = "rbee"
ssh_port = 2222
ssh_key = "~/.ssh/id_ed25519"
hive_port = 8600
auto_start = true
transport = "ssh"
workers = [
    { type = "llama-cpp", version = "latest", engine = { artifact = "cuda12" } },
    { type = "vllm", version = "0.6.3", engine = { pip = "vllm==0.6.3" } },
    { type = "comfyui", engine = { path = "/opt/comfyui/main.py" } },
]

[[hive]]
alias = "local"
hostname = "localhost"
transport = "local"
local_home = "homes/local"
hive_port = 8601
workers = [{ type = "llama-cpp" }]

[[deployment]]
name = "llama-8b"
model = "https://models.example/llama-8b.gguf?download=1"
sha256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
worker = "llama-cpp"
replicas = 2
hives = ["gpu-1", "local"]
device = "cuda:0"
gpu_memory_mib = 8192
share_gpu = true
args = ["--ctx-size", "4096"]
ready_timeout = 600
drain_timeout = 30

[[deployment]]
name = "small"
model = "/models/small.gguf"
worker = "llama-cpp"
device = "cpu"
"#;

/// An rbee.conf that uses every key.
const RBEE_SAMPLE: &str = r#"[queen]
mode = "attached-hive"
port = 8500
auto_start = false
bind = "0.0.0.0"
advertise_url = "http://10.0.0.1:8500/"
hive_alias = "local"
reschedule_after = 60

[package]
max_concurrent_installs = 10
ssh_timeout = 30
health_check_timeout = 60
source = "https://releases.example/rbee"
allow_insecure_source = false
max_unavailable = "25%"
max_failed = 3

[ssh]
host_key_policy = "accept-new"
known_hosts = "known_hosts"
"#;

const CONFIG_SAMPLES: &[&str] = &[
    HIVES_SAMPLE,
    include_str!("../../examples/config/fleet/hives.conf"),
    include_str!("../../examples/config/local/hives.conf"),
];

const TOML_WORDS: &[&str] = &[
    "[[hive]]\n",
    "[[deployment]]\n",
    "[queen]\n",
    "[package]\n",
    "[ssh]\n",
    "[hive]\n",
    "[deployment]\n",
    "alias = ",
    "hostname = ",
    "workers = [",
    "{ type = \"vllm\" }",
    "{ type = \"llama-cpp\", engine = { artifact = \"auto\" } }",
    "engine = { path = \"/x\" }",
    "hives = [",
    "args = [",
    "deployment = 1\n",
    "max_unavailable = ",
    "\"100%\"",
    "\"-1 %\"",
    "max_failed = ",
    "deployment = [1, 2]\n",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "\\u0000",
    "\\U0010FFFF",
    "\\uD800",
    "\\",
    "=",
    " = ",
    "1e400",
    "-0",
    "nan",
    "inf",
    "-9223372036854775808",
    "9223372036854775808",
    "0x7fffffffffffffff",
    "1979-05-27T07:32:00Z",
    "true",
    "[]",
    "{}",
    ".",
    "a.b.c = 1\n",
    "\n",
    "\r\n",
    "é",
    "\u{2028}",
    "\u{feff}",
    "😀",
];

/// Config parsing either succeeds, with unique aliases and deployments only on declared
/// hives, or fails with at least one diagnostic, each naming one of the two files at a line
/// and column inside it.
fn check_config(rbee: Option<&str>, hives: &str) -> Result<(), TestCaseError> {
    let result = config::parse(rbee.map(|t| (Path::new("rbee.conf"), t)), (Path::new("hives.conf"), hives));
    let diags = match result {
        Ok(c) => {
            let aliases: BTreeSet<&str> = c.hives.iter().map(|h| h.alias.as_str()).collect();
            prop_assert_eq!(aliases.len(), c.hives.len(), "an alias declared twice was accepted");
            for d in &c.deployments {
                prop_assert!(d.hives.iter().all(|h| aliases.contains(h.as_str())), "{:?} on undeclared hives", d);
            }
            return Ok(());
        }
        Err(ConfigError::Invalid(diags)) => diags,
        Err(other) => return Err(TestCaseError::fail(format!("config text can only be invalid, not {other:?}"))),
    };
    prop_assert!(!diags.is_empty(), "an invalid config without diagnostics");
    let _ = ConfigError::Invalid(diags.clone()).to_string();
    for d in &diags {
        let text = if d.file == Path::new("hives.conf") {
            hives
        } else {
            prop_assert_eq!(&d.file, Path::new("rbee.conf"));
            rbee.unwrap_or("")
        };
        let lines: Vec<&str> = text.split('\n').collect();
        prop_assert!((1..=lines.len()).contains(&d.line), "{} is not a line of {:?}", d, text);
        let width = lines[d.line - 1].chars().count();
        prop_assert!((1..=width + 1).contains(&d.column), "{} is not a column of line {:?}", d, lines[d.line - 1]);
        prop_assert!(!d.message.is_empty(), "{}", d);
    }
    Ok(())
}

#[test]
fn fuzz_config_samples_are_valid() {
    for sample in CONFIG_SAMPLES {
        config::parse(None, (Path::new("hives.conf"), sample)).unwrap();
    }
    config::parse(Some((Path::new("rbee.conf"), RBEE_SAMPLE)), (Path::new("hives.conf"), HIVES_SAMPLE)).unwrap();
}

proptest! {
    /// hives.conf and rbee.conf of arbitrary text.
    #[test]
    fn fuzz_config_arbitrary_text(hives in any::<String>(), rbee in proptest::option::of(any::<String>())) {
        check_config(rbee.as_deref(), &hives)?;
    }

    /// Files put together from pieces of TOML and of the config's keys and tables.
    #[test]
    fn fuzz_config_token_soup(
        hives in proptest::collection::vec(proptest::sample::select(TOML_WORDS), 0..60),
        rbee in proptest::collection::vec(proptest::sample::select(TOML_WORDS), 0..30),
    ) {
        check_config(Some(&rbee.concat()), &hives.concat())?;
    }

    /// A valid hives.conf with random bytes inserted, deleted or replaced.
    #[test]
    fn fuzz_config_mutated_hives_conf(sample in proptest::sample::select(CONFIG_SAMPLES), edits in edits(TOML_WORDS)) {
        check_config(None, &mutated_text(sample, &edits))?;
    }

    /// A valid rbee.conf (with a valid hives.conf beside it) mutated the same way.
    #[test]
    fn fuzz_config_mutated_rbee_conf(edits in edits(TOML_WORDS)) {
        check_config(Some(&mutated_text(RBEE_SAMPLE, &edits)), HIVES_SAMPLE)?;
    }
}

// ---------------------------------------------------------------------------------------
// The observation script's output, with install records and the hive's /health.

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// What the script prints for a fully installed, running hive.
const OBSERVATION_SAMPLE: &str = "rbee-observe 1\n\
file 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef .local/bin/rbee-hive 0.1.0\n\
file 0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef .local/share/rbee/workers/rbee-worker-vllm\n\
engine llama-cpp abc ok b11434 .local/share/rbee/engines/llama-cpp/abc/bin/llama-server\n\
engine vllm pip-1 missing 0.6.3 /opt/my venv/bin/vllm\n\
gpu\n\
previous rbee-hive 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 0.0.9\n\
running 42\n\
health {\"status\":\"ok\",\"version\":\"0.1.0\",\"sha256\":\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\",\"pid\":42}\n\
supervisor systemd-user\n\
end\n";

const OBSERVE_WORDS: &[&str] = &[
    "rbee-observe 1\n",
    "\nend\n",
    "end",
    "\nfile ",
    "\nengine ",
    "\ngpu\n",
    "\nrunning ",
    "\nhealth ",
    "\nunhealthy ",
    "\nprevious ",
    "\nsupervisor ",
    " ",
    "  ",
    "\t",
    "\r",
    "\n",
    "ok",
    "missing",
    "altered",
    DIGEST,
    ".local/bin/rbee-hive",
    ".local/share/rbee/workers/rbee-worker-",
    "{\"status\":\"ok\"",
    "\"sha256\":",
    "\"pid\":4294967296",
    "\"pid\":-1",
    "null",
    "é",
    "ü",
    "\u{0}",
];

/// A field of an output line: a word, a digest (valid, upper case, cut, non-ASCII), a number.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._/-]{0,12}",
        Just(DIGEST.to_owned()),
        Just(DIGEST.to_ascii_uppercase()),
        (0..64usize).prop_map(|n| DIGEST[..n].to_owned()),
        Just("é".repeat(32)),
        any::<u32>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        "[^\n]{0,12}",
    ]
}

const ENGINE_STATES: &[&str] = &["ok", "missing", "altered", "broken", ""];

const SUPERVISORS: &[&str] = &["systemd-system", "systemd-user", "detached", "upstart", "", " detached "];

/// One line the script could print (or a damaged one).
fn observation_line() -> impl Strategy<Value = String> {
    let fields = || proptest::collection::vec(field(), 0..7);
    prop_oneof![
        fields().prop_map(|f| format!("file {}", f.join(" "))),
        fields().prop_map(|f| format!("engine {}", f.join(" "))),
        (field(), field(), proptest::sample::select(ENGINE_STATES), field(), field())
            .prop_map(|(k, id, st, v, p)| format!("engine {k} {id} {st} {v} {p}")),
        // An install record's fields, as the script echoes them.
        (field(), field(), field()).prop_map(|(sha, path, version)| format!("file {sha} {path} {version}")),
        (field(), field(), field()).prop_map(|(name, sha, version)| format!("previous {name} {sha} {version}")),
        fields().prop_map(|f| format!("previous {}", f.join(" "))),
        Just("gpu".to_owned()),
        field().prop_map(|p| format!("running {p}")),
        proptest::sample::select(SUPERVISORS).prop_map(|s| format!("supervisor {s}")),
        health_json().prop_map(|h| format!("health {h}")),
        "[^\n]{0,30}".prop_map(|t| format!("unhealthy {t}")),
        Just("end".to_owned()),
        "[^\n]{0,30}",
    ]
}

/// A `/health` answer: valid, with odd values, or damaged.
fn health_json() -> impl Strategy<Value = String> {
    let valid = (field(), field(), any::<i64>()).prop_map(|(version, sha, pid)| {
        serde_json::json!({ "status": "ok", "version": version, "sha256": sha, "pid": pid }).to_string()
    });
    prop_oneof![
        valid,
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| {
            let json = format!("{{\"status\":\"ok\",\"version\":\"0.1.0\",\"sha256\":\"{DIGEST}\",\"pid\":42}}");
            let (a, b) = (a.index(json.len() + 1), b.index(json.len() + 1));
            json[..a.min(b)].to_owned() + &json[a.max(b)..]
        }),
        "[^\n]{0,40}",
    ]
}

/// The observation parser never panics; it fails for output that does not begin with the
/// script's marker, succeeds only with an `end` line, and cuts what it quotes.
fn check_observation(text: &str) -> Result<(), TestCaseError> {
    let result = parse_observation(text);
    if text.lines().next() != Some("rbee-observe 1") {
        prop_assert!(matches!(result, Err(ObserveError::UnexpectedOutput(_))), "{:?}", result);
    }
    match &result {
        Ok(o) => {
            let ended = text.lines().skip(1).any(|l| l.split_once(' ').map_or(l, |(tag, _)| tag) == "end");
            prop_assert!(ended, "accepted without an end line: {:?}", text);
            if let Some(h) = &o.hive_binary {
                prop_assert_eq!(h.sha256.as_str().len(), 64);
            }
        }
        Err(ObserveError::UnexpectedOutput(shown) | ObserveError::BadLine(shown)) => {
            prop_assert!(shown.chars().count() <= 120, "{}", shown);
        }
        Err(ObserveError::Health { shown, .. }) => prop_assert!(shown.chars().count() <= 120, "{}", shown),
        Err(_) => {}
    }
    if let Err(e) = &result {
        let _ = e.to_string();
    }
    Ok(())
}

#[test]
fn fuzz_observation_sample_is_valid() {
    let o = parse_observation(OBSERVATION_SAMPLE).unwrap();
    assert!(o.hive_binary.is_some() && o.healthy && o.gpu);
}

proptest! {
    /// Any output at all, with and without the marker line.
    #[test]
    fn fuzz_observation_arbitrary_text(text in any::<String>(), marked in any::<bool>()) {
        let text = if marked { format!("rbee-observe 1\n{text}") } else { text };
        check_observation(&text)?;
    }

    /// Outputs made of lines the script prints, with wrong, missing, extra and odd fields,
    /// install-record digests of every kind and `/health` answers valid or not.
    #[test]
    fn fuzz_observation_structured_lines(lines in proptest::collection::vec(observation_line(), 0..12), end in any::<bool>()) {
        let mut text = format!("rbee-observe 1\n{}", lines.join("\n"));
        if end {
            text.push_str("\nend\n");
        }
        check_observation(&text)?;
    }

    /// A full observation with random bytes changed.
    #[test]
    fn fuzz_observation_mutated_sample(edits in edits(OBSERVE_WORDS)) {
        check_observation(&mutated_text(OBSERVATION_SAMPLE, &edits))?;
    }
}

// ---------------------------------------------------------------------------------------
// SHA256SUMS and `latest` of an artifact source.

/// Names a SHA256SUMS line may give: the artifacts a sync asks for, and hostile ones.
const SUMS_NAMES: &[&str] = &[
    "rbee-hive",
    "rbee-worker-vllm",
    "engine-llama-cpp-cpu.tar.gz",
    "engine-llama-cpp-.tar.gz",
    "engine-llama-cpp-../x.tar.gz",
    "wheels/vllm-0.6.3-py3-none-any.whl",
    "wheels/../x.whl",
    "../victim",
];

const SUMS_WORDS: &[&str] = &[
    DIGEST,
    "  ",
    " *",
    "\t",
    "\n",
    "\r\n",
    "rbee-hive",
    "engine-llama-cpp-cpu.tar.gz",
    "wheels/vllm-0.6.3-py3-none-any.whl",
    "../victim",
    "é",
    "1.0.0",
];

const SUMS_SEPARATORS: &[&str] = &["  ", " *", " ", "\t", "", "   *"];

/// A line of SHA256SUMS: a digest of some kind, a separator, a name.
fn sums_line() -> impl Strategy<Value = String> {
    let sum = prop_oneof![
        Just(DIGEST.to_owned()),
        Just(DIGEST.to_ascii_uppercase()),
        (0..64usize).prop_map(|n| DIGEST[..n].to_owned()),
        Just("é".repeat(32)),
        Just("../victim".to_owned()),
        "[^\n]{0,10}",
    ];
    let sep = proptest::sample::select(SUMS_SEPARATORS);
    let name = prop_oneof![proptest::sample::select(SUMS_NAMES).prop_map(str::to_owned), "[^\n]{0,16}"];
    (sum, sep, name).prop_map(|(sum, sep, name)| format!("{sum}{sep}{name}"))
}

fn sums_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(sums_line(), 0..8).prop_map(|l| l.join("\n")),
        (proptest::collection::vec(sums_line(), 1..5), edits(SUMS_WORDS))
            .prop_map(|(l, e)| mutated_text(&l.join("\n"), &e)),
        any::<String>(),
    ]
}

/// `latest`: a version, one with spaces and newlines around it, or anything.
fn latest_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.0.0\n".to_owned()),
        Just(" 1.0.0 ".to_owned()),
        Just("1.0.0-rc.1+build.5".to_owned()),
        Just("../../etc".to_owned()),
        "[0-9.a-z+-]{0,12}",
        any::<String>(),
    ]
}

/// Every request of an artifact source a sync makes: the hive binary, a worker at the latest
/// and an exact version, the engine variants and the wheelhouse. A resolved digest is always
/// one SHA256SUMS lists.
fn check_source(source: &ArtifactSource, sums: &str) -> Result<(), TestCaseError> {
    let exact = VersionReq::Exact(semver::Version::new(1, 0, 0));
    let listed = sums.to_ascii_lowercase();
    for (name, req) in [("rbee-hive", &VersionReq::Latest), ("rbee-worker-vllm", &exact), ("../victim", &exact)] {
        match source.resolve(name, req) {
            Ok(a) => prop_assert!(listed.contains(a.sha256.as_str()), "{} is not listed in {:?}", a.sha256, sums),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    for engine in [EngineSource::Artifact { variant: None }, EngineSource::Pip { spec: "vllm==0.6.3".into() }] {
        match source.resolve_engine("llama-cpp", &engine, &VersionReq::Latest) {
            Ok(e) => {
                for a in e.variants.values().chain(&e.wheels) {
                    prop_assert!(listed.contains(a.sha256.as_str()), "{} is not listed in {:?}", a.sha256, sums);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    Ok(())
}

/// Answers from a map of URL → body, like a release server would.
struct Served(BTreeMap<String, Vec<u8>>);

#[async_trait::async_trait]
impl HttpGet for Served {
    async fn get(&self, url: &str) -> Result<Vec<u8>, HttpGetError> {
        self.0.get(url).cloned().ok_or_else(|| format!("{url} answered 404 Not Found").into())
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));

/// A fleet whose workers pin a version, so `prepare` reads that version's SHA256SUMS too.
static PINNED_CONFIG: LazyLock<crate::Config> = LazyLock::new(|| {
    let hives = "[[hive]]\nalias = \"a\"\nhostname = \"a.lab\"\nworkers = [{ type = \"vllm\", version = \"1.0.0\" }]\n";
    config::parse(None, (Path::new("hives.conf"), hives)).expect("a valid config")
});

proptest! {
    /// A release tree on disk with any `latest` and SHA256SUMS (and the files it may name).
    #[test]
    fn fuzz_sha256sums_release_tree(latest in latest_text(), sums in sums_text()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("latest"), &latest).unwrap();
        for version in ["1.0.0", latest.trim()] {
            // Only a version is ever looked up (`latest` is checked first).
            if semver::Version::parse(version).is_err() {
                continue;
            }
            let v = dir.path().join(version);
            std::fs::create_dir_all(v.join("wheels")).unwrap();
            std::fs::write(v.join("SHA256SUMS"), &sums).unwrap();
            for name in ["rbee-hive", "rbee-worker-vllm", "engine-llama-cpp-cpu.tar.gz", "wheels/vllm-0.6.3-py3-none-any.whl"] {
                std::fs::write(v.join(name), b"x").unwrap();
            }
        }
        check_source(&ArtifactSource::directory(dir.path()), &sums)?;
    }

    /// An http(s) source serving any `latest` and SHA256SUMS.
    #[test]
    fn fuzz_sha256sums_http_source(latest in latest_text(), sums in sums_text()) {
        let base = "https://releases.example";
        let mut served = BTreeMap::from([(format!("{base}/latest"), latest.clone().into_bytes())]);
        for version in ["1.0.0", latest.trim()] {
            served.insert(format!("{base}/{version}/SHA256SUMS"), sums.clone().into_bytes());
        }
        let cache = tempfile::tempdir().unwrap();
        let source = ArtifactSource::http(base, Arc::new(Served(served)), cache.path().to_path_buf());
        match RUNTIME.block_on(source.prepare(&PINNED_CONFIG)) {
            Ok(()) => check_source(&source, &sums)?,
            Err(e) => {
                prop_assert!(matches!(e, ArtifactError::Source { .. } | ArtifactError::Fetch { .. }), "{e:?}");
                let _ = e.to_string();
            }
        }
        // A hostile digest is never used as a cache path: the cache holds nothing.
        prop_assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// Pid files.

proptest! {
    /// A pid file holds a pid greater than 1 that `kill` takes as one process, or nothing.
    #[test]
    fn fuzz_pid_file(text in prop_oneof![any::<String>(), "[ \n0-9+-]{0,12}"]) {
        if let Some(pid) = crate::pidfile::parse(&text) {
            prop_assert!(pid > 1 && i32::try_from(pid).is_ok(), "{}", pid);
            prop_assert!(text.trim().bytes().all(|b| b.is_ascii_digit()), "{:?}", text);
        }
    }
}
