fn main() -> std::process::ExitCode {
    rbee_worker::launch(rbee_worker::Engine::Vllm)
}
