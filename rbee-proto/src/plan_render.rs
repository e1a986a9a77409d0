//! The `--dry-run` text of a plan, in the style of `terraform plan`.

use std::fmt;

use crate::config::TransportKind;
use crate::engine::EngineChange;
use crate::plan::{ActionKind, Binary, Change, HiveStatus, Plan, RestartReason, Summary};

impl fmt::Display for Binary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Binary::Hive => f.write_str("hive rbee-hive"),
            Binary::Worker(kind) => write!(f, "worker {kind}"),
        }
    }
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartReason::BinaryUpgraded => "binary replaced",
            RestartReason::StaleBinary => "running an old binary",
            RestartReason::Unhealthy => "not answering /health",
            RestartReason::Forced => "--force",
            RestartReason::Relink(drift) => return write!(f, "re-link to the queen: {drift}; workers keep running"),
        })
    }
}

impl fmt::Display for crate::plan::LinkDrift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::plan::LinkDrift;
        f.write_str(match self {
            LinkDrift::NotLinked => "not linked to a queen",
            LinkDrift::OtherQueen => "linked to another queen address",
            LinkDrift::Credential => "its credential is not this queen's",
            LinkDrift::Certificate => "no certificate from this queen's CA",
            LinkDrift::CertificateExpiring => "its certificate expires soon",
        })
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActionKind::InstallBinary { binary, change, artifact } => {
                let to = format!("{} (sha256:{})", artifact.version, artifact.short_digest());
                match change {
                    Change::Install => write!(f, "+ install   {binary} {to}"),
                    Change::Upgrade { from } => {
                        let was = from.version.as_deref().unwrap_or("unknown version");
                        write!(f, "~ upgrade   {binary} {was} (sha256:{}) -> {to}", from.sha256.short())
                    }
                    Change::Reinstall => write!(f, "~ reinstall {binary} {to} (--force)"),
                }
            }
            ActionKind::RemoveWorker { worker, installed } => {
                let v = installed.version.as_deref().unwrap_or("unknown version");
                write!(f, "- remove    worker {worker} {v} (sha256:{})", installed.sha256.short())
            }
            ActionKind::InstallEngine { worker, change, engine } => {
                let to = engine.describe();
                match change {
                    EngineChange::Install => write!(f, "+ install   engine {worker} {to}"),
                    EngineChange::Replace { from } => {
                        write!(f, "~ upgrade   engine {worker} {} -> {to}", from.version)
                    }
                    EngineChange::Repair { problem } => write!(f, "~ repair    engine {worker} {to} ({problem})"),
                    EngineChange::Reinstall => write!(f, "~ reinstall engine {worker} {to} (--force)"),
                }
            }
            ActionKind::Rollback { binaries, to, .. } => {
                let v = to.version.as_deref().unwrap_or("unknown version");
                write!(f, "~ rollback  to rbee-hive {v} (sha256:{}): {}", to.sha256.short(), binaries.join(", "))
            }
            ActionKind::StartHive { port } => write!(f, "+ start     hive on port {port}"),
            ActionKind::RestartHive { port, reason } => {
                write!(f, "~ restart   hive on port {port} ({reason})")
            }
            ActionKind::StopHive => f.write_str("- stop      hive"),
            ActionKind::WaitHealthy { port } => {
                write!(f, "  wait      until /health answers on port {port}")
            }
            ActionKind::Uninstall { purge: false } => f.write_str("- uninstall hive and workers (state kept)"),
            ActionKind::Uninstall { purge: true } => f.write_str("- uninstall hive, workers and rbee state (--purge)"),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Plan: {} to install, {} to upgrade, {} to remove, {} to start, {} to restart",
            self.install, self.upgrade, self.remove, self.start, self.restart
        )?;
        if self.stop > 0 {
            write!(f, ", {} to stop", self.stop)?;
        }
        write!(f, "; {} in sync", self.in_sync)?;
        if self.unreachable > 0 {
            write!(f, ", {} unreachable", self.unreachable)?;
        }
        if self.skipped > 0 {
            write!(f, ", {} skipped", self.skipped)?;
        }
        f.write_str(".")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for hive in &self.hives {
            let via = match hive.transport {
                TransportKind::Local => "local",
                TransportKind::Ssh => "ssh",
            };
            let head = format!("hive {} ({}, {via})", hive.alias, hive.hostname);
            match &hive.status {
                HiveStatus::Changes => {
                    writeln!(f, "# {head}")?;
                    for action in &hive.actions {
                        writeln!(f, "  {}", action.kind)?;
                    }
                }
                HiveStatus::InSync => writeln!(f, "# {head}: in sync")?,
                HiveStatus::Unreachable { reason } => writeln!(f, "! {head}: unreachable: {reason}")?,
                HiveStatus::Skipped => writeln!(f, "# {head}: skipped (not selected)")?,
            }
            for note in &hive.notes {
                writeln!(f, "  note: {note}")?;
            }
        }
        if self.hives.is_empty() {
            writeln!(f, "No hives declared.")?;
        }
        writeln!(f)?;
        writeln!(f, "{}", self.summary())
    }
}
