//! Workers: `rbee-worker-<type>` takes the worker contract's arguments (see
//! `docs/worker-contract.md`), launches the real engine installed on the host on a private
//! port, and bridges it to the contract: `GET /health` from the engine's own health check,
//! heartbeats to the hive, and `POST /v1/chat/completions` proxied to the engine's
//! OpenAI-compatible endpoint (streaming included). The engine is the program `--engine` names
//! (the one `rbee sync` installed, or checked where the config says it is); a launcher never
//! looks for an engine on `$PATH`. Without `--engine`, or when that program is missing, it fails
//! with a message that says how to install it; when the engine exits, the worker exits with
//! its status; when the worker dies, the engine dies with it.
#![warn(missing_docs)]

pub mod contract;
pub mod proxy;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use clap::builder::TypedValueParser as _;

/// The worker contract's arguments.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
pub struct WorkerArgs {
    /// Id the hive gave this worker.
    #[arg(long)]
    pub worker_id: String,
    /// Model file or directory.
    #[arg(long)]
    pub model: String,
    /// `cpu` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Port to serve on.
    #[arg(long)]
    pub port: u16,
    /// The hive's URL, for heartbeats.
    #[arg(long)]
    pub hive_url: Option<String>,
    /// The engine's program, an absolute path: the one `rbee sync` installed for this worker
    /// type (for ComfyUI, its `main.py`, run with `python3`). Run as given, never searched for;
    /// without it the launcher refuses to start (exit 127): no engine is looked up on `$PATH`.
    #[arg(long, value_name = "PATH", value_parser = clap::builder::PathBufValueParser::new().try_map(absolute_path))]
    pub engine: Option<PathBuf>,
    /// Arguments for the engine, after `--`: appended to the engine's own command line as
    /// given (never through a shell).
    #[arg(last = true)]
    pub engine_args: Vec<String>,
}

/// `--engine`'s parser: an absolute path, so that running it never searches `$PATH` and does
/// not depend on the launcher's working directory.
fn absolute_path(path: PathBuf) -> Result<PathBuf, String> {
    if path.is_absolute() { Ok(path) } else { Err("must be an absolute path".into()) }
}

/// What an engine is missing on this host; the launcher prints it and exits 127.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInstalled {
    /// A program the engine runs under (ComfyUI's `python3`) is not on `$PATH`.
    #[error("`{program}` not found: this worker needs {needs}")]
    Program {
        /// The program looked for.
        program: String,
        /// What must be installed, in words.
        needs: &'static str,
    },
    /// No `--engine`: the hive passes the engine `rbee sync` installed for this worker type, and
    /// it has none.
    #[error("no engine is installed for this worker on this host: this worker needs {needs}")]
    NoEngine {
        /// How to install it, in words.
        needs: &'static str,
    },
    /// The program `--engine` names is missing or unusable.
    #[error("engine {} {why}: run `rbee sync` to (re)install the engine", path.display())]
    Engine {
        /// The path `--engine` gave.
        path: PathBuf,
        /// What is wrong with it, in words (`does not exist`, …).
        why: String,
    },
}

/// An engine a launcher starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// llama.cpp's `llama-server`.
    LlamaCpp,
    /// `vllm serve`.
    Vllm,
    /// ComfyUI's `main.py` (from `--engine`), run with `python3`.
    ComfyUi,
}

impl Engine {
    /// The program and arguments that start the engine for `args`, listening on
    /// `127.0.0.1:<engine_port>` (the worker itself serves the contract on `args.port`). The
    /// engine arguments (`args.engine_args`) come last, after the launcher's own. The program
    /// is `args.engine` (for ComfyUI, `python3` with `args.engine` as its script); without it,
    /// the engine's usual name, which [`Engine::check_installed`] refuses to run.
    pub fn command(self, args: &WorkerArgs, engine_port: u16) -> (PathBuf, Vec<String>) {
        let (program, mut argv) = self.own_command(args, engine_port);
        argv.extend(args.engine_args.iter().cloned());
        (program, argv)
    }

    /// [`Engine::command`] without the engine arguments.
    fn own_command(self, args: &WorkerArgs, engine_port: u16) -> (PathBuf, Vec<String>) {
        let port = engine_port.to_string();
        let program = |name: &str| args.engine.clone().unwrap_or_else(|| PathBuf::from(name));
        match self {
            Engine::LlamaCpp => {
                let mut argv = vec![
                    "--model".into(),
                    args.model.clone(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port,
                ];
                argv.extend(["--n-gpu-layers".into(), if args.device == "cpu" { "0".into() } else { "999".into() }]);
                (program("llama-server"), argv)
            }
            Engine::Vllm => {
                let argv = vec![
                    "serve".into(),
                    args.model.clone(),
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port,
                ];
                (program("vllm"), argv)
            }
            Engine::ComfyUi => {
                // Lossless: the check refuses a path that is not UTF-8.
                let script =
                    args.engine.as_ref().map_or_else(|| "main.py".to_owned(), |p| p.to_string_lossy().into_owned());
                let mut argv = vec![script, "--listen".into(), "127.0.0.1".into(), "--port".into(), port];
                if args.device == "cpu" {
                    argv.push("--cpu".into());
                }
                ("python3".into(), argv)
            }
        }
    }

    /// How its engine gets installed, in words.
    pub fn requirement(self) -> &'static str {
        match self {
            Engine::LlamaCpp => {
                "llama.cpp's `llama-server`: `rbee sync` installs it from the release (the default), or declare \
                 engine = { path = \"/path/to/llama-server\" } for one you installed"
            }
            Engine::Vllm => {
                "vLLM: declare engine = { pip = \"vllm==X.Y.Z\" } (or { path = \"/path/to/vllm\" }) for this worker in \
                 hives.conf and run `rbee sync`"
            }
            Engine::ComfyUi => {
                "ComfyUI: declare engine = { path = \"/path/to/ComfyUI/main.py\" } for this worker in hives.conf and \
                 run `rbee sync` (with `python3` on PATH)"
            }
        }
    }

    /// The engine's health endpoint (200 once the model is loaded).
    pub fn health_path(self) -> &'static str {
        match self {
            Engine::LlamaCpp | Engine::Vllm => "/health",
            Engine::ComfyUi => "/system_stats",
        }
    }

    /// True when the engine serves OpenAI chat completions.
    pub fn serves_chat(self) -> bool {
        !matches!(self, Engine::ComfyUi)
    }

    /// `Err` naming what is missing when the engine is not installed: `--engine` itself, or the
    /// program it names (an executable file; for ComfyUI, a file, with `python3` on `$PATH`).
    /// No engine is looked for on `$PATH`.
    pub fn check_installed(self, args: &WorkerArgs) -> Result<(), NotInstalled> {
        self.check_installed_in(args, &std::env::var_os("PATH").unwrap_or_default())
    }

    /// [`Engine::check_installed`] with `path` as `$PATH`.
    fn check_installed_in(self, args: &WorkerArgs, path: &OsStr) -> Result<(), NotInstalled> {
        let (program, _) = self.command(args, 0);
        let Some(engine) = &args.engine else {
            return Err(NotInstalled::NoEngine { needs: self.requirement() });
        };
        // ComfyUI's `main.py` is run by `python3`: it need only be a file (named in UTF-8, as it
        // is one of `python3`'s arguments).
        let why = if !engine.is_absolute() {
            Some("is not an absolute path".into())
        } else if self == Engine::ComfyUi && engine.to_str().is_none() {
            Some("is not valid UTF-8".into())
        } else if self == Engine::ComfyUi {
            not_a_file(engine)
        } else {
            not_executable(engine)
        };
        if let Some(why) = why {
            return Err(NotInstalled::Engine { path: engine.clone(), why });
        }
        // Only ComfyUI's interpreter comes from `$PATH`.
        if !program.is_absolute() && find_in(path, &program).is_none() {
            let program = program.to_string_lossy().into_owned();
            return Err(NotInstalled::Program { program, needs: self.requirement() });
        }
        Ok(())
    }
}

fn find_in(path: &OsStr, program: &Path) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Why `path` is not a file, in words; `None` when it is one.
fn not_a_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some("is not a file".into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist".into()),
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

/// Why `path` is not an executable file, in words; `None` when it is one.
fn not_executable(path: &Path) -> Option<String> {
    if let Some(why) = not_a_file(path) {
        return Some(why);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o111 == 0) {
            return Some("is not executable".into());
        }
    }
    None
}

/// How the engine's environment differs from the launcher's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineEnv {
    /// Variables set for the engine, name and value.
    pub set: Vec<(String, String)>,
    /// Variables removed from the engine's environment.
    pub remove: Vec<OsString>,
}

/// The engine's environment for `device`, given the launcher's (`launcher_env`, e.g.
/// [`std::env::vars_os`]): `CUDA_VISIBLE_DEVICES` is `N` for `cuda:N` (the engine sees that GPU
/// as its first) and empty otherwise (`cpu`: no GPU), and every `RBEE_*` variable (the worker
/// token among them) is removed, so the engine and its plugins never see rbee's credentials.
pub fn engine_env(device: &str, launcher_env: impl IntoIterator<Item = (OsString, OsString)>) -> EngineEnv {
    let gpu = device.strip_prefix("cuda:").unwrap_or("");
    let remove = launcher_env.into_iter().map(|(name, _)| name).filter(|n| n.as_encoded_bytes().starts_with(b"RBEE_"));
    EngineEnv { set: vec![("CUDA_VISIBLE_DEVICES".into(), gpu.into())], remove: remove.collect() }
}

/// The hidden first argument with which a launcher runs itself to start its engine:
/// `--rbee-exec-engine <launcher pid> <program> <args…>`.
pub(crate) const EXEC_ENGINE: &str = "--rbee-exec-engine";

/// Arms the parent-death signal (SIGKILL when the launcher dies; it survives `exec`) and
/// becomes the engine. Refuses to run the engine when the launcher is already gone.
fn exec_engine(mut raw: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let launcher = raw.next().and_then(|p| p.into_string().ok()).and_then(|p| p.parse::<i32>().ok());
    let Some(program) = raw.next() else {
        eprintln!("error: {EXEC_ENGINE} needs the launcher's pid and the engine's program");
        return ExitCode::from(2);
    };
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        eprintln!("error: cannot arm the parent-death signal for the engine: {e}");
        return ExitCode::FAILURE;
    }
    if launcher != Some(nix::unistd::getppid().as_raw()) {
        eprintln!("error: the launcher is gone; not starting the engine");
        return ExitCode::FAILURE;
    }
    let mut command = std::process::Command::new(&program);
    command.args(raw);
    let err = std::os::unix::process::CommandExt::exec(&mut command);
    eprintln!("error: cannot start {}: {err}", program.to_string_lossy());
    ExitCode::from(127)
}

/// The whole launcher: parse, check, start the engine, serve the contract in front of it;
/// exits with the engine's status when it exits, and stops it on SIGTERM.
pub fn launch(engine: Engine) -> ExitCode {
    let mut raw = std::env::args_os().skip(1);
    if raw.next().is_some_and(|first| first == EXEC_ENGINE) {
        return exec_engine(raw);
    }
    let args = WorkerArgs::parse();
    let output = rbee_log::init(rbee_log::LogFormat::from_env());
    if let Err(e) = engine.check_installed(&args) {
        tracing::error!(worker = %args.worker_id, "{e}");
        return ExitCode::from(127);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(worker = %args.worker_id, "{e}");
            return ExitCode::FAILURE;
        }
    };
    let id = args.worker_id.clone();
    match runtime.block_on(proxy::run(engine, args, output)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!(worker = %id, "{e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(device: &str) -> WorkerArgs {
        WorkerArgs {
            worker_id: "w1".into(),
            model: "/m/model.gguf".into(),
            device: device.into(),
            port: 9001,
            hive_url: None,
            engine: None,
            engine_args: Vec::new(),
        }
    }

    #[test]
    fn llama_cpp_arguments() {
        let (p, a) = Engine::LlamaCpp.command(&args("cuda:0"), 9001);
        assert_eq!(p, Path::new("llama-server"));
        assert_eq!(a.join(" "), "--model /m/model.gguf --host 127.0.0.1 --port 9001 --n-gpu-layers 999");
    }

    #[test]
    fn llama_cpp_engine_args_come_last_as_given() {
        let engine_args = ["--ctx-size", "8192", "--alias", "two words; $(not a shell)"];
        let a = WorkerArgs { engine_args: engine_args.map(String::from).to_vec(), ..args("cpu") };
        let (p, argv) = Engine::LlamaCpp.command(&a, 9001);
        assert_eq!(p, Path::new("llama-server"));
        assert!(argv.ends_with(&engine_args.map(String::from)), "{argv:?}");
        assert_eq!(argv[..argv.len() - engine_args.len()], Engine::LlamaCpp.command(&args("cpu"), 9001).1[..]);
    }

    #[test]
    fn every_engine_appends_the_engine_args() {
        let a = WorkerArgs { engine_args: vec!["--x".into(), "1".into()], ..args("cpu") };
        for engine in [Engine::LlamaCpp, Engine::Vllm, Engine::ComfyUi] {
            let (_, argv) = engine.command(&a, 1);
            assert!(argv.ends_with(&["--x".to_owned(), "1".to_owned()]), "{engine:?}: {argv:?}");
        }
    }

    /// What the hive passes: the contract's flags, then `--` and the engine's arguments, which
    /// may look like flags of the worker's own.
    #[test]
    fn engine_args_follow_a_double_dash() {
        let parsed = WorkerArgs::try_parse_from([
            "rbee-worker-llama-cpp",
            "--worker-id",
            "w1",
            "--model",
            "/m/model.gguf",
            "--port",
            "9001",
            "--",
            "--port",
            "1",
            "--flash-attn",
        ])
        .unwrap();
        assert_eq!((parsed.port, parsed.engine_args.join(" ")), (9001, "--port 1 --flash-attn".to_owned()));
        let plain = WorkerArgs::try_parse_from(["w", "--worker-id", "w1", "--model", "m", "--port", "1"]).unwrap();
        assert!(plain.engine_args.is_empty());
        assert!(
            WorkerArgs::try_parse_from(["w", "--worker-id", "w1", "--model", "m", "--port", "1", "stray"]).is_err()
        );
    }

    #[test]
    fn vllm_arguments() {
        let (p, a) = Engine::Vllm.command(&args("cuda:0"), 9001);
        assert_eq!((p, a.join(" ")), ("vllm".into(), "serve /m/model.gguf --host 127.0.0.1 --port 9001".into()));
    }

    /// Without `--engine` no engine runs, even one on `$PATH`: the error says how to declare one.
    #[test]
    fn without_a_given_engine_none_is_looked_for() {
        let bin = tempfile::tempdir().unwrap();
        for name in ["vllm", "llama-server", "python3"] {
            executable(&bin.path().join(name), 0o755);
        }
        for (engine, says) in [
            (Engine::Vllm, "declare engine = { pip = \"vllm==X.Y.Z\" }"),
            (Engine::LlamaCpp, "`rbee sync` installs it from the release"),
            (Engine::ComfyUi, "declare engine = { path = \"/path/to/ComfyUI/main.py\" }"),
        ] {
            let err = engine.check_installed_in(&args("cpu"), bin.path().as_os_str()).unwrap_err().to_string();
            assert!(err.starts_with("no engine is installed for this worker on this host"), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    fn executable(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// With `--engine`, the launcher runs exactly that program; ComfyUI runs it with `python3`.
    #[test]
    fn a_given_engine_is_the_program_run() {
        let a = WorkerArgs { engine: Some("/e/bin/llama-server".into()), ..args("cuda:0") };
        let (p, argv) = Engine::LlamaCpp.command(&a, 9001);
        assert_eq!(
            (p, argv),
            (PathBuf::from("/e/bin/llama-server"), Engine::LlamaCpp.command(&args("cuda:0"), 9001).1)
        );
        let a = WorkerArgs { engine: Some("/e/venv/bin/vllm".into()), ..args("cpu") };
        assert_eq!(Engine::Vllm.command(&a, 1).0, PathBuf::from("/e/venv/bin/vllm"));
        let a = WorkerArgs { engine: Some("/e/ComfyUI/main.py".into()), ..args("cpu") };
        let (p, argv) = Engine::ComfyUi.command(&a, 7000);
        assert_eq!(
            (p, argv.join(" ")),
            ("python3".into(), "/e/ComfyUI/main.py --listen 127.0.0.1 --port 7000 --cpu".into())
        );
    }

    /// A given engine is checked where it is, never looked up on `$PATH`; a missing or unusable
    /// one is named with the way to fix it.
    #[test]
    fn a_given_engine_is_checked_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let no_path = empty.path().as_os_str();
        let program = dir.path().join("llama-server");
        let a = WorkerArgs { engine: Some(program.clone()), ..args("cpu") };
        let err = Engine::LlamaCpp.check_installed_in(&a, no_path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("engine {} does not exist: run `rbee sync` to (re)install the engine", program.display())
        );
        executable(&program, 0o644);
        let err = Engine::LlamaCpp.check_installed_in(&a, no_path).unwrap_err().to_string();
        assert!(err.contains("is not executable") && err.contains("run `rbee sync` to (re)install"), "{err}");
        executable(&program, 0o755);
        assert_eq!(Engine::LlamaCpp.check_installed_in(&a, no_path), Ok(()), "not searched for on PATH");
        let a = WorkerArgs { engine: Some(dir.path().into()), ..args("cpu") };
        let err = Engine::Vllm.check_installed_in(&a, no_path).unwrap_err().to_string();
        assert!(err.contains("is not a file"), "{err}");
        let a = WorkerArgs { engine: Some("bin/vllm".into()), ..args("cpu") };
        let err = Engine::Vllm.check_installed_in(&a, no_path).unwrap_err().to_string();
        assert!(err.contains("is not an absolute path"), "{err}");
    }

    /// ComfyUI's `main.py` need only be a file; `python3` still comes from `$PATH`.
    #[test]
    fn a_given_comfyui_needs_its_script_and_python() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let script = dir.path().join("main.py");
        let a = WorkerArgs { engine: Some(script.clone()), ..args("cpu") };
        let err = Engine::ComfyUi.check_installed_in(&a, bin.path().as_os_str()).unwrap_err().to_string();
        assert!(err.contains(&format!("engine {} does not exist", script.display())), "{err}");
        std::fs::write(&script, "print()\n").unwrap();
        let err = Engine::ComfyUi.check_installed_in(&a, bin.path().as_os_str()).unwrap_err().to_string();
        assert!(err.contains("`python3` not found"), "{err}");
        executable(&bin.path().join("python3"), 0o755);
        assert_eq!(Engine::ComfyUi.check_installed_in(&a, bin.path().as_os_str()), Ok(()));
        let a = WorkerArgs { engine: Some(dir.path().into()), ..args("cpu") };
        let err = Engine::ComfyUi.check_installed_in(&a, bin.path().as_os_str()).unwrap_err().to_string();
        assert!(err.contains("is not a file"), "{err}");
        let not_utf8 = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"/e/\xff/main.py");
        let a = WorkerArgs { engine: Some(PathBuf::from(not_utf8)), ..args("cpu") };
        let err = Engine::ComfyUi.check_installed_in(&a, bin.path().as_os_str()).unwrap_err().to_string();
        assert!(err.contains("is not valid UTF-8"), "{err}");
    }

    #[test]
    fn engine_is_an_optional_absolute_path() {
        let base = ["w", "--worker-id", "w1", "--model", "m", "--port", "1"];
        let parsed = WorkerArgs::try_parse_from(base.into_iter().chain(["--engine", "/e/llama-server"])).unwrap();
        assert_eq!(parsed.engine, Some(PathBuf::from("/e/llama-server")));
        assert_eq!(WorkerArgs::try_parse_from(base).unwrap().engine, None);
        let err = WorkerArgs::try_parse_from(base.into_iter().chain(["--engine", "llama-server"])).unwrap_err();
        assert!(err.to_string().contains("must be an absolute path"), "{err}");
    }

    fn vars(names: &[&str]) -> Vec<(OsString, OsString)> {
        names.iter().map(|n| (OsString::from(n), OsString::from("v"))).collect()
    }

    #[test]
    fn the_engine_sees_only_its_gpu() {
        let cuda = |env: EngineEnv| env.set.into_iter().find(|(n, _)| n == "CUDA_VISIBLE_DEVICES").map(|(_, v)| v);
        assert_eq!(cuda(engine_env("cuda:3", vars(&["CUDA_VISIBLE_DEVICES"]))), Some("3".into()));
        assert_eq!(cuda(engine_env("cuda:0", Vec::new())), Some("0".into()));
        assert_eq!(cuda(engine_env("cpu", vars(&["CUDA_VISIBLE_DEVICES"]))), Some(String::new()), "cpu: no GPU");
    }

    #[test]
    fn the_engine_gets_no_rbee_variables() {
        let env = engine_env(
            "cpu",
            vars(&["RBEE_WORKER_TOKEN", "PATH", "RBEE_HEARTBEAT_MS", "rbee_lower", "XRBEE_", "RBEE_"]),
        );
        assert_eq!(env.remove, ["RBEE_WORKER_TOKEN", "RBEE_HEARTBEAT_MS", "RBEE_"].map(OsString::from));
        assert!(env.set.iter().all(|(n, _)| !n.starts_with("RBEE_")), "{env:?}");
    }
}
