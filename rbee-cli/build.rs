//! Marks the SSH end-to-end tests `ignore`d (cfg `rbee_no_testbed`) on machines where test
//! hosts cannot be made (no root, no sshd), so `cargo test` lists each of them as ignored, by
//! name, in its summary, instead of counting a test that returned early as passed. The same for
//! the engine tests (`rbee_no_llama`) and the Prometheus scrape test (`rbee_no_prometheus`).

#[path = "../testbed/src/check.rs"]
mod check;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(rbee_no_testbed)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../testbed/src/check.rs");
    // Installing openssh-server or iproute2 changes these directories.
    for dir in ["/usr/sbin", "/usr/bin"] {
        println!("cargo::rerun-if-changed={dir}");
    }
    // The engine tests need the real llama-server and a Python with `gguf` (scripts/test
    // provides both through these variables).
    println!("cargo::rustc-check-cfg=cfg(rbee_no_llama)");
    println!("cargo::rerun-if-env-changed=RBEE_LLAMA_SERVER");
    println!("cargo::rerun-if-env-changed=RBEE_TEST_PYTHON");
    let file = |var: &str| std::env::var_os(var).is_some_and(|p| std::path::Path::new(&p).is_file());
    if !file("RBEE_LLAMA_SERVER") || !file("RBEE_TEST_PYTHON") {
        println!("cargo::rustc-cfg=rbee_no_llama");
        println!(
            "cargo::warning=the llama.cpp engine tests will be ignored: run them through scripts/test (RBEE_LLAMA_SERVER, RBEE_TEST_PYTHON)"
        );
    }
    // The metrics test scrapes the daemons with a real Prometheus (Debian's `prometheus`, in
    // /usr/bin, watched above); the test runs the program found here.
    println!("cargo::rustc-check-cfg=cfg(rbee_no_prometheus)");
    match prometheus() {
        Some(program) => println!("cargo::rustc-env=RBEE_PROMETHEUS={}", program.display()),
        None => {
            println!("cargo::rustc-cfg=rbee_no_prometheus");
            println!(
                "cargo::warning=the Prometheus scrape test will be ignored: no `prometheus` in /usr/bin or on PATH (apt-get install prometheus)"
            );
        }
    }
    if let Err(reason) = check::check() {
        println!("cargo::rustc-cfg=rbee_no_testbed");
        println!("cargo::warning=the SSH end-to-end tests will be ignored: {reason}");
    }
}

/// `/usr/bin/prometheus`, else the first `prometheus` on `PATH`.
fn prometheus() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(std::path::PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}
