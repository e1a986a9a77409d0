//! Marks the SSH end-to-end tests `ignore`d (cfg `rbee_no_testbed`) on machines where test
//! hosts cannot be made (no root, no sshd), so `cargo test` lists each of them as ignored, by
//! name, in its summary, instead of counting a test that returned early as passed.

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
    if let Err(reason) = check::check() {
        println!("cargo::rustc-cfg=rbee_no_testbed");
        println!("cargo::warning=the SSH end-to-end tests will be ignored: {reason}");
    }
}
