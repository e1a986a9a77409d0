//! Installing engines on a host (see [`rbee_proto::engine`] for the layout). Each kind of
//! source is one fixed script; they share how an engine is checked and recorded: the program
//! must answer `--version` within a minute, then the record `<type>/current` is written by
//! rename, and only then are the engines it replaces removed.

use std::time::Duration;

use rbee_proto::engine::{EngineInstall, program_name};

use super::steps::{StepError, script};
use crate::layout::Layout;
use crate::state::Artifact;
use crate::transport::{Progress, Transport, Upload, UploadData};

/// Shell functions every engine script uses: `digest FILE`, `engine_version PROGRAM` (the
/// version it prints: `b<N>` for llama.cpp's `version: X (build N, …)` or older `version: N (…)`,
/// else its last line, cleaned),
/// and `commit DIR ID PROGRAM VERSION` (writes the record, removes other engines of DIR).
macro_rules! sh_engine_common {
    () => {
        concat!(
    "set -u\n",
    sh_digest!(),
    r#"bounded() { if command -v timeout >/dev/null 2>&1; then timeout "$@"; else shift; "$@"; fi; }
engine_version() {
  out=$(bounded 60 "$1" --version 2>&1) || { echo "$1 --version failed: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"; return 1; }
  v=$(printf '%s\n' "$out" | sed -n 's/^version: .*(build \([0-9][0-9]*\).*/b\1/p; t; s/^version: \([0-9][0-9]*\) (.*/b\1/p' | head -n 1)
  [ -n "$v" ] || v=$(printf '%s\n' "$out" | grep -v '^[[:space:]]*$' | tail -n 1 | tr -d '\n' | tr -c 'A-Za-z0-9._+-' '_' | cut -c1-40)
  echo "${v:-unknown}"
}
commit() {
  cdir=$1; cid=$2; cprog=$3; cversion=$4
  st=$(stat -c '%s %.9Y %.9Z %i' "$cprog") && sha=$(digest "$cprog") || { echo "cannot read $cprog"; return 1; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$cid" "$sha" "$st" "$cversion" "$cprog" > "$cdir/current.tmp" && mv -f "$cdir/current.tmp" "$cdir/current" || return 1
  # The engines this one replaces (and leftovers of interrupted installs).
  for d in "$cdir"/* "$cdir"/.[!.]* "$cdir"/..?*; do
    [ -e "$d" ] || continue
    case "$d" in "$cdir/$cid"|"$cdir/current"|"$cdir/wheels"|"$cdir/current.tmp") continue ;; esac
    rm -rf "$d"
  done
}
"#
        )
    };
}

const INSTALL_TARBALL: &str = concat!(
    "# rbee-step: install-engine\n",
    r#"dir=$1; id=$2; upload=$3; want=$4; prog=$5
"#,
    sh_engine_common!(),
    r#"got=$(digest "$upload")
if [ "$got" != "$want" ]; then
  rm -f "$upload"
  echo "sha256 mismatch for the engine tarball: expected $want, got $got on the host; the installed engine is unchanged"
  exit 65
fi
stage="$dir/.stage-$id"
rm -rf "$stage" && mkdir -p "$stage" || exit 1
if ! out=$(tar -xzf "$upload" -C "$stage" 2>&1); then rm -rf "$stage" "$upload"; echo "cannot unpack the engine tarball: $out"; exit 1; fi
rm -f "$upload"
if [ ! -x "$stage/bin/$prog" ]; then rm -rf "$stage"; echo "the engine tarball has no executable bin/$prog"; exit 1; fi
version=$(engine_version "$stage/bin/$prog") || { rm -rf "$stage"; echo "$version; the installed engine is unchanged"; exit 1; }
if [ -e "$dir/$id" ]; then mv "$dir/$id" "$dir/.old-$id" || exit 1; fi
mv "$stage" "$dir/$id" || exit 1
commit "$dir" "$id" "$dir/$id/bin/$prog" "$version" || exit 1
echo "$version"
"#
);

const INSTALL_PIP: &str = concat!(
    "# rbee-step: install-engine-pip\n",
    r#"dir=$1; id=$2; spec=$3; dist=$4; wheels=$5; prog=$6; deadline=$7
"#,
    sh_engine_common!(),
    r#"command -v python3 >/dev/null 2>&1 || { echo "python3 is not installed on the host: install python3 and python3-venv"; exit 1; }
final="$dir/$id"
mkdir -p "$dir" || exit 1
# A venv holds its own path, so it is built where it stays; the record, written last, is what
# makes it the engine. A venv being replaced is kept aside until the new one passed its check.
rm -rf "$dir/.old-$id"
if [ -e "$final" ]; then mv "$final" "$dir/.old-$id" || exit 1; fi
restore() { rm -rf "$final"; if [ -e "$dir/.old-$id" ]; then mv "$dir/.old-$id" "$final"; fi; }
if ! out=$(python3 -m venv "$final" 2>&1); then restore; echo "python3 -m venv failed (install python3-venv): $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ')"; exit 1; fi
if [ -n "$wheels" ]; then set -- --no-index --find-links "$wheels"; else set --; fi
if ! out=$(bounded "$deadline" "$final/bin/python" -m pip install --disable-pip-version-check --no-input -q "$@" "$spec" 2>&1); then
  restore; echo "pip install $spec failed: $(printf '%s' "$out" | tail -n 5 | tr '\n' ' ')"; exit 1
fi
if [ ! -x "$final/bin/$prog" ]; then restore; echo "pip installed $spec but it has no $prog command"; exit 1; fi
version=$("$final/bin/python" -c 'import sys, importlib.metadata as m; print(m.version(sys.argv[1]))' "$dist" 2>/dev/null | tr -c 'A-Za-z0-9._+\n-' '_' | head -n 1)
commit "$dir" "$id" "$final/bin/$prog" "${version:-unknown}" || exit 1
echo "${version:-unknown}"
"#
);

const CHECK_PATH: &str = concat!(
    "# rbee-step: check-engine\n",
    r#"dir=$1; id=$2; program=$3; versioned=$4
"#,
    sh_engine_common!(),
    r#"if [ ! -f "$program" ]; then echo "engine $program does not exist on the host: install it there, or change engine.path"; exit 1; fi
if [ "$versioned" = 1 ]; then
  [ -x "$program" ] || { echo "engine $program is not executable"; exit 1; }
  version=$(engine_version "$program") || { echo "$version"; exit 1; }
else
  version=unknown
fi
mkdir -p "$dir" && commit "$dir" "$id" "$program" "$version" || exit 1
echo "$version"
"#
);

/// The distribution a pip requirement names: `vllm[audio]==0.6.3` → `vllm`.
fn distribution(spec: &str) -> &str {
    let end =
        spec.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')).unwrap_or(spec.len());
    &spec[..end]
}

/// The artifacts an engine install uploads (its tarball, or its wheels), in the order
/// [`install_engine`] takes their data.
pub fn engine_artifacts(engine: &EngineInstall) -> Vec<&Artifact> {
    match engine {
        EngineInstall::Artifact { artifact, .. } => vec![artifact],
        EngineInstall::Pip { wheels, .. } => wheels.iter().collect(),
        EngineInstall::Path { .. } | EngineInstall::Unavailable { .. } => Vec::new(),
    }
}

/// Installs `engine` for worker type `kind`; `files` holds the data of [`engine_artifacts`]
/// (bytes, or files streamed as they are sent), in that order. Returns the version the
/// engine reports.
pub async fn install_engine(
    t: &dyn Transport,
    kind: &str,
    engine: &EngineInstall,
    files: &[UploadData<'_>],
    deadline: Duration,
    progress: Progress<'_>,
) -> Result<String, StepError> {
    let dir = Layout::engine_dir(kind);
    let id = engine.id();
    let prog = program_name(kind).to_owned();
    let what = format!("installing engine {kind}");
    let out = match engine {
        EngineInstall::Unavailable { reason } => return Err(StepError::Failed(format!("engine {kind}: {reason}"))),
        EngineInstall::Artifact { artifact, .. } => {
            let upload = format!("{dir}/.upload-{}", artifact.short_digest());
            let data = files.first().copied().unwrap_or(UploadData::Bytes(&[]));
            t.upload(Upload::from_data(data, &upload, 0o600, deadline).with_progress(progress)).await?;
            let args = vec![dir, id, upload, artifact.sha256.to_string(), prog];
            script(t, &what, INSTALL_TARBALL, args, deadline).await?
        }
        EngineInstall::Pip { spec, wheels } => {
            let wheel_dir = if wheels.is_empty() { String::new() } else { format!("{dir}/wheels") };
            for (wheel, data) in wheels.iter().zip(files) {
                let file = wheel.name.rsplit('/').next().unwrap_or(&wheel.name);
                upload_verified(t, wheel, *data, &format!("{wheel_dir}/{file}"), deadline).await?;
            }
            let pip_deadline = deadline.max(Duration::from_secs(1800));
            let args = vec![
                dir,
                id,
                spec.clone(),
                distribution(spec).to_owned(),
                wheel_dir,
                prog,
                pip_deadline.as_secs().to_string(),
            ];
            script(t, &what, INSTALL_PIP, args, pip_deadline + Duration::from_secs(60)).await?
        }
        EngineInstall::Path { path } => {
            let versioned = if kind == "comfyui" { "0" } else { "1" };
            let args = vec![dir, id, path.clone(), versioned.to_owned()];
            script(t, &format!("checking engine {kind}"), CHECK_PATH, args, deadline).await?
        }
    };
    Ok(out.stdout_text().lines().last().unwrap_or("unknown").trim().to_owned())
}

const VERIFY_FILE: &str = concat!(
    "# rbee-step: verify-file\n",
    r#"staging=$1; target=$2; want=$3
"#,
    sh_engine_common!(),
    r#"got=$(digest "$staging")
if [ "$got" != "$want" ]; then rm -f "$staging"; echo "sha256 mismatch for $target: expected $want, got $got on the host"; exit 65; fi
mv -f "$staging" "$target"
"#
);

/// Uploads a file (a wheel) to a staging name, verifies its sha256 on the host, renames it.
async fn upload_verified(
    t: &dyn Transport,
    artifact: &Artifact,
    data: UploadData<'_>,
    target: &str,
    deadline: Duration,
) -> Result<(), StepError> {
    let staging = Layout::staging(target, &artifact.sha256);
    t.upload(Upload::from_data(data, &staging, 0o644, deadline)).await?;
    let args = vec![staging, target.to_owned(), artifact.sha256.to_string()];
    script(t, &format!("uploading {target}"), VERIFY_FILE, args, deadline).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::LocalTransport;

    #[test]
    fn the_distribution_of_a_requirement() {
        assert_eq!(distribution("vllm==0.6.3"), "vllm");
        assert_eq!(distribution("vllm[audio]>=0.6"), "vllm");
        assert_eq!(distribution("my_engine"), "my_engine");
    }

    fn tarball(files: &[(&str, &str, u32)]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, mode) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode)).unwrap();
        }
        let out = std::process::Command::new("tar").arg("-czf").arg("-").arg("-C").arg(dir.path()).arg(".").output();
        out.unwrap().stdout
    }

    fn engine(bytes: &[u8]) -> EngineInstall {
        let artifact = Artifact {
            name: "engine-llama-cpp-cpu.tar.gz".into(),
            version: "0.2.0".into(),
            sha256: crate::artifact::sha256_of(bytes),
            size: bytes.len() as u64,
        };
        EngineInstall::Artifact { variant: "cpu".into(), artifact }
    }

    const SERVER: &str = "#!/bin/sh\necho 'version: 4242 (abc)'\necho 'built with cc'\n";

    /// What llama.cpp builds print, old and new, and a program that prints only a number.
    #[tokio::test]
    async fn versions_are_read_from_what_engines_print() {
        let home = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(home.path());
        for (prints, version) in [
            ("version: 0.6.0-dev (build 11434, commit unknown)\nbuilt with GNU 12.2.0", "b11434"),
            ("version: 4242 (abc)", "b4242"),
            ("INFO loading\n0.6.3", "0.6.3"),
            ("weird version/with spaces", "weird_version_with_spaces"),
        ] {
            let program = home.path().join("engine");
            std::fs::write(&program, format!("#!/bin/sh\nprintf '%s\\n' '{}'\n", prints.replace('\n', "' '"))).unwrap();
            std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let e = EngineInstall::Path { path: program.display().to_string() };
            let got = install_engine(&t, "llama-cpp", &e, &[], Duration::from_secs(10), &|_| {}).await.unwrap();
            assert_eq!(got, version, "{prints}");
        }
    }

    /// A tarball is unpacked, checked, recorded; a second one replaces it and the first is
    /// removed; a tarball whose program cannot run leaves the installed engine as it was.
    #[tokio::test]
    async fn a_tarball_is_installed_replaced_and_a_broken_one_refused() {
        let home = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(home.path());
        let d = Duration::from_secs(30);
        let first = tarball(&[("bin/llama-server", SERVER, 0o755)]);
        let e1 = engine(&first);
        // Streamed from a file, as the executor hands over a directory source's tarball.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &first).unwrap();
        let streamed = UploadData::File { path: file.path(), len: first.len() as u64 };
        let v = install_engine(&t, "llama-cpp", &e1, &[streamed], d, &|_| {}).await.unwrap();
        assert_eq!(v, "b4242");
        let dir = home.path().join(".local/share/rbee/engines/llama-cpp");
        let record = std::fs::read_to_string(dir.join("current")).unwrap();
        let fields: Vec<&str> = record.trim_end().split('\t').collect();
        assert_eq!(fields[0], e1.id());
        assert_eq!(fields[3], "b4242");
        assert_eq!(fields[4], e1.program("llama-cpp"));

        let second = tarball(&[("bin/llama-server", &SERVER.replace("4242", "4243"), 0o755)]);
        let e2 = engine(&second);
        assert_eq!(
            install_engine(&t, "llama-cpp", &e2, &[UploadData::Bytes(&second)], d, &|_| {}).await.unwrap(),
            "b4243"
        );
        assert!(!dir.join(e1.id()).exists(), "the replaced engine is removed");

        let broken = tarball(&[("bin/llama-server", "#!/bin/sh\nexit 3\n", 0o755)]);
        let err = install_engine(&t, "llama-cpp", &engine(&broken), &[UploadData::Bytes(&broken)], d, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--version failed"), "{err}");
        let record = std::fs::read_to_string(dir.join("current")).unwrap();
        assert!(record.starts_with(&e2.id()), "{record}");
        assert!(dir.join(e2.id()).join("bin/llama-server").is_file());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 2, "{left:?}");

        let empty = tarball(&[("README", "no program", 0o644)]);
        let err = install_engine(&t, "llama-cpp", &engine(&empty), &[UploadData::Bytes(&empty)], d, &|_| {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no executable bin/llama-server"), "{err}");
    }

    #[tokio::test]
    async fn corrupt_bytes_are_refused_on_the_host() {
        let home = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(home.path());
        let good = tarball(&[("bin/llama-server", SERVER, 0o755)]);
        let mut bad = good.clone();
        bad[20] ^= 0xff;
        let err = install_engine(
            &t,
            "llama-cpp",
            &engine(&good),
            &[UploadData::Bytes(&bad)],
            Duration::from_secs(30),
            &|_| {},
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("sha256 mismatch"), "{err}");
        assert!(!home.path().join(".local/share/rbee/engines/llama-cpp/current").exists());
    }

    #[tokio::test]
    async fn a_path_engine_is_checked_not_installed() {
        let home = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(home.path());
        let d = Duration::from_secs(30);
        let missing = EngineInstall::Path { path: home.path().join("nope/llama-server").display().to_string() };
        let err = install_engine(&t, "llama-cpp", &missing, &[], d, &|_| {}).await.unwrap_err();
        assert!(err.to_string().contains("does not exist on the host"), "{err}");
        let program = home.path().join("opt/llama-server");
        std::fs::create_dir_all(program.parent().unwrap()).unwrap();
        std::fs::write(&program, SERVER).unwrap();
        std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let given = EngineInstall::Path { path: program.display().to_string() };
        assert_eq!(install_engine(&t, "llama-cpp", &given, &[], d, &|_| {}).await.unwrap(), "b4242");
        assert!(program.is_file(), "a path engine is never touched");
    }

    #[tokio::test]
    async fn an_unavailable_engine_fails_with_its_reason() {
        let home = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(home.path());
        let e = EngineInstall::Unavailable { reason: "the source has no engine-llama-cpp-cpu.tar.gz".into() };
        let err = install_engine(&t, "llama-cpp", &e, &[], Duration::from_secs(5), &|_| {}).await.unwrap_err();
        assert_eq!(err.to_string(), "engine llama-cpp: the source has no engine-llama-cpp-cpu.tar.gz");
    }
}
