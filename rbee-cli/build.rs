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
    if let Err(reason) = check::check() {
        println!("cargo::rustc-cfg=rbee_no_testbed");
        println!("cargo::warning=the SSH end-to-end tests will be ignored: {reason}");
    }
}
