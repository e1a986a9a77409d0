//! The systemd unit that keeps a hive running across reboots.
//!
//! Where the host runs systemd (see the start script in `execute/steps.rs`), the hive is a
//! service: a system unit when rbee logs in as root, a user unit (with `loginctl
//! enable-linger`, so it runs without a session and starts at boot) otherwise. Elsewhere the
//! hive is a detached process, as before. The unit needs the host's home directory, which
//! only the host knows: the start script reports it, this module renders the unit, and the
//! script writes it (see `start_hive` in `execute/steps.rs`).

use crate::layout::Layout;

/// The unit's name, on every host.
pub const UNIT_NAME: &str = "rbee-hive.service";

/// Which systemd instance supervises the hive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitScope {
    /// The system manager (`/etc/systemd/system`), when rbee logs in as root.
    System,
    /// The user's manager (`~/.config/systemd/user`), kept running by lingering.
    User,
}

impl UnitScope {
    /// The scripts' name for it: `systemd-system` or `systemd-user`.
    pub fn mode(self) -> &'static str {
        match self {
            UnitScope::System => "systemd-system",
            UnitScope::User => "systemd-user",
        }
    }

    /// From the scripts' name.
    pub fn from_mode(mode: &str) -> Option<Self> {
        match mode {
            "systemd-system" => Some(UnitScope::System),
            "systemd-user" => Some(UnitScope::User),
            _ => None,
        }
    }
}

/// Why a unit cannot be written for these values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnitError {
    /// The home directory is not an absolute path.
    #[error("the home directory {0:?} is not an absolute path")]
    RelativeHome(String),
    /// A value holds what a unit file cannot carry: a control character (a newline would end
    /// the setting), a backslash (one at the end of a line continues it), or, for the home
    /// directory, trailing white space (systemd strips it).
    #[error(
        "the {what} {value:?} cannot be written into a systemd unit (control character, backslash or trailing space)"
    )]
    Unrepresentable {
        /// `home directory` or `alias`.
        what: &'static str,
        /// The value.
        value: String,
    },
}

/// The unit for the hive of `alias` listening on `port`, whose user's home directory is
/// `home` (absolute, as the host reports it). It runs the installed hive binary with the
/// arguments the detached start uses, restarts it when it fails, appends its output to the
/// hive log, and stops only the hive itself (`KillMode=process`): the workers it started keep
/// running, in their own process groups, and a restarted hive re-adopts them, as with a
/// detached hive.
pub fn hive_unit(home: &str, port: u16, alias: &str, scope: UnitScope) -> Result<String, UnitError> {
    if !home.starts_with('/') {
        return Err(UnitError::RelativeHome(home.to_owned()));
    }
    let unrepresentable = |s: &str| s.chars().any(|c| c.is_control() || c == '\\');
    if unrepresentable(home) || home.ends_with(char::is_whitespace) {
        return Err(UnitError::Unrepresentable { what: "home directory", value: home.to_owned() });
    }
    if unrepresentable(alias) {
        return Err(UnitError::Unrepresentable { what: "alias", value: alias.to_owned() });
    }
    let base = home.trim_end_matches('/');
    let at = |relative: String| format!("{base}/{relative}");
    let (bin, pid, log) = (at(Layout::hive_binary()), at(Layout::hive_pid()), at(Layout::hive_log()));
    let home_dir = if base.is_empty() { "/" } else { base };
    let mut unit = String::new();
    unit.push_str("# Written by `rbee sync` (rewritten by every sync; `rbee uninstall` removes it).\n");
    unit.push_str("[Unit]\n");
    unit.push_str(&format!("Description=rbee hive {}\n", specifiers(alias)));
    // A user manager has no network-online.target: the ordering means nothing there.
    if scope == UnitScope::System {
        unit.push_str("After=network-online.target\nWants=network-online.target\n");
    }
    unit.push_str("\n[Service]\nType=simple\n");
    unit.push_str(&format!("Environment={}\n", quoted(&specifiers(&format!("HOME={home_dir}")))));
    unit.push_str(&format!("WorkingDirectory={}\n", specifiers(home_dir)));
    let exec = [bin.as_str(), "--port", &port.to_string(), "--alias", alias, "--pid-file", &pid]
        .iter()
        .map(|w| exec_word(w))
        .collect::<Vec<_>>()
        .join(" ");
    unit.push_str(&format!("ExecStart={exec}\n"));
    unit.push_str("Restart=on-failure\nRestartSec=2\n");
    unit.push_str("# Stop the hive only: its workers run on and the next hive re-adopts them.\n");
    unit.push_str("KillMode=process\n");
    unit.push_str(&format!("StandardOutput=append:{}\n", specifiers(&log)));
    unit.push_str(&format!("StandardError=append:{}\n", specifiers(&log)));
    unit.push_str("\n[Install]\n");
    unit.push_str(match scope {
        UnitScope::System => "WantedBy=multi-user.target\n",
        UnitScope::User => "WantedBy=default.target\n",
    });
    Ok(unit)
}

/// `%` starts a specifier in most settings: `%%` is a literal one.
fn specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// A double-quoted word, with `\` and `"` escaped.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// One word of a command line (`ExecStart=`): specifiers and `$` (variable expansion)
/// doubled, quoted when it holds white space or quotes.
fn exec_word(s: &str) -> String {
    let escaped = specifiers(s).replace('$', "$$");
    if escaped.is_empty() || escaped.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';')) {
        quoted(&escaped)
    } else {
        escaped
    }
}

/// What the start script asks for when the hive is to run under systemd (it exits with
/// [`NEED_UNIT`]): `rbee-unit-needed MODE` and the home directory on the next line.
pub(super) fn parse_unit_request(stdout: &str) -> Option<(UnitScope, String)> {
    let mut lines = stdout.lines();
    let scope = UnitScope::from_mode(lines.next()?.strip_prefix("rbee-unit-needed ")?.trim())?;
    Some((scope, lines.next()?.to_owned()))
}

/// The start script's exit status when it needs the unit rendered for the home it printed.
pub(super) const NEED_UNIT: i32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_for_root() {
        insta::assert_snapshot!("system_unit", hive_unit("/root", 8600, "gpu-1", UnitScope::System).unwrap());
    }

    #[test]
    fn the_unit_for_a_user() {
        insta::assert_snapshot!("user_unit", hive_unit("/home/ann", 9100, "lab_2", UnitScope::User).unwrap());
    }

    /// A space needs quotes in command lines and in `Environment=`, `%` is doubled everywhere
    /// (`$` only on the command line, where it would expand a variable); a trailing `/` is
    /// dropped so no path has `//`.
    #[test]
    fn paths_with_spaces_and_percent_signs_are_escaped() {
        let unit = hive_unit("/home/a b%c$d/", 8600, "h%1", UnitScope::User).unwrap();
        insta::assert_snapshot!("escaped_unit", unit);
    }

    #[test]
    fn values_a_unit_cannot_carry_are_refused() {
        for home in ["relative/home", "", "~/x"] {
            assert_eq!(hive_unit(home, 1, "a", UnitScope::System), Err(UnitError::RelativeHome(home.into())));
        }
        for home in ["/home/a\nExecStartPre=/bin/evil", "/home/a\\", "/home/a ", "/home/\t"] {
            let err = hive_unit(home, 1, "a", UnitScope::System).unwrap_err();
            assert!(matches!(err, UnitError::Unrepresentable { what: "home directory", .. }), "{home:?}: {err}");
        }
        for alias in ["a\nb", "a\\", "a\rb"] {
            let err = hive_unit("/root", 1, alias, UnitScope::System).unwrap_err();
            assert!(matches!(err, UnitError::Unrepresentable { what: "alias", .. }), "{alias:?}: {err}");
        }
        assert!(hive_unit("/", 1, "a", UnitScope::System).unwrap().contains("ExecStart=/.local/bin/rbee-hive "));
    }

    #[test]
    fn the_scripts_request_is_read() {
        assert_eq!(
            parse_unit_request("rbee-unit-needed systemd-user\n/home/a b\n"),
            Some((UnitScope::User, "/home/a b".to_owned()))
        );
        assert_eq!(
            parse_unit_request("rbee-unit-needed systemd-system\n/root"),
            Some((UnitScope::System, "/root".into()))
        );
        for bad in ["", "rbee-unit-needed detached\n/root\n", "rbee-unit-needed systemd-user\n", "hello\n/root\n"] {
            assert_eq!(parse_unit_request(bad), None, "{bad:?}");
        }
    }

    /// `systemd-analyze verify` accepts the units (system and user) and says nothing about
    /// them: it exits 0 even for unknown keys or values it cannot parse, so its output is what
    /// is checked. Skipped (with a message) where systemd-analyze is missing, except under CI.
    #[test]
    fn systemd_analyze_verify_accepts_the_units() {
        let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| p.exists());
        let Some(analyze) = analyze else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must verify the systemd unit, but systemd-analyze is missing"
            );
            eprintln!("SKIPPED: systemd-analyze is not installed; the unit was not verified");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // A home with a space and a `%`, so the escaping is verified too.
        let home = dir.path().join("home of a%b");
        let bin = home.join(Layout::hive_binary());
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::process::Command::new("chmod").arg("755").arg(&bin).status().unwrap();
        let runtime = dir.path().join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        for scope in [UnitScope::System, UnitScope::User] {
            let units = dir.path().join(scope.mode());
            std::fs::create_dir_all(&units).unwrap();
            let file = units.join(UNIT_NAME);
            std::fs::write(&file, hive_unit(home.to_str().unwrap(), 8600, "gpu-1", scope).unwrap()).unwrap();
            let mut cmd = std::process::Command::new(analyze);
            cmd.arg("verify").args(["--man=no", "--generators=no"]);
            if scope == UnitScope::User {
                // A user manager needs a runtime directory, even for verify.
                cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
            }
            let out = cmd.arg(&file).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if scope == UnitScope::User && !out.status.success() && stderr.contains("Failed to initialize manager") {
                eprintln!("SKIPPED: `systemd-analyze verify --user` cannot run here: {}", stderr.trim());
                continue;
            }
            assert!(out.status.success(), "{scope:?} unit rejected: {stderr}");
            let about_it: Vec<&str> = stderr.lines().filter(|l| l.contains("rbee-hive")).collect();
            assert!(about_it.is_empty(), "{scope:?} unit: systemd-analyze says:\n{}", about_it.join("\n"));
        }
    }
}
