//! Workers: `rbee-worker-<type>` takes the worker contract's arguments (see
//! `docs/worker-contract.md`), launches the real engine installed on the host on a private
//! port, and bridges it to the contract: `GET /health` from the engine's own health check,
//! heartbeats to the hive, and `POST /v1/chat/completions` proxied to the engine's
//! OpenAI-compatible endpoint (streaming included). When the engine is not installed it fails
//! with a message naming what is missing; when the engine exits, the worker exits with its
//! status.
#![warn(missing_docs)]

pub mod contract;
pub mod proxy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

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
    /// Arguments for the engine, after `--`: appended to the engine's own command line as
    /// given (never through a shell).
    #[arg(last = true)]
    pub engine_args: Vec<String>,
}

/// What an engine is missing on this host; the launcher prints it and exits 127.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotInstalled {
    /// The engine's program is not on `$PATH`.
    #[error("`{program}` not found: this worker needs {needs}")]
    Program {
        /// The program looked for.
        program: String,
        /// What must be installed, in words.
        needs: &'static str,
    },
    /// A file the engine runs (ComfyUI's `main.py`) does not exist.
    #[error("{path} not found: this worker needs {needs}")]
    File {
        /// The file looked for.
        path: String,
        /// What must be installed, in words.
        needs: &'static str,
    },
}

/// An engine a launcher starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// llama.cpp's `llama-server`.
    LlamaCpp,
    /// `vllm serve`.
    Vllm,
    /// ComfyUI's `main.py`, from `$COMFYUI_DIR`.
    ComfyUi,
}

impl Engine {
    /// The program and arguments that start the engine for `args`, listening on
    /// `127.0.0.1:<engine_port>` (the worker itself serves the contract on `args.port`). The
    /// engine arguments (`args.engine_args`) come last, after the launcher's own.
    pub fn command(self, args: &WorkerArgs, engine_port: u16) -> (String, Vec<String>) {
        let (program, mut argv) = self.own_command(args, engine_port);
        argv.extend(args.engine_args.iter().cloned());
        (program, argv)
    }

    /// [`Engine::command`] without the engine arguments.
    fn own_command(self, args: &WorkerArgs, engine_port: u16) -> (String, Vec<String>) {
        let port = engine_port.to_string();
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
                ("llama-server".into(), argv)
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
                ("vllm".into(), argv)
            }
            Engine::ComfyUi => {
                let dir = std::env::var("COMFYUI_DIR").unwrap_or_else(|_| "ComfyUI".into());
                let mut argv =
                    vec![format!("{dir}/main.py"), "--listen".into(), "127.0.0.1".into(), "--port".into(), port];
                if args.device == "cpu" {
                    argv.push("--cpu".into());
                }
                ("python3".into(), argv)
            }
        }
    }

    /// What must be installed, in words.
    pub fn requirement(self) -> &'static str {
        match self {
            Engine::LlamaCpp => "llama.cpp's `llama-server` on PATH (https://github.com/ggml-org/llama.cpp)",
            Engine::Vllm => "vLLM's `vllm` command on PATH (`pip install vllm`)",
            Engine::ComfyUi => "ComfyUI checked out at $COMFYUI_DIR (default ./ComfyUI) with `python3` on PATH",
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

    /// `Err` naming what is missing when the engine is not installed.
    pub fn check_installed(self, args: &WorkerArgs) -> Result<(), NotInstalled> {
        self.check_installed_in(args, &std::env::var_os("PATH").unwrap_or_default())
    }

    /// [`Engine::check_installed`] with `path` as `$PATH`.
    fn check_installed_in(self, args: &WorkerArgs, path: &std::ffi::OsStr) -> Result<(), NotInstalled> {
        let (program, argv) = self.command(args, 0);
        if find_in(path, &program).is_none() {
            return Err(NotInstalled::Program { program, needs: self.requirement() });
        }
        if self == Engine::ComfyUi && !std::path::Path::new(&argv[0]).is_file() {
            return Err(NotInstalled::File { path: argv[0].clone(), needs: self.requirement() });
        }
        Ok(())
    }
}

fn find_in(path: &std::ffi::OsStr, program: &str) -> Option<PathBuf> {
    std::env::split_paths(path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// The whole launcher: parse, check, start the engine, serve the contract in front of it;
/// exits with the engine's status when it exits, and stops it on SIGTERM.
pub fn launch(engine: Engine) -> ExitCode {
    let args = WorkerArgs::parse();
    if let Err(e) = engine.check_installed(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(127);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(proxy::run(engine, args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
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
            engine_args: Vec::new(),
        }
    }

    #[test]
    fn llama_cpp_arguments() {
        let (p, a) = Engine::LlamaCpp.command(&args("cuda:0"), 9001);
        assert_eq!(p, "llama-server");
        assert_eq!(a.join(" "), "--model /m/model.gguf --host 127.0.0.1 --port 9001 --n-gpu-layers 999");
    }

    #[test]
    fn llama_cpp_engine_args_come_last_as_given() {
        let engine_args = ["--ctx-size", "8192", "--alias", "two words; $(not a shell)"];
        let a = WorkerArgs { engine_args: engine_args.map(String::from).to_vec(), ..args("cpu") };
        let (p, argv) = Engine::LlamaCpp.command(&a, 9001);
        assert_eq!(p, "llama-server");
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
        assert_eq!((p.as_str(), a.join(" ")), ("vllm", "serve /m/model.gguf --host 127.0.0.1 --port 9001".into()));
    }

    /// Whether or not this machine has the engine: the check runs against a `$PATH` the test
    /// controls.
    #[test]
    fn missing_engine_is_named() {
        let empty = tempfile::tempdir().unwrap();
        let err = Engine::Vllm.check_installed_in(&args("cpu"), empty.path().as_os_str()).unwrap_err().to_string();
        assert!(err.contains("`vllm` not found"), "{err}");
        let err = Engine::LlamaCpp.check_installed_in(&args("cpu"), empty.path().as_os_str()).unwrap_err().to_string();
        assert!(err.contains("`llama-server` not found"), "{err}");
        std::fs::write(empty.path().join("vllm"), "#!/bin/sh\n").unwrap();
        assert_eq!(Engine::Vllm.check_installed_in(&args("cpu"), empty.path().as_os_str()), Ok(()));
    }
}
