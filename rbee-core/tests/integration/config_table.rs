//! Config validation: the design's example is valid; each broken file gets the message a
//! user needs, at the right file:line:column.

use std::path::Path;

use std::time::Duration;

use rbee_core::config::{self, ConfigError, TransportKind, VersionReq};
use rbee_core::proto::deployment::{
    DEFAULT_DRAIN_TIMEOUT_MS, DEFAULT_READY_TIMEOUT_MS, DEFAULT_RESCHEDULE_AFTER_MS, DeploymentSpec, Device,
};

fn diagnostics(rbee: Option<&str>, hives: &str) -> Vec<String> {
    let rbee = rbee.map(|t| (Path::new("rbee.conf"), t));
    match config::parse(rbee, (Path::new("hives.conf"), hives)) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn the_design_example_validates() {
    let rbee = include_str!("../../../examples/config/fleet/rbee.conf");
    let hives = include_str!("../../../examples/config/fleet/hives.conf");
    let c = config::parse(Some((Path::new("rbee.conf"), rbee)), (Path::new("hives.conf"), hives)).unwrap();
    assert_eq!(c.queen.port, 8500);
    assert_eq!(c.package.max_concurrent_installs, 10);
    assert_eq!(c.package.ssh_timeout.as_secs(), 30);
    assert_eq!(c.package.health_check_timeout.as_secs(), 60);
    let h = &c.hives[0];
    assert_eq!(
        (h.alias.as_str(), h.hostname.as_str(), h.ssh_port, h.hive_port),
        ("gpu-server-1", "192.168.1.100", 22, 8600)
    );
    assert_eq!(h.transport, TransportKind::Ssh);
    let kinds: Vec<_> = h.workers.iter().map(|w| (w.kind.as_str(), &w.version)).collect();
    assert_eq!(kinds, vec![("llama-cpp", &VersionReq::Latest), ("vllm", &VersionReq::Latest)]);
}

#[test]
fn defaults_apply_without_rbee_conf() {
    let c =
        config::parse(None, (Path::new("hives.conf"), "[[hive]]\nalias = \"l\"\nhostname = \"localhost\"\n")).unwrap();
    assert_eq!(c.queen.port, 8500);
    assert!(c.queen.auto_start);
    assert_eq!(c.hives[0].hive_port, 8600);
    assert_eq!(c.hives[0].transport, TransportKind::Local, "localhost with no SSH options is local");
    assert!(c.hives[0].workers.is_empty());
}

#[test]
fn localhost_with_ssh_options_uses_ssh() {
    let c = config::parse(
        None,
        (Path::new("hives.conf"), "[[hive]]\nalias = \"l\"\nhostname = \"127.0.0.1\"\nssh_port = 2222\n"),
    )
    .unwrap();
    assert_eq!(c.hives[0].transport, TransportKind::Ssh);
}

const H: &str = "[[hive]]\nalias = \"a\"\nhostname = \"h\"\n";
/// A hive with a llama-cpp worker (4 lines), for deployments to use.
const HW: &str = "[[hive]]\nalias = \"a\"\nhostname = \"h\"\nworkers = [{ type = \"llama-cpp\" }]\n";
/// A valid deployment's first lines (line 5 to 8 after [`HW`]).
const D: &str = "[[deployment]]\nname = \"m\"\nmodel = \"/models/m.gguf\"\nworker = \"llama-cpp\"\n";

#[test]
fn invalid_files_name_file_line_and_column() {
    let cases: &[(&str, Option<&str>, &str, &[&str])] = &[
        ("syntax error", None, "[[hive]\nalias = \"a\"\n", &["hives.conf:1:8: unclosed array table, expected `]`"]),
        (
            "unknown key in hive",
            None,
            "[[hive]]\nalias = \"a\"\nhostname = \"h\"\nhostnme = \"x\"\n",
            &[
                "hives.conf:4:1: unknown field `hostnme`, expected one of `alias`, `hostname`, `ssh_user`, `ssh_port`, `ssh_key`, `hive_port`, `workers`, `auto_start`, `transport`, `local_home`",
            ],
        ),
        (
            "unknown top-level table",
            None,
            "[[hives]]\nalias = \"a\"\n",
            &["hives.conf:1:3: unknown field `hives`, expected `hive` or `deployment`"],
        ),
        ("missing hostname", None, "[[hive]]\nalias = \"a\"\n", &["hives.conf:1:1: missing field `hostname`"]),
        (
            "rolling batches out of range",
            Some("[package]\nmax_unavailable = \"150%\"\nmax_failed = 0\n"),
            "[[hive]]\nalias = \"a\"\nhostname = \"h\"\n",
            &[
                "rbee.conf:2:19: max_unavailable = \"150%\" must be a number of hives or a percentage like \"25%\"",
                "rbee.conf:3:14: max_failed = 0 is out of range: use 1..=100000",
            ],
        ),
        (
            "engines: a pip option, a relative path, two sources, a source the type cannot use",
            None,
            "[[hive]]\nalias = \"a\"\nhostname = \"h\"\nworkers = [\n{ type = \"vllm\", engine = { pip = \"--index-url=http://x vllm\" } },\n\
             { type = \"llama-cpp\", engine = { path = \"bin/llama-server\" } },\n\
             { type = \"comfyui\", engine = { path = \"/a\", pip = \"b\" } },\n\
             { type = \"reference\", engine = { path = \"/x\" } },\n]\n",
            &[
                "hives.conf:5:35: pip requirement \"--index-url=http://x vllm\" must be a plain requirement such as \"vllm==0.6.3\" (no pip options, URLs or paths)",
                "hives.conf:6:41: engine path \"bin/llama-server\" must be an absolute path without control characters",
                "hives.conf:7:10: engine of worker \"comfyui\" needs exactly one of artifact, pip or path",
                "hives.conf:8:41: worker \"reference\" cannot take its engine from path: it has no engine: remove `engine`",
            ],
        ),
        (
            "duplicate alias",
            None,
            "[[hive]]\nalias = \"a\"\nhostname = \"h\"\n[[hive]]\nalias = \"a\"\nhostname = \"i\"\n",
            &["hives.conf:5:9: duplicate alias \"a\" (first declared at line 2): aliases must be unique"],
        ),
        (
            "alias with a space",
            None,
            "[[hive]]\nalias = \"gpu 1\"\nhostname = \"h\"\n",
            &["hives.conf:2:9: alias \"gpu 1\" may only contain a-z, 0-9, '.', '_' and '-' ([a-z0-9][a-z0-9._-]*)"],
        ),
        (
            "alias with uppercase",
            None,
            "[[hive]]\nalias = \"Gpu\"\nhostname = \"h\"\n",
            &["hives.conf:2:9: alias \"Gpu\" must start with a lowercase letter or digit ([a-z0-9][a-z0-9._-]*)"],
        ),
        (
            "alias with a shell metacharacter",
            None,
            "[[hive]]\nalias = \"a;rm\"\nhostname = \"h\"\n",
            &["hives.conf:2:9: alias \"a;rm\" may only contain a-z, 0-9, '.', '_' and '-' ([a-z0-9][a-z0-9._-]*)"],
        ),
        (
            "plain http source",
            Some("[package]\nsource = \"http://releases.lab\"\n"),
            "[[hive]]\nalias = \"a\"\nhostname = \"h\"\n",
            &[
                "rbee.conf:2:10: source \"http://releases.lab\" is plain HTTP: anyone on the way can change what gets installed; use https://, or set allow_insecure_source = true in [package] on a network you trust",
            ],
        ),
        (
            "no hive at all",
            None,
            "# nothing yet\n",
            &[
                "hives.conf:1:1: declares no hive: add one, e.g.\n[[hive]]\nalias = \"gpu-1\"\nhostname = \"192.168.1.10\"\nworkers = [{ type = \"llama-cpp\" }]",
            ],
        ),
        (
            "empty alias",
            None,
            "[[hive]]\nalias = \"\"\nhostname = \"h\"\n",
            &["hives.conf:2:9: alias \"\" is empty: give each hive a short name like \"gpu-1\""],
        ),
        (
            "empty hostname",
            None,
            "[[hive]]\nalias = \"a\"\nhostname = \"\"\n",
            &["hives.conf:3:12: hostname \"\" is empty: give a DNS name, an IP address or an ~/.ssh/config alias"],
        ),
        (
            "malformed hostname",
            None,
            "[[hive]]\nalias = \"a\"\nhostname = \"gpu..lab\"\n",
            &[
                "hives.conf:3:12: hostname \"gpu..lab\" has an empty label (two dots in a row, or a leading or trailing dot)",
            ],
        ),
        (
            "bad IPv4",
            None,
            "[[hive]]\nalias = \"a\"\nhostname = \"10.0.0.300\"\n",
            &["hives.conf:3:12: hostname \"10.0.0.300\" looks like an IPv4 address but is not a valid one"],
        ),
        (
            "ssh port 0",
            None,
            &format!("{H}ssh_port = 0\n"),
            &["hives.conf:4:12: ssh_port = 0 is out of range: use 1..=65535"],
        ),
        (
            "hive port too big",
            None,
            &format!("{H}hive_port = 70000\n"),
            &["hives.conf:4:13: hive_port = 70000 is out of range: use 1..=65535"],
        ),
        (
            "port of the wrong type",
            None,
            &format!("{H}hive_port = \"8600\"\n"),
            &["hives.conf:4:13: invalid type: string \"8600\", expected i64"],
        ),
        (
            "same worker twice",
            None,
            &format!("{H}workers = [\n  {{ type = \"vllm\" }},\n  {{ type = \"vllm\", version = \"1.0.0\" }},\n]\n"),
            &["hives.conf:6:12: worker type \"vllm\" appears twice in hive \"a\" (first at line 5): keep one"],
        ),
        (
            "unknown worker type",
            None,
            &format!("{H}workers = [{{ type = \"tensorrt\" }}]\n"),
            &["hives.conf:4:21: unknown worker type \"tensorrt\": use one of llama-cpp, vllm, comfyui, reference"],
        ),
        (
            "version neither latest nor semver",
            None,
            &format!("{H}workers = [{{ type = \"vllm\", version = \"newest\" }}]\n"),
            &[
                "hives.conf:4:39: version \"newest\" is neither \"latest\" nor a semver version like \"1.2.3\" (unexpected character 'n' while parsing major version number)",
            ],
        ),
        (
            "partial semver",
            None,
            &format!("{H}workers = [{{ type = \"vllm\", version = \"1.2\" }}]\n"),
            &[
                "hives.conf:4:39: version \"1.2\" is neither \"latest\" nor a semver version like \"1.2.3\" (unexpected end of input while parsing minor version number)",
            ],
        ),
        (
            "unknown worker key",
            None,
            &format!("{H}workers = [{{ type = \"vllm\", tag = \"x\" }}]\n"),
            &["hives.conf:4:29: unknown field `tag`, expected one of `type`, `version`, `engine`"],
        ),
        (
            "local transport on a remote host",
            None,
            &format!("{H}transport = \"local\"\n"),
            &["hives.conf:3:12: transport = \"local\" needs hostname \"localhost\" or \"127.0.0.1\", not \"h\""],
        ),
        (
            "unknown transport",
            None,
            &format!("{H}transport = \"telnet\"\n"),
            &["hives.conf:4:13: unknown variant `telnet`, expected `local` or `ssh`"],
        ),
        (
            "rbee.conf unknown key",
            Some("[package]\nmax_concurrent = 3\n"),
            H,
            &[
                "rbee.conf:2:1: unknown field `max_concurrent`, expected one of `max_concurrent_installs`, `ssh_timeout`, `health_check_timeout`, `source`, `max_unavailable`, `max_failed`, `allow_insecure_source`",
            ],
        ),
        (
            "rbee.conf zero concurrency",
            Some("[package]\nmax_concurrent_installs = 0\n"),
            H,
            &["rbee.conf:2:27: max_concurrent_installs = 0 is out of range: use 1..=1024"],
        ),
        (
            "rbee.conf queen port out of range",
            Some("[queen]\nport = 65536\n"),
            H,
            &["rbee.conf:2:8: port = 65536 is out of range: use 1..=65535"],
        ),
        (
            "rbee.conf unknown host key policy",
            Some("[ssh]\nhost_key_policy = \"yolo\"\n"),
            H,
            &["rbee.conf:2:19: unknown variant `yolo`, expected `strict` or `accept-new`"],
        ),
        (
            "rbee.conf reschedule_after 0",
            Some("[queen]\nreschedule_after = 0\n"),
            H,
            &["rbee.conf:2:20: reschedule_after = 0 is out of range: use 1..=86400"],
        ),
        (
            "rbee.conf reschedule_after not a number",
            Some("[queen]\nreschedule_after = \"5m\"\n"),
            H,
            &["rbee.conf:2:20: invalid type: string \"5m\", expected i64"],
        ),
        (
            "deployment without a worker",
            None,
            &format!("{HW}[[deployment]]\nname = \"m\"\nmodel = \"/m\"\n"),
            &["hives.conf:5:1: missing field `worker`"],
        ),
        (
            "deployment that is not a table",
            None,
            &format!("deployment = \"m\"\n{HW}"),
            &["hives.conf:1:14: invalid type: string \"m\", expected a sequence"],
        ),
        (
            "deployment worker no hive declares",
            None,
            &format!("{HW}[[deployment]]\nname = \"m\"\nmodel = \"/m\"\nworker = \"vllm\"\n"),
            &[
                "hives.conf:8:10: no hive declares worker \"vllm\": add { type = \"vllm\" } to the workers of a hive, or use another worker",
            ],
        ),
        (
            "deployment unknown worker type",
            None,
            &format!("{HW}[[deployment]]\nname = \"m\"\nmodel = \"/m\"\nworker = \"tgi\"\n"),
            &["hives.conf:8:10: unknown worker type \"tgi\": use one of llama-cpp, vllm, comfyui, reference"],
        ),
        (
            "deployment with an empty hives list",
            None,
            &format!("{HW}{D}hives = []\n"),
            &[
                "hives.conf:9:9: hives is empty: list at least one hive, or leave hives out to use every hive with worker \"llama-cpp\"",
            ],
        ),
        (
            "deployment lists a hive twice",
            None,
            &format!("{HW}{D}hives = [\"a\", \"a\"]\n"),
            &["hives.conf:9:15: hive \"a\" is listed twice in hives: keep one"],
        ),
        (
            "deployment name empty",
            None,
            &format!("{HW}[[deployment]]\nname = \"\"\nmodel = \"/m\"\nworker = \"llama-cpp\"\n"),
            &["hives.conf:6:8: deployment name \"\" is empty: give it the name clients ask for, like \"llama-8b\""],
        ),
        (
            "deployment model URL with a space",
            None,
            &format!(
                "{HW}[[deployment]]\nname = \"m\"\nmodel = \"https://x/a b\"\nsha256 = \"{}\"\nworker = \"llama-cpp\"\n",
                "0".repeat(64)
            ),
            &["hives.conf:7:9: model \"https://x/a b\" is not a valid URL (no host, or a space or control character)"],
        ),
        (
            "deployment model URL ending in ..",
            None,
            &format!(
                "{HW}[[deployment]]\nname = \"m\"\nmodel = \"https://x/..\"\nsha256 = \"{}\"\nworker = \"llama-cpp\"\n",
                "0".repeat(64)
            ),
            &["hives.conf:7:9: model \"https://x/..\" must end in a file name, not \"..\""],
        ),
        (
            "deployment timeouts out of range",
            None,
            &format!("{HW}{D}device = \"cuda:0\"\ngpu_memory_mib = 0\nready_timeout = 0\ndrain_timeout = 86401\n"),
            &[
                "hives.conf:10:18: gpu_memory_mib = 0 is out of range: use 1..=16777216",
                "hives.conf:11:17: ready_timeout = 0 is out of range: use 1..=86400",
                "hives.conf:12:17: drain_timeout = 86401 is out of range: use 0..=86400",
            ],
        ),
        (
            "all problems at once",
            None,
            "[[hive]]\nalias = \"A\"\nhostname = \"\"\nssh_port = 0\n",
            &[
                "hives.conf:2:9: alias \"A\" must start with a lowercase letter or digit ([a-z0-9][a-z0-9._-]*)",
                "hives.conf:3:12: hostname \"\" is empty: give a DNS name, an IP address or an ~/.ssh/config alias",
                "hives.conf:4:12: ssh_port = 0 is out of range: use 1..=65535",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, rbee, hives, expected) in cases {
        let got = diagnostics(*rbee, hives);
        if got != *expected {
            failures.push(format!("{name}:\n  expected {expected:#?}\n  got      {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// `local_home = "h1"` or `ssh_key = "keys/id"` meant a different place depending on where
/// rbee was run from; relative paths are relative to the config file's directory.
#[test]
fn relative_paths_are_relative_to_the_config_directory() {
    let hives = "[[hive]]\nalias = \"a\"\nhostname = \"localhost\"\nlocal_home = \"homes/a\"\n\n\
                 [[hive]]\nalias = \"b\"\nhostname = \"b.lab\"\nssh_key = \"keys/id\"\n\n\
                 [[hive]]\nalias = \"c\"\nhostname = \"c.lab\"\nssh_key = \"~/.ssh/id_c\"\n";
    let rbee = "[ssh]\nknown_hosts = \"known\"\n";
    let dir = Path::new("/etc/rbee-test");
    let c = config::parse(Some((&dir.join("rbee.conf"), rbee)), (&dir.join("hives.conf"), hives)).unwrap();
    assert_eq!(c.hive("a").unwrap().local_home.as_deref(), Some(Path::new("/etc/rbee-test/homes/a")));
    assert_eq!(c.hive("b").unwrap().ssh_key.as_deref(), Some(Path::new("/etc/rbee-test/keys/id")));
    assert_eq!(c.hive("c").unwrap().ssh_key.as_deref(), Some(Path::new("~/.ssh/id_c")));
    assert_eq!(c.ssh.known_hosts.as_deref(), Some(Path::new("/etc/rbee-test/known")));
}

#[test]
fn a_missing_hives_conf_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let err = config::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ConfigError::MissingHivesConf { .. }));
    let msg = err.to_string();
    assert!(msg.contains("create it with at least one [[hive]]"), "{msg}");
}

/// A config file that is a directory or not UTF-8 said only "could not read": the error says why.
#[test]
fn read_errors_say_why() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("hives.conf")).unwrap();
    let msg = config::load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("hives.conf: it is a directory, not a file"), "{msg}");

    std::fs::remove_dir(dir.path().join("hives.conf")).unwrap();
    std::fs::write(dir.path().join("hives.conf"), b"[[hive]]\nalias = \"caf\xe9\"\n").unwrap();
    let err = config::load_dir(dir.path()).unwrap_err();
    assert!(matches!(err, ConfigError::NotUtf8 { line: 2, column: 13, byte: 0xe9, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("hives.conf:2:13: not UTF-8 text (byte 0xe9): save the file as UTF-8"), "{msg}");

    std::fs::write(dir.path().join("hives.conf"), "[[hive]]\nalias = \"a\"\nhostname = \"localhost\"\n").unwrap();
    std::fs::write(dir.path().join("rbee.conf"), b"\xff").unwrap();
    let msg = config::load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("rbee.conf:1:1: not UTF-8 text (byte 0xff)"), "{msg}");
}

#[test]
fn schema_covers_both_files() {
    let schema = config::json_schema();
    assert!(schema["hives.conf"]["$defs"]["HiveEntry"]["properties"]["hive_port"].is_object(), "{schema:#}");
    assert!(schema["rbee.conf"]["properties"]["package"].is_object(), "{schema:#}");
    let deployment = &schema["hives.conf"]["$defs"]["DeploymentEntry"];
    for key in [
        "name",
        "model",
        "sha256",
        "worker",
        "replicas",
        "hives",
        "device",
        "gpu_memory_mib",
        "share_gpu",
        "args",
        "ready_timeout",
        "drain_timeout",
    ] {
        let description = deployment["properties"][key]["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty(), "{key}: {deployment:#}");
    }
    assert_eq!(deployment["additionalProperties"], false, "{deployment:#}");
    assert_eq!(schema["hives.conf"]["properties"]["deployment"]["type"], "array", "{schema:#}");
    let queen = &schema["rbee.conf"]["$defs"]["QueenSection"]["properties"];
    assert!(queen["reschedule_after"]["description"].as_str().unwrap_or_default().contains("silent"), "{queen:#}");
}

/// Values an attacker (or a bad copy-paste) could put in hives.conf to run a command on the
/// operator's machine or a host: each is rejected before anything runs.
#[test]
fn hostile_values_are_rejected() {
    let hostile = ["a;rm -rf ~", "$(reboot)", "`id`", "a'b", "a\"b", "a\nb", "-oProxyCommand=sh", "a b", "${HOME}"];
    let mut accepted = Vec::new();
    for value in hostile {
        let v = toml_string(value);
        let files = [
            ("alias", format!("[[hive]]\nalias = {v}\nhostname = \"h\"\n")),
            ("hostname", format!("[[hive]]\nalias = \"a\"\nhostname = {v}\n")),
            ("ssh_user", format!("[[hive]]\nalias = \"a\"\nhostname = \"h\"\nssh_user = {v}\n")),
            (
                "version",
                format!(
                    "[[hive]]\nalias = \"a\"\nhostname = \"h\"\nworkers = [{{ type = \"vllm\", version = {v} }}]\n"
                ),
            ),
            ("worker type", format!("[[hive]]\nalias = \"a\"\nhostname = \"h\"\nworkers = [{{ type = {v} }}]\n")),
        ];
        for (field, text) in files {
            if diagnostics(None, &text).is_empty() {
                accepted.push(format!("{field} = {value:?}"));
            }
        }
    }
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    let newline_path = "[[hive]]\nalias = \"a\"\nhostname = \"h\"\nssh_key = \"/k\\nx\"\n";
    assert_eq!(
        diagnostics(None, newline_path),
        ["hives.conf:4:11: ssh_key \"/k\\nx\" contains a control character (newline, tab, ...)"]
    );
}

fn toml_string(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

#[test]
fn attached_hive_mode_marks_its_hive_and_it_must_be_this_machine() {
    let rbee = "[queen]\nmode = \"attached-hive\"\nhive_alias = \"me\"\n";
    let hives =
        "[[hive]]\nalias = \"me\"\nhostname = \"localhost\"\n\n[[hive]]\nalias = \"gpu\"\nhostname = \"10.0.0.2\"\n";
    let c = config::parse(Some((Path::new("rbee.conf"), rbee)), (Path::new("hives.conf"), hives)).unwrap();
    assert_eq!(c.queen.hive_alias, "me");
    assert_eq!(c.hives.iter().map(|h| h.attached).collect::<Vec<_>>(), [true, false]);

    let remote = "[[hive]]\nalias = \"me\"\nhostname = \"10.0.0.2\"\n";
    let d = diagnostics(Some(rbee), remote);
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("hives.conf:2:9") && d[0].contains("attached hive"), "{d:?}");

    // Standalone (the default): nothing is attached.
    let c = config::parse(None, (Path::new("hives.conf"), hives)).unwrap();
    assert!(c.hives.iter().all(|h| !h.attached));
    assert_eq!(c.queen.hive_alias, "localhost");
}

const FLEET: &str = "\
[[hive]]
alias = \"gpu-1\"
hostname = \"10.0.0.1\"
workers = [{ type = \"vllm\" }, { type = \"llama-cpp\" }]

[[hive]]
alias = \"cpu-1\"
hostname = \"10.0.0.2\"
workers = [{ type = \"llama-cpp\" }]

[[hive]]
alias = \"gpu-2\"
hostname = \"10.0.0.3\"
workers = [{ type = \"vllm\" }]
";

#[test]
fn deployments_parse_with_their_defaults() {
    let digest = "AB".repeat(32);
    let hives = format!(
        "{FLEET}
[[deployment]]
name = \"llama-70b\"
model = \"https://models.example/llama-70b.gguf\"
sha256 = \"{digest}\"
worker = \"vllm\"
replicas = 2
device = \"cuda\"
gpu_memory_mib = 40000
share_gpu = true
args = [\"--max-model-len\", \"8192\", \"$(not a shell)\"]
ready_timeout = 1200
drain_timeout = 0

[[deployment]]
name = \"tiny\"
model = \"/srv/models/tiny.gguf\"
worker = \"llama-cpp\"

[[deployment]]
name = \"pinned\"
model = \"/srv/models/pinned.gguf\"
worker = \"llama-cpp\"
hives = [\"cpu-1\"]
device = \"cuda:1\"
"
    );
    let c = config::parse(None, (Path::new("hives.conf"), &hives)).unwrap();
    let names: Vec<_> = c.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["llama-70b", "tiny", "pinned"], "file order");
    assert_eq!(
        c.deployments[0],
        DeploymentSpec {
            name: "llama-70b".into(),
            model: "https://models.example/llama-70b.gguf".into(),
            sha256: Some(rbee_core::Sha256::parse(&"ab".repeat(32)).unwrap()),
            worker: "vllm".into(),
            replicas: 2,
            hives: vec!["gpu-1".into(), "gpu-2".into()],
            device: Device::AnyCuda,
            gpu_memory_mib: Some(40000),
            share_gpu: true,
            args: vec!["--max-model-len".into(), "8192".into(), "$(not a shell)".into()],
            ready_timeout_ms: 1_200_000,
            drain_timeout_ms: 0,
        }
    );
    assert_eq!(
        c.deployments[1],
        DeploymentSpec {
            name: "tiny".into(),
            model: "/srv/models/tiny.gguf".into(),
            sha256: None,
            worker: "llama-cpp".into(),
            replicas: 1,
            hives: vec!["gpu-1".into(), "cpu-1".into()],
            device: Device::Cpu,
            gpu_memory_mib: None,
            share_gpu: false,
            args: vec![],
            ready_timeout_ms: DEFAULT_READY_TIMEOUT_MS,
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
        }
    );
    let pinned = c.deployment("pinned").unwrap();
    assert_eq!((pinned.hives.as_slice(), pinned.device), (["cpu-1".to_owned()].as_slice(), Device::Cuda(1)));

    // No [[deployment]] at all: none.
    assert!(config::parse(None, (Path::new("hives.conf"), FLEET)).unwrap().deployments.is_empty());
}

/// Every mistake in every [[deployment]] is reported at once, each where it is — including
/// one serde stops at (an unknown key), which only costs its own table.
#[test]
fn deployment_mistakes_are_all_reported_at_once() {
    let hives = format!(
        "{FLEET}
[[deployment]]
name = \"Bad Name\"
model = \"models/llama.gguf\"
worker = \"llama-cpp\"
replicas = 0

[[deployment]]
name = \"qwen\"
model = \"https://example.com/qwen.gguf\"
worker = \"vllm\"
hives = [\"gpu-1\", \"cpu-1\", \"gpu-9\"]
device = \"gpu\"

[[deployment]]
name = \"qwen\"
model = \"https://example.com/qwen2.gguf\"
sha256 = \"not-a-digest\"
worker = \"llama-cpp\"
gpu_memory_mib = 8000
args = [\"--ctx-size\", \"4096\\nrm -rf /\"]

[[deployment]]
name = \"extra\"
model = \"/models/x.gguf\"
worker = \"llama-cpp\"
replica = 2
"
    );
    let got = diagnostics(None, &hives);
    let expected = [
        (
            "hives.conf:17:8:",
            "deployment name \"Bad Name\" must start with a lowercase letter or digit ([a-z0-9][a-z0-9._-]*)",
        ),
        ("hives.conf:18:9:", "model \"models/llama.gguf\" is neither an http(s) URL"),
        ("hives.conf:20:12:", "replicas = 0 is out of range: use 1..=1000"),
        ("hives.conf:24:9:", "model \"https://example.com/qwen.gguf\" is a URL, so sha256 is required"),
        ("hives.conf:26:28:", "unknown hive \"gpu-9\": the declared hives are gpu-1, cpu-1, gpu-2"),
        ("hives.conf:26:19:", "worker \"vllm\" is not declared on hive \"cpu-1\""),
        ("hives.conf:27:10:", "device \"gpu\" is not \"cpu\", \"cuda\" (any GPU) or \"cuda:N\" (GPU N)"),
        ("hives.conf:30:8:", "duplicate deployment name \"qwen\" (first declared at line 23)"),
        ("hives.conf:32:10:", "sha256 \"not-a-digest\" is not a digest"),
        ("hives.conf:34:18:", "gpu_memory_mib needs a GPU: set device = \"cuda\""),
        ("hives.conf:35:23:", "args[1] \"4096\\nrm -rf /\" contains a control character"),
        ("hives.conf:41:1:", "unknown field `replica`, expected one of `name`, `model`"),
    ];
    let matches = got.len() == expected.len()
        && got.iter().zip(&expected).all(|(g, (at, what))| g.starts_with(at) && g.contains(what));
    assert!(matches, "expected {expected:#?}\ngot {got:#?}");
}

#[test]
fn deployment_args_are_bounded() {
    let hives = format!("{HW}{D}args = [\"{}\"]\n", "x".repeat(4097));
    assert_eq!(
        diagnostics(None, &hives),
        [format!("hives.conf:9:9: args[0] \"{}…\" is 4097 bytes long: at most 4096", "x".repeat(60))]
    );
    let args: Vec<String> = (0..257).map(|i| format!("\"a{i}\"")).collect();
    let hives = format!("{HW}{D}args = [\n{}\n]\n", args.join(",\n"));
    assert_eq!(diagnostics(None, &hives), ["hives.conf:266:1: args has 257 entries: at most 256"]);
    let args: Vec<String> = (0..256).map(|i| format!("\"a{i}\"")).collect();
    let hives = format!("{HW}{D}args = [{}]\n", args.join(", "));
    assert_eq!(diagnostics(None, &hives), Vec::<String>::new());
    for control in ["\\u0000", "\\t", "\\r", "\\u001b[31m", "\\u007f", "\\u0085"] {
        let hives = format!("{HW}{D}args = [\"ok\", \"a{control}b\"]\n");
        let d = diagnostics(None, &hives);
        assert!(d.len() == 1 && d[0].starts_with("hives.conf:9:15: args[1]"), "{control}: {d:?}");
    }
}

#[test]
fn reschedule_after_is_read_and_defaults_to_a_minute() {
    let c = config::parse(None, (Path::new("hives.conf"), H)).unwrap();
    assert_eq!(c.queen.reschedule_after, Duration::from_millis(DEFAULT_RESCHEDULE_AFTER_MS));
    assert_eq!(c.queen.reschedule_after, Duration::from_secs(60));
    let rbee = "[queen]\nreschedule_after = 300\n";
    let c = config::parse(Some((Path::new("rbee.conf"), rbee)), (Path::new("hives.conf"), H)).unwrap();
    assert_eq!(c.queen.reschedule_after, Duration::from_secs(300));
}
