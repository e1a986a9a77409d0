//! The engines `rbee sync` installed on this host, read from their records
//! (`~/.local/share/rbee/engines/<type>/current`, see `rbee_proto::engine`): the program a
//! worker of that type launches, and what `rbee hive capabilities` lists.

use std::path::{Path, PathBuf};

use rbee_core::proto::hive::EngineInfo;
use rbee_core::proto::layout::Layout;

/// The engine recorded for worker type `kind` under `home`, if any. A relative program path
/// is relative to `home`.
pub fn recorded(home: &Path, kind: &str) -> Option<EngineInfo> {
    let text = std::fs::read_to_string(home.join(Layout::engine_record(kind))).ok()?;
    parse(home, kind, &text)
}

fn parse(home: &Path, kind: &str, text: &str) -> Option<EngineInfo> {
    let line = text.lines().next()?;
    let mut fields = line.splitn(5, '\t');
    let (id, _sha, _stat, version, program) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    if program.is_empty() {
        return None;
    }
    let program: PathBuf = home.join(program);
    Some(EngineInfo {
        worker_type: kind.to_owned(),
        id: id.to_owned(),
        version: version.to_owned(),
        present: program.is_file(),
        program: program.to_string_lossy().into_owned(),
    })
}

/// Every recorded engine, by worker type.
pub fn list(home: &Path) -> Vec<EngineInfo> {
    let mut out: Vec<EngineInfo> = std::fs::read_dir(home.join(Layout::ENGINES_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|kind| recorded(home, &kind))
        .collect();
    out.sort_by(|a, b| a.worker_type.cmp(&b.worker_type));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_the_program_relative_to_the_home() {
        let home = Path::new("/home/u");
        let rel = "abc\tsha\t1 2 3 4\tb4242\t.local/share/rbee/engines/llama-cpp/abc/bin/llama-server\n";
        let e = parse(home, "llama-cpp", rel).unwrap();
        assert_eq!(e.program, "/home/u/.local/share/rbee/engines/llama-cpp/abc/bin/llama-server");
        assert_eq!((e.id.as_str(), e.version.as_str(), e.present), ("abc", "b4242", false));
        let abs = parse(home, "llama-cpp", "p\ts\tst\tb1\t/opt/llama.cpp/bin/llama server\n").unwrap();
        assert_eq!(abs.program, "/opt/llama.cpp/bin/llama server");
        assert!(parse(home, "llama-cpp", "").is_none());
        assert!(parse(home, "llama-cpp", "only\tthree\tfields\n").is_none());
    }

    #[test]
    fn engines_are_listed_from_their_records() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(Layout::engine_dir("llama-cpp"));
        std::fs::create_dir_all(dir.join("abc/bin")).unwrap();
        std::fs::write(dir.join("abc/bin/llama-server"), "x").unwrap();
        let program = format!("{}/abc/bin/llama-server", Layout::engine_dir("llama-cpp"));
        std::fs::write(dir.join("current"), format!("abc\ts\tst\tb7\t{program}\n")).unwrap();
        std::fs::create_dir_all(home.path().join(Layout::engine_dir("vllm"))).unwrap();
        let all = list(home.path());
        assert_eq!(all.len(), 1);
        assert!(all[0].present && all[0].version == "b7");
    }
}
