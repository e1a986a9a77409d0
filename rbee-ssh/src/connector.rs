//! [`SshConnector`]: local hives through `LocalTransport`, the others over SSH, with
//! `~/.ssh/config` and the `[ssh]` settings applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rbee_core::config::{Config, HiveConfig, SshSettings, TransportKind, home_dir};
use rbee_core::fleet::{Connector, local_transport};
use rbee_core::transport::{Transport, TransportError};

use crate::ssh_config::SshConfig;
use crate::transport::{SshTarget, SshTransport};

/// Connects to every kind of hive.
#[derive(Debug, Clone)]
pub struct SshConnector {
    settings: SshSettings,
    connect_timeout: Duration,
    ssh_config: SshConfig,
    home: PathBuf,
    local_user: String,
    use_agent: bool,
}

impl SshConnector {
    /// From the loaded config, reading `~/.ssh/config` (a missing file is fine).
    pub fn new(config: &Config) -> Self {
        let home = home_dir();
        let ssh_config = SshConfig::load(&home.join(".ssh/config")).unwrap_or_default();
        Self::with_ssh_config(config, ssh_config, home)
    }

    /// With an explicit ssh config and home directory (for tests and embedding).
    pub fn with_ssh_config(config: &Config, ssh_config: SshConfig, home: PathBuf) -> Self {
        let local_user =
            std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "root".to_owned());
        Self {
            settings: config.ssh.clone(),
            connect_timeout: config.package.ssh_timeout,
            ssh_config,
            home,
            local_user,
            use_agent: true,
        }
    }

    /// Do not ask the ssh-agent (only identity files are tried).
    pub fn without_agent(mut self) -> Self {
        self.use_agent = false;
        self
    }

    fn expand(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("~") {
            Ok(rest) => self.home.join(rest),
            Err(_) => p.to_path_buf(),
        }
    }

    /// Where and as whom a hive is reached: hives.conf values win over `~/.ssh/config`
    /// (a `ssh_port` left at its default 22 yields to the config's `Port`).
    pub fn target(&self, hive: &HiveConfig) -> SshTarget {
        let s = self.ssh_config.lookup(&hive.hostname, &self.home, &self.local_user);
        let mut identity_files = Vec::new();
        if let Some(key) = &hive.ssh_key {
            identity_files.push(self.expand(key));
        }
        identity_files.extend(s.identity_files.iter().cloned());
        for default in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            identity_files.push(self.home.join(".ssh").join(default));
        }
        let port = if hive.ssh_port != 22 { hive.ssh_port } else { s.port.unwrap_or(22) };
        SshTarget {
            alias: hive.alias.clone(),
            host: s.hostname.unwrap_or_else(|| hive.hostname.clone()),
            port,
            user: hive.ssh_user.clone().or(s.user).unwrap_or_else(|| self.local_user.clone()),
            identity_files,
            known_hosts: self
                .settings
                .known_hosts
                .as_deref()
                .map_or_else(|| self.home.join(".ssh/known_hosts"), |p| self.expand(p)),
            policy: self.settings.host_key_policy,
            connect_timeout: self.connect_timeout,
            use_agent: self.use_agent,
        }
    }
}

#[async_trait]
impl Connector for SshConnector {
    async fn connect(&self, hive: &HiveConfig) -> Result<Arc<dyn Transport>, TransportError> {
        match hive.transport {
            TransportKind::Local => Ok(Arc::new(local_transport(hive))),
            TransportKind::Ssh => Ok(Arc::new(SshTransport::connect(self.target(hive)).await?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hives_conf_wins_over_ssh_config() {
        let hives = "[[hive]]\nalias = \"a\"\nhostname = \"lab\"\nssh_user = \"alice\"\nssh_key = \"~/k\"\n\
                     [[hive]]\nalias = \"b\"\nhostname = \"lab\"\n";
        let config = rbee_core::config::parse(None, (Path::new("hives.conf"), hives)).unwrap();
        let ssh = SshConfig::parse("Host lab\n HostName 10.1.1.1\n User bob\n Port 2222\n IdentityFile ~/.ssh/lab\n");
        let c = SshConnector::with_ssh_config(&config, ssh, PathBuf::from("/home/me"));
        let a = c.target(&config.hives[0]);
        assert_eq!((a.host.as_str(), a.port, a.user.as_str()), ("10.1.1.1", 2222, "alice"));
        assert_eq!(a.identity_files[0], PathBuf::from("/home/me/k"));
        assert_eq!(a.identity_files[1], PathBuf::from("/home/me/.ssh/lab"));
        assert_eq!(a.known_hosts, PathBuf::from("/home/me/.ssh/known_hosts"));
        let b = c.target(&config.hives[1]);
        assert_eq!(b.user, "bob");
    }
}
