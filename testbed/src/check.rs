//! Whether test hosts can be made on this machine. Also compiled into `rbee-cli`'s build
//! script (through `#[path]`), which marks the SSH end-to-end tests `ignore`d where they cannot
//! run, so cargo's own summary names them as skipped instead of counting them as passed.

use std::path::Path;
use std::process::{Command, Stdio};

pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// `Ok` when test hosts can be made here, else why not.
pub fn check() -> Result<(), String> {
    if run("id", &["-u"]).map(|u| u.trim() == "0") != Ok(true) {
        return Err("test hosts need root (network namespaces)".into());
    }
    for tool in ["/usr/sbin/sshd", "/usr/bin/ssh-keygen"] {
        if !Path::new(tool).exists() {
            return Err(format!("{tool} is missing: install openssh-server"));
        }
    }
    for tool in ["ip", "unshare", "nsenter"] {
        if Command::new(tool).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
            return Err(format!("`{tool}` is missing: install iproute2 / util-linux"));
        }
    }
    Ok(())
}
