//! Config validation: the design's example is valid; each broken file gets the message a
//! user needs, at the right file:line:column.

use std::path::Path;

use rbee_core::config::{self, ConfigError, TransportKind, VersionReq};

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
            &["hives.conf:1:3: unknown field `hives`, expected `hive`"],
        ),
        ("missing hostname", None, "[[hive]]\nalias = \"a\"\n", &["hives.conf:1:1: missing field `hostname`"]),
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
            &["hives.conf:4:21: unknown worker type \"tensorrt\": use one of llama-cpp, vllm, comfyui"],
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
            &["hives.conf:4:29: unknown field `tag`, expected `type` or `version`"],
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
                "rbee.conf:2:1: unknown field `max_concurrent`, expected one of `max_concurrent_installs`, `ssh_timeout`, `health_check_timeout`, `source`, `allow_insecure_source`",
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

#[test]
fn schema_covers_both_files() {
    let schema = config::json_schema();
    assert!(schema["hives.conf"]["$defs"]["HiveEntry"]["properties"]["hive_port"].is_object(), "{schema:#}");
    assert!(schema["rbee.conf"]["properties"]["package"].is_object(), "{schema:#}");
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
