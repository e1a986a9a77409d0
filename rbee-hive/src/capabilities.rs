//! What a host offers: CPU cores, RAM, and GPUs with their memory from `nvidia-smi`.

use std::time::Duration;

pub use rbee_core::proto::hive::{Capabilities, Gpu};

/// The `nvidia-smi` query rbee runs.
pub const NVIDIA_SMI_ARGS: &[&str] =
    &["--query-gpu=index,name,memory.total,memory.used,driver_version", "--format=csv,noheader,nounits"];

/// Why `nvidia-smi`'s output lists no usable GPUs. Its text is shown to users as the host's
/// `gpu_error`, so it keeps nvidia-smi's own words (and any source's text).
#[derive(Debug, thiserror::Error)]
pub enum NvidiaSmiError {
    /// nvidia-smi failed (a driver problem, say); its first line says why.
    #[error("nvidia-smi failed: {0}")]
    Failed(String),
    /// A line without the five fields asked for.
    #[error("unexpected nvidia-smi line {0:?}")]
    Line(String),
    /// A field that should be a number is not one.
    #[error("unexpected number {value:?} in {line:?}")]
    Number {
        /// The field.
        value: String,
        /// Its line.
        line: String,
    },
    /// A GPU index that does not fit a `u32`.
    #[error("{0}")]
    Index(#[source] std::num::TryFromIntError),
}

/// Parses `nvidia-smi` output (for [`NVIDIA_SMI_ARGS`]) given its exit status. No devices is
/// an empty list; a failing driver is an error with nvidia-smi's own words.
pub fn parse_nvidia_smi(success: bool, output: &str) -> Result<Vec<Gpu>, NvidiaSmiError> {
    let text = output.trim();
    if text.is_empty() || text.starts_with("No devices were found") {
        return Ok(Vec::new());
    }
    if !success || text.starts_with("NVIDIA-SMI has failed") {
        return Err(NvidiaSmiError::Failed(text.lines().next().unwrap_or(text).to_owned()));
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, total, used, driver] = f.as_slice() else {
                return Err(NvidiaSmiError::Line(line.to_owned()));
            };
            let num = |v: &str| {
                v.parse::<u64>().map_err(|_| NvidiaSmiError::Number { value: v.to_owned(), line: line.to_owned() })
            };
            Ok(Gpu {
                index: u32::try_from(num(index)?).map_err(NvidiaSmiError::Index)?,
                name: (*name).to_owned(),
                memory_total_mib: num(total)?,
                memory_used_mib: num(used)?,
                driver: (*driver).to_owned(),
            })
        })
        .collect()
}

fn ram_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// How long `nvidia-smi` may take; then it is killed and the GPUs are unknown.
pub const NVIDIA_SMI_TIMEOUT: Duration = Duration::from_secs(5);

/// Why this host's GPUs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// `nvidia-smi` ran but failed, or printed something unexpected.
    #[error(transparent)]
    NvidiaSmi(#[from] NvidiaSmiError),
    /// `nvidia-smi` did not finish in time (it was killed).
    #[error("nvidia-smi did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
}

/// This host's GPUs from `nvidia-smi` (none when it is not installed), waiting at most
/// `timeout` for it.
pub async fn gpus(timeout: Duration) -> Result<Vec<Gpu>, GpuError> {
    let mut command = tokio::process::Command::new("nvidia-smi");
    command.args(NVIDIA_SMI_ARGS).stdin(std::process::Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, command.output()).await {
        Err(_) => Err(GpuError::Timeout(timeout)),
        Ok(Err(_)) => Ok(Vec::new()), // not installed: no NVIDIA GPU
        Ok(Ok(out)) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            Ok(parse_nvidia_smi(out.status.success(), &text)?)
        }
    }
}

/// Detects this host's capabilities (runs `nvidia-smi` when it is installed, for at most
/// [`NVIDIA_SMI_TIMEOUT`]).
pub async fn detect(home: &std::path::Path) -> Capabilities {
    let (gpus, gpu_error) = match gpus(NVIDIA_SMI_TIMEOUT).await {
        Ok(g) => (g, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Capabilities {
        cpu_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ram_bytes: ram_bytes(),
        gpus,
        gpu_error,
        engines: crate::engines::list(home),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/tests/fixtures/nvidia-smi/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn no_gpu() {
        assert!(parse_nvidia_smi(false, &fixture("no-gpu.txt")).unwrap().is_empty());
    }

    #[test]
    fn one_gpu() {
        let gpus = parse_nvidia_smi(true, &fixture("one-gpu.txt")).unwrap();
        assert_eq!(
            gpus,
            [Gpu {
                index: 0,
                name: "NVIDIA GeForce RTX 4090".into(),
                memory_total_mib: 24564,
                memory_used_mib: 1024,
                driver: "550.54.14".into()
            }]
        );
    }

    #[test]
    fn eight_gpus() {
        let gpus = parse_nvidia_smi(true, &fixture("eight-gpus.txt")).unwrap();
        assert_eq!(gpus.len(), 8);
        assert_eq!(gpus[7].index, 7);
        assert_eq!(gpus.iter().map(|g| g.memory_total_mib).sum::<u64>(), 8 * 81559);
    }

    /// Recorded on an H200 host (driver 580) by `scripts/gpu-check`.
    #[test]
    fn recorded_h200() {
        let gpus = parse_nvidia_smi(true, &fixture("h200.txt")).unwrap();
        assert_eq!(gpus.len(), 1);
        let g = &gpus[0];
        assert_eq!((g.index, g.name.as_str(), g.memory_total_mib, g.memory_used_mib), (0, "NVIDIA H200", 143_771, 0));
        assert_eq!(g.driver, "580.159.04");
    }

    #[test]
    fn driver_error() {
        let err = parse_nvidia_smi(false, &fixture("driver-error.txt")).unwrap_err().to_string();
        assert!(err.contains("couldn't communicate with the NVIDIA driver"), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_made_up_gpu() {
        assert!(parse_nvidia_smi(true, "0, only two").is_err());
    }
}
