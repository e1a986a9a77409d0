//! Composite remote steps, each built from the three [`Transport`] primitives: atomic verified
//! install, the per-host lock, starting/stopping the hive, waiting for health, uninstalling.
//! Every script is fixed text; values reach it only as positional parameters.

use std::time::Duration;

use super::systemd;
use crate::layout::Layout;
use crate::state::Artifact;
use crate::transport::{CommandOutput, Progress, RemoteCommand, Transport, TransportError, UploadData};

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The transport failed (maybe transient).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The host ran the step and it failed; retrying will not help.
    #[error("{0}")]
    Failed(String),
}

impl StepError {
    /// True when a retry may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Transport(e) if e.is_transient())
    }
}

/// Runs a fixed script and turns a non-zero exit into [`StepError::Failed`] with its output.
pub(super) async fn script(
    t: &dyn Transport,
    what: &str,
    text: &str,
    args: Vec<String>,
    deadline: Duration,
) -> Result<CommandOutput, StepError> {
    let out = t.run(RemoteCommand::script(text, args, deadline)).await?;
    checked(t, what, out)
}

/// A script's output, or [`StepError::Failed`] with it when it exited non-zero.
fn checked(t: &dyn Transport, what: &str, out: CommandOutput) -> Result<CommandOutput, StepError> {
    if out.success() { Ok(out) } else { Err(failure(t, what, &out)) }
}

/// A failed script's error: what failed where, its exit status, stdout and stderr.
fn failure(t: &dyn Transport, what: &str, out: &CommandOutput) -> StepError {
    let mut detail = out.stdout_text().trim().to_owned();
    let err = out.stderr_text();
    if !err.is_empty() {
        if !detail.is_empty() {
            detail.push_str("; ");
        }
        detail.push_str(&err);
    }
    StepError::Failed(format!("{what} failed on {} (exit status {}): {detail}", t.describe(), out.status))
}

/// Test hooks that break an install on purpose, to prove a broken install leaves the old
/// binary in place. Not for programs: `rbee` honours them (`RBEE_TEST_FAULT`) only in debug
/// builds.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallFault {
    /// Upload bytes that differ from the artifact (the host's sha256 check must catch it).
    CorruptUpload,
    /// Stop after upload and verification, before the rename.
    StopBeforeRename,
}

/// `$1` install records, `$2` the directory of replaced binaries, `$3` `stop-before-rename`
/// (a test hook) or empty, then five arguments per file: staging name, target, sha256, version,
/// length; the files arrive on standard input one after the other. One command installs all of
/// a host's binaries: each is received into its staging name (private until checked) and its
/// sha256 checked; only when every one of them is right, the replaced binaries are kept for a
/// rollback, the new ones fsynced, renamed into place, and their install records written the
/// same way. A file that fails its check leaves every target as it was: the output starts with
/// `rbee-install-failed N` (the file's place, from 1), then why. Shell built-ins where a program
/// is not needed, and one `chmod`, `stat` and `sync` for all the files: an install runs this
/// on every host at once, and each program started costs the host's CPU. Paths (from
/// [`Layout`]) hold no newline: lists of them are split on newlines only, with globbing off.
const INSTALL: &str = concat!(
    "# rbee-step: install-binary\n",
    sh_digest!(),
    r#"set -u
records=$1; prev=$2; stop=$3; shift 3
nl='
'
staged=; targets=; code=1
# Each file's five arguments to function $1, with the file's place first.
each() {
  e_f=$1; shift; e_i=0
  while [ $# -ge 5 ]; do e_i=$((e_i+1)); "$e_f" "$e_i" "$1" "$2" "$3" "$4" "$5" || return 1; shift 5; done
}
failed() { printf 'rbee-install-failed %s\n%s\n' "$1" "$2"; }
# The directory of path $1, in $d.
dir_of() { case "$1" in */*) d=${1%/*} ;; *) d=. ;; esac; }
receive() {
  dir_of "$3"
  [ -d "$d" ] || mkdir -p "$d" || { failed "$1" "cannot create $d"; return 1; }
  staged="$staged$2$nl"
  if ! head -c "$6" > "$2"; then failed "$1" "cannot write $2"; return 1; fi
  got=$(digest "$2")
  [ "$got" = "$4" ] && return 0
  n=$(wc -c < "$2"); n=${n##* }
  if [ "$n" != "$6" ]; then failed "$1" "received $n of $6 bytes for $3; the installed file is unchanged"; return 1; fi
  code=65
  failed "$1" "sha256 mismatch for $3: expected $4, got $got on the host; the installed file is unchanged"
  return 1
}
umask 077
set -f
if ! each receive "$@"; then IFS=$nl; rm -f $staged; exit $code; fi
[ -z "$stop" ] || exit 0
# A binary being replaced is kept (a hard link: no copy) with its record, for a rollback.
keep() {
  n=${3##*/}
  if [ -f "$3" ] && [ -f "$records/$n" ] && read -r oldsha _ < "$records/$n" && [ "$oldsha" != "$4" ]; then
    [ -d "$prev" ] || mkdir -p "$prev" || return 1
    { ln -f "$3" "$prev/$n" 2>/dev/null || cp -p "$3" "$prev/$n"; } && cp -f "$records/$n" "$prev/$n.record"
  fi
}
each keep "$@" || exit 1
# On disk before the renames, and the renames themselves after them (coreutils' `sync FILE`
# fsyncs that file or directory only): a power cut never leaves an empty binary or record.
durable() { sync "$@" 2>/dev/null || :; }
IFS=$nl
chmod 755 $staged && durable $staged || exit 1
dirs=
place() {
  mv -f "$2" "$3" || return 1
  targets="$targets$3$nl"
  dir_of "$3"
  case "$nl$dirs" in *"$nl$d$nl"*) ;; *) dirs="$dirs$d$nl" ;; esac
}
each place "$@" || exit 1
# The install records observation trusts while size, mtime, ctime and inode are unchanged.
[ -d "$records" ] || mkdir -p "$records" || exit 1
stats=$(stat -c '%s %.9Y %.9Z %i' $targets) || exit 1
tmps=
record() {
  st=${stats%%"$nl"*}; stats=${stats#*"$nl"}
  printf '%s %s %s\n' "$4" "$st" "$5" > "$records/${3##*/}.tmp" || return 1
  tmps="$tmps$records/${3##*/}.tmp$nl"
}
each record "$@" || exit 1
# The directories of the renames above and the records, in one call.
durable $dirs $tmps
commit() { mv -f "$records/${3##*/}.tmp" "$records/${3##*/}"; }
each commit "$@" || exit 1
durable "$records"
# Leftovers of interrupted installs of these targets (staging files, partial uploads of them).
set +f
unset IFS
tidy() {
  dir_of "$3"
  for f in "$d/.${3##*/}.rbee-tmp-"* "$d/..${3##*/}.rbee-tmp-"*; do
    [ -e "$f" ] && rm -f "$f"
  done
  return 0
}
each tidy "$@"
exit 0
"#
);

/// The first line of [`INSTALL`]'s output when a file failed its check.
const INSTALL_FAILED: &str = "rbee-install-failed ";

/// One binary for [`install_binaries`]: what it must be, its bytes (which must be `artifact`:
/// in memory, or a file streamed as it is sent), and where it goes.
#[derive(Debug, Clone, Copy)]
pub struct BinaryInstall<'a> {
    /// What it must be.
    pub artifact: &'a Artifact,
    /// Its bytes.
    pub data: UploadData<'a>,
    /// Where it goes (a [`Layout`] path).
    pub target: &'a str,
}

/// Why [`install_binaries`] failed: the file at `index` (or the whole command, reported as
/// the first file's), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallFailure {
    /// The failed file's place in the list.
    pub index: usize,
    /// Why.
    pub error: StepError,
}

/// Installs every file of `files` in one command ([`INSTALL`]): each is received into a
/// staging name in its target's directory, its sha256 checked on the host, and only when all
/// are right are they renamed over the old files. At every point each target is either the
/// old file or the new one; a file that fails its check changes none of them.
pub async fn install_binaries(
    t: &dyn Transport,
    files: &[BinaryInstall<'_>],
    deadline: Duration,
    progress: Progress<'_>,
    fault: Option<InstallFault>,
) -> Result<(), InstallFailure> {
    let whole = |error: StepError| InstallFailure { index: 0, error };
    let mut data: Vec<UploadData<'_>> = files.iter().map(|f| f.data).collect();
    let corrupted;
    if fault == Some(InstallFault::CorruptUpload) {
        // The first file read whole (bytes, or a file's chunks), its first byte flipped.
        let mut b = Vec::new();
        let mut chunks = data[0].chunks(1 << 20).await.map_err(|e| whole(e.into()))?;
        while let Some(c) = chunks.next().await.map_err(|e| whole(e.into()))? {
            b.extend_from_slice(&c);
        }
        if let Some(first) = b.first_mut() {
            *first ^= 0xff;
        } else {
            b.push(0);
        }
        corrupted = b;
        data[0] = UploadData::Bytes(&corrupted);
    }
    let stop = fault == Some(InstallFault::StopBeforeRename);
    let mut args =
        vec![Layout::installed_dir(), Layout::previous_dir(), if stop { "stop-before-rename" } else { "" }.to_owned()];
    for (f, d) in files.iter().zip(&data) {
        if f.target.contains('\n') {
            return Err(whole(StepError::Failed(format!("{:?}: a target cannot hold a newline", f.target))));
        }
        args.extend([
            Layout::staging(f.target, &f.artifact.sha256),
            f.target.to_owned(),
            f.artifact.sha256.to_string(),
            f.artifact.version.clone(),
            d.len().to_string(),
        ]);
    }
    let input = UploadData::Concat(&data);
    let out = t
        .run_with_input(RemoteCommand::script(INSTALL, args, deadline), input, progress)
        .await
        .map_err(|e| whole(e.into()))?;
    if !out.success() {
        let text = out.stdout_text();
        if let Some((index, why)) = text
            .strip_prefix(INSTALL_FAILED)
            .and_then(|rest| rest.split_once('\n'))
            .and_then(|(n, why)| Some((n.trim().parse::<usize>().ok()?.checked_sub(1)?, why)))
            .filter(|(i, _)| *i < files.len())
        {
            let out = CommandOutput { stdout: why.as_bytes().to_vec(), ..out };
            return Err(InstallFailure {
                index,
                error: failure(t, &format!("installing {}", files[index].target), &out),
            });
        }
        let what = match files {
            [one] => format!("installing {}", one.target),
            _ => format!("installing {} binaries", files.len()),
        };
        return Err(whole(failure(t, &what, &out)));
    }
    if stop {
        let targets: Vec<&str> = files.iter().map(|f| f.target).collect();
        let error =
            StepError::Failed(format!("install of {} interrupted before rename (test hook)", targets.join(", ")));
        return Err(whole(error));
    }
    Ok(())
}

/// `$1` install records, `$2` previous dir, then the binaries to restore (paths from [`Layout`]).
const RESTORE_PREVIOUS: &str = r#"# rbee-step: restore-previous
set -u
records=$1; prev=$2; shift 2
for target in "$@"; do
  name=$(basename "$target")
  [ -f "$prev/$name" ] && [ -f "$prev/$name.record" ] || { echo "no previous $name is kept on this host"; exit 1; }
  read -r sha _ _ _ _ version < "$prev/$name.record" || { echo "the record of the previous $name cannot be read"; exit 1; }
  mv -f "$prev/$name" "$target" || exit 1
  printf '%s %s %s
' "$sha" "$(stat -c '%s %.9Y %.9Z %i' "$target")" "${version:-}" > "$records/$name.tmp" &&
    mv -f "$records/$name.tmp" "$records/$name" && rm -f "$prev/$name.record" || exit 1
done
"#;

/// Puts back the binaries an upgrade replaced (kept under [`Layout::previous_dir`]), with
/// their install records.
pub async fn restore_previous(t: &dyn Transport, targets: &[String], deadline: Duration) -> Result<(), StepError> {
    let mut args = vec![Layout::installed_dir(), Layout::previous_dir()];
    args.extend(targets.iter().cloned());
    script(t, "restoring the previous binaries", RESTORE_PREVIOUS, args, deadline).await?;
    Ok(())
}

/// Removes a worker binary from the catalog, with its install record.
pub async fn remove_file(t: &dyn Transport, target: &str, deadline: Duration) -> Result<(), StepError> {
    let text = "# rbee-step: remove-file\nrm -f \"$1\" \"$2/$(basename \"$1\")\"";
    script(t, &format!("removing {target}"), text, vec![target.to_owned(), Layout::installed_dir()], deadline).await?;
    Ok(())
}

/// `$1` the lock directory, `$2` seconds after which a lock is stale, `$3` this owner, `$4` an
/// owner whose lock may be broken at once (or empty), then a command run once the lock is
/// held (the observation, so that taking the lock and looking at the host are one command):
/// its output follows a first line `rbee-locked`, and its status is the script's.
const TRY_LOCK: &str = r#"# rbee-step: try-lock
set -u
dir=$1; stale_s=$2; owner=$3; breakable=$4; shift 4
case "$dir" in */*) [ -d "${dir%/*}" ] || mkdir -p "${dir%/*}" || exit 1 ;; esac
take() { mkdir "$dir" 2>/dev/null || return 1; date +%s > "$dir/since"; printf '%s\n' "$owner" > "$dir/owner"; }
held() { echo rbee-locked; if [ $# -gt 0 ]; then exec "$@"; fi; exit 0; }
h=; { read -r h < "$dir/owner"; } 2>/dev/null
if [ -n "$breakable" ] && [ "$h" = "$breakable" ]; then rm -rf "$dir"; fi
take && held "$@"
# A lock without a readable "since" (its holder died between mkdir and writing it) ages from
# the directory's own time, so it is taken over after the lease like any other.
now=$(date +%s); since=; { read -r since < "$dir/since"; } 2>/dev/null
case "$since" in ''|*[!0-9]*) since=$(stat -c %Y "$dir" 2>/dev/null || echo "$now") ;; esac
if [ $(( now - since )) -gt "$stale_s" ]; then rm -rf "$dir"; take && held "$@"; fi
h=; { read -r h < "$dir/owner"; } 2>/dev/null
printf 'busy %s\n' "$h"
exit 75
"#;

/// The first line of [`TRY_LOCK`]'s output once it holds the lock.
const LOCKED: &str = "rbee-locked\n";

/// Who holds a lock: this process, on this machine. Another sync on the same machine whose
/// process is gone left the lock behind and it can be broken at once.
pub fn lock_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("rbee pid {} on {host} since {}", std::process::id(), super::events::now_ms())
}

/// The owner's pid, when it ran on this machine and has exited.
fn dead_local_owner(owner: &str) -> bool {
    let mine = lock_owner();
    let host_of = |o: &str| o.split(" on ").nth(1).and_then(|r| r.split(" since ").next()).map(str::to_owned);
    let pid = owner.strip_prefix("rbee pid ").and_then(|r| r.split(' ').next()).and_then(|p| p.parse::<u32>().ok());
    match (pid, host_of(owner), host_of(&mine)) {
        (Some(pid), Some(theirs), Some(ours)) if theirs == ours => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists() && std::path::Path::new("/proc/self").exists()
        }
        _ => false,
    }
}

/// Takes the per-host sync lock, waiting up to `wait` while another sync holds it, then runs
/// `then` (a command's argv) in the same command and returns its output: what the host looks
/// like under the lock. A lock whose holder stopped refreshing it for `stale_after`, or whose
/// holder was a process of this machine that has exited, is taken over. Once this returns
/// `Ok`, the lock is held whatever `then` did.
pub async fn lock(
    t: &dyn Transport,
    owner: &str,
    then: &[String],
    wait: Duration,
    stale_after: Duration,
    deadline: Duration,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<CommandOutput, StepError> {
    let started = tokio::time::Instant::now();
    let mut breakable = String::new();
    loop {
        let mut args = vec![Layout::lock_dir(), stale_after.as_secs().to_string(), owner.to_owned(), breakable.clone()];
        args.extend(then.iter().cloned());
        let mut out = t.run(RemoteCommand::script(TRY_LOCK, args, deadline)).await?;
        if out.stdout.starts_with(LOCKED.as_bytes()) {
            out.stdout.drain(..LOCKED.len());
            return Ok(out);
        }
        let text = out.stdout_text();
        // An empty holder: the other sync made the lock a moment ago and is writing its name.
        let Some(holder) = text.trim().strip_prefix("busy").map(str::trim).filter(|_| out.status == 75) else {
            return Err(StepError::Failed(format!(
                "taking the sync lock failed on {} (exit status {}): {}{}",
                t.describe(),
                out.status,
                text.trim(),
                out.stderr_text()
            )));
        };
        if !holder.is_empty() && dead_local_owner(holder) && breakable != holder {
            breakable = holder.to_owned();
            continue;
        }
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StepError::Failed(format!(
                "cancelled while another sync held the lock on {} ({holder})",
                t.describe()
            )));
        }
        if started.elapsed() >= wait {
            return Err(StepError::Failed(format!(
                "another sync holds the lock on {} ({holder}); waited {}s. If no sync is running, remove ~/{} on the host",
                t.describe(),
                wait.as_secs(),
                Layout::lock_dir()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Releases the lock if `owner` still holds it.
pub async fn unlock(t: &dyn Transport, owner: &str, deadline: Duration) -> Result<(), StepError> {
    let text = concat!("# rbee-step: unlock\n", sh_held_by!(), "if held_by \"$1\" \"$2\"; then rm -rf \"$1\"; fi");
    script(t, "releasing the sync lock", text, vec![Layout::lock_dir(), owner.to_owned()], deadline).await?;
    Ok(())
}

/// Keeps the lock fresh while a long step runs, so it is not taken for stale.
pub async fn refresh_lock(t: &dyn Transport, owner: &str, deadline: Duration) -> Result<(), StepError> {
    let text = concat!(
        "# rbee-step: refresh-lock\n",
        sh_held_by!(),
        "if held_by \"$1\" \"$2\"; then date +%s > \"$1/since\"; fi"
    );
    script(t, "refreshing the sync lock", text, vec![Layout::lock_dir(), owner.to_owned()], deadline).await?;
    Ok(())
}

/// The line that ends each file in `link_files`' input ([`link_payload`]).
const LINK_END: &str = "--rbee-link-file-end--";

/// Shell function `link_files DIR1 DIR2 END [PATH MODE NL]...`: `DIR1` and `DIR2` made private,
/// `END` the end line, then per file its path, mode and `NL` (1 when the file ends with a
/// newline); standard input holds each file's lines, then the end line. Each file is written
/// byte for byte next to its place (as `.NAME.rbee-tmp`), created with its mode (a umask, so
/// no file is ever open to others, and no `chmod` for the usual 0600 and 0644) and renamed into
/// place. The secrets never appear in a command line, where other users of the host could read
/// them. A subshell, so the umask stays inside.
macro_rules! sh_link_files {
    () => {
        r#"link_files() (
  set -u
  umask 077
  { [ -d "$1" ] && [ -d "$2" ] || mkdir -p "$1" "$2"; } && chmod 700 "$1" "$2" || exit 1
  end=$3; shift 3
  while [ $# -ge 3 ]; do
    path=$1; mode=$2; nl=$3; shift 3
    tmp="${path%/*}/.${path##*/}.rbee-tmp"
    case "$mode" in 600) umask 077; m= ;; 644) umask 022; m= ;; *) umask 077; m=$mode ;; esac
    if [ -e "$tmp" ]; then rm -f "$tmp" || exit 1; fi
    : > "$tmp" || exit 1
    found=0; first=1
    while IFS= read -r line; do
      if [ "$line" = "$end" ]; then found=1; break; fi
      if [ "$first" = 0 ]; then printf '\n' >> "$tmp" || exit 1; fi
      printf '%s' "$line" >> "$tmp" || exit 1
      first=0
    done
    [ "$found" = 1 ] || { rm -f "$tmp"; echo "the input for $path ended early"; exit 1; }
    if [ "$nl" = 1 ]; then printf '\n' >> "$tmp" || exit 1; fi
    if [ -n "$m" ]; then chmod "$m" "$tmp" || exit 1; fi
    mv -f "$tmp" "$path" || exit 1
  done
)
"#
    };
}

/// `$1` port, `$2` alias, `$3` hive binary, `$4` pid file, `$5` log (paths from [`Layout`]),
/// `$6` the unit's name; from [`start_hive`]'s second call: `$7` the supervisor and `$8` the
/// unit, or `$7` `detached` and `$8` empty with `$9` why the unit cannot be used.
///
/// Under systemd the first call (no `$7`) prints `rbee-unit-needed MODE` and the home
/// directory, and exits [`systemd::NEED_UNIT`]: the unit is rendered for that home and passed
/// back. The unit file is replaced only when it changed (then `daemon-reload`), enabled, and
/// the service restarted; a user unit gets `loginctl enable-linger` first (a failure is
/// reported, in the output and the hive log, and the start goes on). Elsewhere the hive is a
/// detached process (own session, output to the log).
const START: &str = concat!(
    "# rbee-step: start-hive\n",
    sh_is_hive!(),
    sh_supervisor!(),
    sh_link_files!(),
    r#"set -u
port=$1; alias=$2; bin=$3; pidf=$4; log=$5; unit=${6:-rbee-hive.service}; mode=${7:-}; text=${8:-}; why=${9:-}
if [ $# -gt 9 ]; then shift 9; link_files "$@" || exit 1; fi
for d in "${pidf%/*}" "${log%/*}"; do [ -d "$d" ] || mkdir -p "$d" || exit 1; done
alive() { p=; { read -r p < "$pidf"; } 2>/dev/null; is_hive "$p"; }
if alive; then echo "already running (pid $p)"; exit 0; fi
[ -x "$bin" ] || { echo "$bin is not installed"; exit 1; }
[ -n "$mode" ] || mode=$(supervisor)
[ -z "$why" ] || printf 'rbee: %s\n' "$why" | tee -a "$log"
case "$mode" in
systemd-system|systemd-user)
  if [ -z "$text" ]; then printf 'rbee-unit-needed %s\n%s\n' "$mode" "$(cd "$HOME" && pwd -P)"; exit 10; fi
  dir=$(unit_dir "$mode"); f=$dir/$unit
  mkdir -p "$dir" && printf '%s' "$text" > "$f.rbee-tmp" && chmod 644 "$f.rbee-tmp" || exit 1
  changed=0
  if cmp -s "$f.rbee-tmp" "$f"; then rm -f "$f.rbee-tmp"; else mv -f "$f.rbee-tmp" "$f" && changed=1 || exit 1; fi
  if [ "$changed" = 1 ] || [ "$(sc "$mode" show -p NeedDaemonReload "$unit" 2>/dev/null)" != NeedDaemonReload=no ]; then
    sc "$mode" daemon-reload || exit 1
  fi
  if [ "$mode" = systemd-user ]; then
    u=$(id -un)
    if [ ! -e "/var/lib/systemd/linger/$u" ] && ! out=$(loginctl enable-linger "$u" 2>&1); then
      printf 'rbee: warning: `loginctl enable-linger %s` failed (%s): the hive stops when the last session of %s ends and does not start at boot\n' \
        "$u" "$out" "$u" | tee -a "$log"
    fi
  fi
  rm -f "$pidf"
  sc "$mode" enable --quiet "$unit" && sc "$mode" restart "$unit" || exit 1
  ;;
*)
  rm -f "$pidf"
  if command -v setsid >/dev/null 2>&1; then
    setsid -f "$HOME/$bin" --port "$port" --alias "$alias" --pid-file "$HOME/$pidf" >> "$log" 2>&1 < /dev/null
  else
    nohup "$HOME/$bin" --port "$port" --alias "$alias" --pid-file "$HOME/$pidf" >> "$log" 2>&1 < /dev/null &
  fi
  ;;
esac
# Looked for every 10 ms for a second (a hive writes its pid file within tens of ms), then
# every 100 ms: 10 s in all.
i=0
while [ $i -lt 190 ]; do
  if alive; then exit 0; fi
  if [ $i -lt 100 ]; then sleep 0.01; else sleep 0.1; fi
  i=$((i+1))
done
echo "rbee-hive did not start; last lines of ~/$log:"; tail -n 5 "$log"
case "$mode" in systemd-*) sc "$mode" status --no-pager --lines=0 "$unit" 2>&1 | head -n 5 ;; esac
exit 1
"#
);

/// Starts the hive: as a systemd service where the host runs systemd (see [`systemd`]), fully
/// detached elsewhere (own session, output to the hive log, pid file). Does nothing if it is
/// already running. With `link` (from [`link_payload`]), the hive's link to the queen is
/// written first, in the same command.
pub async fn start_hive(
    t: &dyn Transport,
    port: u16,
    alias: &str,
    link: Option<&LinkPayload>,
    deadline: Duration,
) -> Result<(), StepError> {
    let mut args = vec![
        port.to_string(),
        alias.to_owned(),
        Layout::hive_binary(),
        Layout::hive_pid(),
        Layout::hive_log(),
        systemd::UNIT_NAME.to_owned(),
    ];
    let what = "starting rbee-hive";
    let mut first = RemoteCommand::script(START, args.clone(), deadline);
    if let Some(link) = link {
        // `$7`–`$9` empty (the supervisor is found on the host), then the link's arguments.
        first.argv.extend(["", "", ""].map(str::to_owned).into_iter().chain(link.args.iter().cloned()));
        first.stdin = Some(link.stdin.clone());
    }
    let out = t.run(first).await?;
    let request = (out.status == systemd::NEED_UNIT).then(|| systemd::parse_unit_request(&out.stdout_text())).flatten();
    let Some((scope, home)) = request else { return checked(t, what, out).map(drop) };
    match systemd::hive_unit(&home, port, alias, scope) {
        Ok(unit) => args.extend([scope.mode().to_owned(), unit]),
        Err(e) => args.extend(["detached".to_owned(), String::new(), format!("not started by systemd: {e}")]),
    }
    script(t, what, START, args, deadline).await?;
    Ok(())
}

/// What links hive `alias` to the queen, for [`start_hive`]: a new certificate from the
/// queen's CA (key 0600), its own credential (`hive.token`, 0600) and the queen's address
/// (`queen.link`), in that order, as `link_files`' arguments and input. The hive reads them
/// when it starts. `None` without a queen (an in-process run leaves the host's link as it is).
pub fn link_payload(spec: Option<&crate::link::LinkSpec>, alias: &str) -> Result<Option<LinkPayload>, StepError> {
    let Some(spec) = spec else { return Ok(None) };
    let mut files: Vec<(String, u32, String)> = Vec::new();
    if spec.issuer.ca_pem().is_some() {
        let issued = spec.issuer.issue(alias).map_err(|e| StepError::Failed(format!("issuing a certificate: {e}")))?;
        files.push((Layout::hive_tls_key(), 0o600, issued.key_pem));
        files.push((Layout::hive_tls_cert(), 0o644, issued.cert_pem));
        files.push((Layout::hive_tls_ca(), 0o644, issued.ca_pem));
    }
    let link = spec.link_for(alias);
    let json = serde_json::to_string(&link).map_err(|e| StepError::Failed(e.to_string()))?;
    files.push((Layout::hive_token(), 0o600, link.token.clone()));
    files.push((Layout::queen_link(), 0o644, json));
    let (args, stdin) = link_files(&files)?;
    Ok(Some(LinkPayload { args, stdin }))
}

/// The link's files for the start command: `link_files`' arguments, and its input.
#[derive(Debug, Clone)]
pub struct LinkPayload {
    args: Vec<String>,
    stdin: Vec<u8>,
}

/// `link_files`' arguments and input for `files` (path, mode, text): each text's lines, then
/// the end line, which no text may contain.
fn link_files(files: &[(String, u32, String)]) -> Result<(Vec<String>, Vec<u8>), StepError> {
    let mut args = vec![Layout::STATE_DIR.to_owned(), Layout::hive_tls_dir(), LINK_END.to_owned()];
    let mut stdin = String::new();
    for (path, mode, text) in files {
        if text.is_empty() || text.lines().any(|l| l == LINK_END) || text.contains(['\r', '\0']) {
            return Err(StepError::Failed(format!("{path}: its text cannot be sent to the host")));
        }
        args.push(path.clone());
        args.push(format!("{mode:o}"));
        let nl = text.ends_with('\n');
        args.push(if nl { "1" } else { "0" }.to_owned());
        stdin.push_str(text.strip_suffix('\n').unwrap_or(text));
        stdin.push('\n');
        stdin.push_str(LINK_END);
        stdin.push('\n');
    }
    Ok((args, stdin.into_bytes()))
}

/// `$1` grace seconds, `$2` hive binary, `$3` pid file, `$4` the unit's name. Under systemd the
/// service is stopped first (without waiting: the pid file loop below waits, and kills after
/// the grace period, as for a detached hive, which also stops a hive started before it had a
/// unit).
const STOP: &str = concat!(
    "# rbee-step: stop-hive\n",
    sh_is_hive!(),
    sh_supervisor!(),
    r#"set -u
grace=$1; bin=$2; pidf=$3; unit=${4:-rbee-hive.service}
mode=$(supervisor)
case "$mode" in
systemd-*) if [ -f "$(unit_dir "$mode")/$unit" ]; then sc "$mode" stop --no-block "$unit" 2>&1 || true; fi ;;
esac
p=$(cat "$pidf" 2>/dev/null) || exit 0
if ! is_hive "$p"; then rm -f "$pidf"; exit 0; fi
alive() { is_hive "$p"; }
kill -s TERM "$p" 2>/dev/null
i=0
while alive && [ $i -lt $(( grace * 10 )) ]; do sleep 0.1; i=$((i+1)); done
if alive; then kill -s KILL "$p" 2>/dev/null; sleep 0.2; echo "rbee-hive (pid $p) ignored SIGTERM for ${grace}s; killed" >&2; fi
rm -f "$pidf"
"#
);

/// Stops the hive (its systemd service, where it has one): SIGTERM, then SIGKILL after `grace`.
pub async fn stop_hive(t: &dyn Transport, grace: Duration, deadline: Duration) -> Result<(), StepError> {
    let args = vec![
        grace.as_secs().max(1).to_string(),
        Layout::hive_binary(),
        Layout::hive_pid(),
        systemd::UNIT_NAME.to_owned(),
    ];
    script(t, "stopping rbee-hive", STOP, args, deadline + grace).await?;
    Ok(())
}

/// `$1` port, `$2` seconds, `$3` hive binary, `$4` log, then optionally `$5` the lock
/// directory, `$6` this sync's owner and `$7` the sha256 the hive must run: once the hive
/// answers with that sha256, the sync lock is released when this owner still holds it (the
/// last step of a hive saves the unlock's own command), and a last line [`UNLOCKED`] says so.
/// A hive that does not answer, or runs another binary, keeps the lock held (a rollback runs
/// under it).
const WAIT_HEALTHY: &str = concat!(
    "# rbee-step: wait-healthy\n",
    sh_held_by!(),
    r#"set -u
port=$1; end=$(( $(date +%s) + $2 )); bin=$3; log=$4; lock=${5:-}; owner=${6:-}; want=${7:-}
# Asked again after 50 ms for the first two seconds (a hive binds its port within tens of
# ms), then every 200 ms; the clock is read only once the fast tries are over.
i=0
while :; do
  if out=$("$bin" probe --port "$port" --timeout-ms 1000 2>&1); then
    echo "$out"
    case "$out" in *"\"$want\""*) ;; *) lock= ;; esac
    if [ -n "$lock" ] && [ -n "$want" ] && held_by "$lock" "$owner" && rm -rf "$lock"; then echo rbee-unlocked; fi
    exit 0
  fi
  if [ $i -ge 40 ] && [ "$(date +%s)" -ge "$end" ]; then
    echo "rbee-hive did not answer /health on port $port within $2s: $out"
    tail -n 5 "$log" 2>/dev/null
    exit 1
  fi
  if [ $i -lt 40 ]; then sleep 0.05; else sleep 0.2; fi
  i=$((i+1))
done
"#
);

/// The last line of [`WAIT_HEALTHY`]'s output when it released the sync lock.
const UNLOCKED: &str = "rbee-unlocked";

/// Whether [`wait_healthy`] released the sync lock on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// It did: this sync no longer holds it.
    Lock,
    /// It did not (not asked to, or another owner holds it): unlock as usual.
    Nothing,
}

/// Polls `/health` on the host until it answers, and checks the hive runs `want`. With
/// `release` (this sync's owner), the same command then releases the sync lock if that owner
/// holds it — only once the hive answered, so that a rollback still runs under the lock.
pub async fn wait_healthy(
    t: &dyn Transport,
    port: u16,
    want: &rbee_proto::Sha256,
    timeout: Duration,
    release: Option<&str>,
) -> Result<Released, StepError> {
    let mut args =
        vec![port.to_string(), timeout.as_secs().max(1).to_string(), Layout::hive_binary(), Layout::hive_log()];
    if let Some(owner) = release {
        args.extend([Layout::lock_dir(), owner.to_owned(), want.to_string()]);
    }
    let out = script(t, "waiting for /health", WAIT_HEALTHY, args, timeout + Duration::from_secs(10)).await?;
    let text = out.stdout_text();
    let mut body = text.trim();
    let mut released = Released::Nothing;
    if let Some(rest) = body.strip_suffix(UNLOCKED).filter(|_| release.is_some()) {
        body = rest.trim_end();
        released = Released::Lock;
    }
    match serde_json::from_str::<rbee_proto::hive::HiveHealth>(body) {
        Ok(health) if health.sha256 == *want => Ok(released),
        Ok(health) => Err(StepError::Failed(format!(
            "the process answering on port {port} runs rbee-hive sha256:{} but {} was installed; is another hive using that port?",
            health.sha256.short(),
            want.short()
        ))),
        Err(e) => Err(StepError::Failed(format!(
            "unexpected /health answer on port {port} ({e}): {}",
            body.trim().escape_debug().take(200).collect::<String>()
        ))),
    }
}

/// Uninstalls. `$1` purge (1/0), `$2` grace seconds, `$3` hive binary, `$4` worker catalog,
/// `$5` worker binary prefix, `$6` data directory, `$7` install records, `$8` hive pid file,
/// `$9` worker registry, `$10` the systemd unit's name, then the hive-owned state entries (all
/// from [`Layout`]). A systemd unit of the hive is stopped, disabled and removed.
///
/// Worker processes are stopped before their records go: each record names a process-group
/// leader and its start time (`/proc/<pid>/stat` field 22), so a pid the kernel gave to another
/// process since is never signalled. The group gets SIGTERM, SIGKILL after the grace period,
/// and the record is deleted only once the group is gone. Only POSIX `kill -s SIG -- -PGID`
/// (dash, Debian's /bin/sh, rejects `kill -TERM -- -PGID`), and a failure is reported.
const UNINSTALL: &str = concat!(
    "# rbee-step: uninstall\n",
    sh_supervisor!(),
    r#"set -u
purge=$1; grace=$2; bin=$3; catalog=$4; prefix=$5; data=$6; records=$7; pidf=$8; registry=$9; shift 9
unit=$1; shift
field() { sed -n "s/.*\"$1\": *\([0-9][0-9]*\).*/\1/p" "$2" | head -n 1; }
group_alive() { kill -s 0 -- "-$1" 2>/dev/null; }
failed=0
for f in "$registry"/*.json; do
  [ -e "$f" ] || continue
  p=$(field pid "$f"); st=$(field start_time "$f")
  case "$p" in ''|0|1|*[!0-9]*) rm -f "$f" "${f%.json}.log"; continue ;; esac
  if [ -d "/proc/$p" ]; then
    now=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f20)
    # A live process with another start time is not the worker: the pid was reused.
    if [ "$now" != "$st" ]; then rm -f "$f" "${f%.json}.log"; continue; fi
  fi
  # The leader is the worker, or it is gone and only its group (an engine) may remain.
  if group_alive "$p"; then
    kill -s TERM -- "-$p" 2>/dev/null
    i=0
    while group_alive "$p" && [ $i -lt $(( grace * 10 )) ]; do sleep 0.1; i=$((i+1)); done
    if group_alive "$p"; then
      echo "worker process group $p ignored SIGTERM for ${grace}s; sending SIGKILL" >&2
      kill -s KILL -- "-$p" 2>/dev/null
      i=0
      while group_alive "$p" && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done
    fi
    if group_alive "$p"; then echo "cannot stop worker process group $p (record $f kept)" >&2; failed=1; continue; fi
  fi
  rm -f "$f" "${f%.json}.log"
done
[ "$failed" = 0 ] || exit 1
mode=$(supervisor)
case "$mode" in
systemd-*)
  f=$(unit_dir "$mode")/$unit
  if [ -f "$f" ]; then
    sc "$mode" stop --no-block "$unit" 2>/dev/null; sc "$mode" disable --quiet "$unit" 2>/dev/null
    rm -f "$f" || exit 1
    sc "$mode" daemon-reload; sc "$mode" reset-failed "$unit" 2>/dev/null
  fi
  ;;
esac
bindir=$(dirname "$bin"); name=$(basename "$bin")
rm -f "$bin" "$bindir/.$name.rbee-tmp-"* "$bindir/.$name.upload-"*
rm -f "$catalog/$prefix"* "$catalog/.$prefix"*
rm -rf "$data/engines"
rmdir "$catalog" "$data" 2>/dev/null
rm -rf "$records" "$(dirname "$records")/previous"
rm -f "$pidf"
if [ "$purge" = 1 ]; then
  rm -rf "$data"
  # Only what the hive owns; the lock stays until the sync releases it.
  for f in "$@"; do rm -rf "$f"; done
fi
exit 0
"#
);

/// Removes what rbee installed (and with `purge`, the hive's state and data). Worker
/// processes are stopped first, SIGKILL after `grace`.
pub async fn uninstall(t: &dyn Transport, purge: bool, grace: Duration, deadline: Duration) -> Result<(), StepError> {
    let grace_s = grace.as_secs().max(1);
    let mut args = vec![
        if purge { "1" } else { "0" }.to_owned(),
        grace_s.to_string(),
        Layout::hive_binary(),
        Layout::WORKERS_DIR.to_owned(),
        crate::layout::WORKER_PREFIX.to_owned(),
        Layout::DATA_DIR.to_owned(),
        Layout::installed_dir(),
        Layout::hive_pid(),
        Layout::worker_registry_dir(),
        systemd::UNIT_NAME.to_owned(),
    ];
    args.extend(Layout::hive_state_entries());
    script(t, "uninstalling", UNINSTALL, args, deadline + grace + Duration::from_secs(3)).await?;
    Ok(())
}

/// After a purge the lock was the last thing in the state directory: remove the directory.
pub async fn remove_empty_state_dir(t: &dyn Transport, deadline: Duration) -> Result<(), StepError> {
    script(
        t,
        "cleaning up",
        "# rbee-step: remove-empty-state-dir\nrmdir \"$1\" 2>/dev/null; exit 0",
        vec![Layout::STATE_DIR.to_owned()],
        deadline,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::LocalTransport;

    /// A process leading its own group, reaped in the background so a killed one does not
    /// linger as a zombie (which `kill -s 0` still finds).
    fn spawn_group(script: &str) -> u32 {
        let mut child = tokio::process::Command::new("sh").args(["-c", script]).process_group(0).spawn().unwrap();
        let pid = child.id().unwrap();
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        pid
    }

    fn start_time(pid: u32) -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(") ").unwrap().1.split(' ').nth(19).unwrap().to_owned()
    }

    fn group_alive(pgid: u32) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let Some((_, rest)) = stat.rsplit_once(") ") else { return false };
            let fields: Vec<&str> = rest.split(' ').collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
    }

    fn record(home: &std::path::Path, id: &str, pid: u32, start_time: &str) -> std::path::PathBuf {
        let dir = home.join(Layout::worker_registry_dir());
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{id}.json"));
        let json =
            format!(r#"{{"id": "{id}", "port": 9000, "pid": {pid}, "start_time": {start_time}, "started_ms": 1}}"#);
        std::fs::write(&path, json).unwrap();
        path
    }

    /// `kill -TERM -- -PGID` is an error in dash (Debian's /bin/sh): uninstall deleted the
    /// records and left the engines running. A group whose processes ignore SIGTERM gets
    /// SIGKILL after the grace period; the record goes only once the group is gone.
    #[tokio::test]
    async fn uninstall_under_dash_stops_worker_groups_even_when_they_ignore_sigterm() {
        let home = tempfile::tempdir().unwrap();
        let polite = spawn_group("exec sleep 60");
        let stubborn = spawn_group("trap '' TERM; sleep 60 & sleep 60 & wait");
        std::thread::sleep(Duration::from_millis(100));
        let polite_rec = record(home.path(), "w1", polite, &start_time(polite));
        let stubborn_rec = record(home.path(), "w2", stubborn, &start_time(stubborn));
        let t = LocalTransport::new(home.path());
        uninstall(&t, false, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
        assert!(!group_alive(polite), "group {polite} still runs");
        assert!(!group_alive(stubborn), "group {stubborn} (ignoring SIGTERM) still runs");
        assert!(!polite_rec.exists() && !stubborn_rec.exists(), "records are removed once the groups are gone");
    }

    /// A record whose pid now belongs to another process (another start time) is dropped
    /// without signalling that process; so are records naming pid 0 or 1.
    #[tokio::test]
    async fn uninstall_never_signals_a_reused_pid_or_init() {
        let home = tempfile::tempdir().unwrap();
        let other = spawn_group("exec sleep 60");
        std::thread::sleep(Duration::from_millis(50));
        let reused = record(home.path(), "w1", other, "1");
        let init = record(home.path(), "w2", 1, &start_time(1));
        let zero = record(home.path(), "w3", 0, "0");
        let t = LocalTransport::new(home.path());
        uninstall(&t, false, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
        assert!(group_alive(other), "an unrelated process with a reused pid was signalled");
        assert!(!reused.exists() && !init.exists() && !zero.exists());
        nix_kill(other);
    }

    fn nix_kill(pgid: u32) {
        let _ = std::process::Command::new("kill").args(["-s", "KILL", "--", &format!("-{pgid}")]).status();
    }

    /// Purge removes the hive's files and leaves whatever else is in the state directory
    /// (a queen on the same machine kept its token there once; any other file is not rbee's
    /// hive's to delete).
    #[tokio::test]
    async fn purge_removes_only_what_the_hive_owns() {
        let home = tempfile::tempdir().unwrap();
        let state = home.path().join(Layout::STATE_DIR);
        std::fs::create_dir_all(state.join("installed")).unwrap();
        let files = [
            "hive.pid",
            "hive.log",
            "hive.log.1",
            "hive.token",
            "queen.link",
            "installed/rbee-hive",
            "queen.token",
            "notes",
        ];
        for f in files {
            std::fs::write(state.join(f), "x").unwrap();
        }
        let t = LocalTransport::new(home.path());
        uninstall(&t, true, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes", "queen.token"]);
    }

    /// A lock directory without its `since` file (its holder died right after `mkdir`) made
    /// every later sync wait the whole lock wait and fail, forever; it now ages from the
    /// directory's own time and is taken over after the lease.
    #[tokio::test]
    async fn a_lock_without_its_since_file_is_taken_over_after_the_lease() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(Layout::lock_dir());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("owner"), "rbee pid 1 on another-machine since 0\n").unwrap();
        let old = std::process::Command::new("touch").args(["-d", "5 minutes ago"]).arg(&dir).status().unwrap();
        assert!(old.success());
        let t = LocalTransport::new(home.path());
        let started = std::time::Instant::now();
        let never = std::sync::atomic::AtomicBool::new(false);
        // What runs once the lock is held comes back as it is, its failure included: the lock
        // is held all the same.
        let then = ["sh", "-c", "echo observed; exit 3"].map(str::to_owned);
        let out =
            lock(&t, "me", &then, Duration::from_secs(20), Duration::from_secs(60), Duration::from_secs(10), &never)
                .await
                .unwrap();
        assert_eq!((out.status, out.stdout_text()), (3, "observed\n".to_owned()));
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert_eq!(std::fs::read_to_string(dir.join("owner")).unwrap().trim(), "me");
    }

    fn artifact_of(name: &str, bytes: &[u8], version: &str) -> Artifact {
        Artifact {
            name: name.into(),
            version: version.into(),
            sha256: crate::artifact::sha256_of(bytes),
            size: bytes.len() as u64,
        }
    }

    /// A host's binaries go in one command, one after the other on its input: all installed
    /// with their records, a replaced one kept for a rollback; and when one of them is not
    /// what was sent, none of the targets changes and nothing is left behind.
    #[tokio::test]
    async fn several_binaries_are_installed_by_one_command_or_none_is() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let t = LocalTransport::new(h);
        let d = Duration::from_secs(10);
        let (hive, vllm, comfy) =
            (Layout::hive_binary(), Layout::worker_binary("vllm"), Layout::worker_binary("comfyui"));
        let old = artifact_of("rbee-hive", b"hive 1", "1");
        let one = [BinaryInstall { artifact: &old, data: UploadData::Bytes(b"hive 1"), target: &hive }];
        install_binaries(&t, &one, d, &|_| {}, None).await.unwrap();

        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8).collect();
        let new = [artifact_of("rbee-hive", b"hive 2", "2"), artifact_of("v", &big, "3"), artifact_of("c", b"", "4")];
        let mut files = vec![
            BinaryInstall { artifact: &new[0], data: UploadData::Bytes(b"hive 2"), target: &hive },
            BinaryInstall { artifact: &new[1], data: UploadData::Bytes(&big), target: &vllm },
            BinaryInstall { artifact: &new[2], data: UploadData::Bytes(b""), target: &comfy },
        ];
        let seen = std::sync::Mutex::new(0u64);
        install_binaries(&t, &files, d, &|n| *seen.lock().unwrap() = n, None).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), 6 + big.len() as u64);
        assert_eq!(std::fs::read(h.join(&hive)).unwrap(), b"hive 2");
        assert_eq!(std::fs::read(h.join(&vllm)).unwrap(), big);
        assert_eq!(std::fs::read(h.join(&comfy)).unwrap(), b"");
        for (target, a) in [(&hive, &new[0]), (&vllm, &new[1]), (&comfy, &new[2])] {
            let name = target.rsplit('/').next().unwrap();
            let record = std::fs::read_to_string(h.join(Layout::installed_dir()).join(name)).unwrap();
            assert!(record.starts_with(a.sha256.as_str()) && record.trim_end().ends_with(&a.version), "{record}");
            let mode =
                std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(h.join(target)).unwrap().permissions());
            assert_eq!(mode & 0o777, 0o755);
        }
        // The hive binary it replaced is kept, with its record.
        assert_eq!(std::fs::read(h.join(Layout::previous_dir()).join("rbee-hive")).unwrap(), b"hive 1");
        assert!(h.join(Layout::previous_dir()).join("rbee-hive.record").exists());

        // The second file is not what its artifact says: nothing changes.
        let next = [artifact_of("rbee-hive", b"hive 3", "5"), artifact_of("v", b"vllm 4", "6")];
        files = vec![
            BinaryInstall { artifact: &next[0], data: UploadData::Bytes(b"hive 3"), target: &hive },
            BinaryInstall { artifact: &next[1], data: UploadData::Bytes(b"vllm 4 but not"), target: &vllm },
            BinaryInstall { artifact: &new[2], data: UploadData::Bytes(b""), target: &comfy },
        ];
        let failure = install_binaries(&t, &files, d, &|_| {}, None).await.unwrap_err();
        assert_eq!(failure.index, 1, "{failure:?}");
        assert!(failure.error.to_string().contains(&format!("sha256 mismatch for {vllm}")), "{failure:?}");
        assert_eq!(std::fs::read(h.join(&hive)).unwrap(), b"hive 2");
        assert_eq!(std::fs::read(h.join(&vllm)).unwrap(), big);
        let left: Vec<String> = ["", "/workers"]
            .iter()
            .flat_map(|sub| std::fs::read_dir(h.join(format!("{}{sub}", Layout::BIN_DIR))).into_iter().flatten())
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("rbee-tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // A corrupted upload of the first file (the test hook) is refused the same way.
        let failure =
            install_binaries(&t, &files[..1], d, &|_| {}, Some(InstallFault::CorruptUpload)).await.unwrap_err();
        assert_eq!(failure.index, 0);
        assert!(failure.error.to_string().contains("sha256 mismatch"), "{failure:?}");
        assert_eq!(std::fs::read(h.join(&hive)).unwrap(), b"hive 2");
    }

    /// The wait for `/health`, as a hive's last step, releases the sync lock only when the
    /// hive answers with the binary installed and this sync holds the lock.
    #[tokio::test]
    async fn the_wait_for_health_releases_only_its_own_lock_and_only_on_the_right_binary() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let t = LocalTransport::new(h);
        let want = crate::artifact::sha256_of(b"hive");
        let other = crate::artifact::sha256_of(b"other hive");
        let bin = h.join(Layout::hive_binary());
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        let answer = |sha: &rbee_proto::Sha256| {
            let probe =
                format!("#!/bin/sh\necho '{{\"status\":\"ok\",\"version\":\"1\",\"sha256\":\"{sha}\",\"pid\":1}}'\n");
            std::fs::write(&bin, probe).unwrap();
            std::process::Command::new("chmod").arg("755").arg(&bin).status().unwrap();
        };
        let never = std::sync::atomic::AtomicBool::new(false);
        let d = Duration::from_secs(5);
        let lock_dir = h.join(Layout::lock_dir());
        let take = |owner: &'static str| {
            let t = &t;
            let never = &never;
            async move { lock(t, owner, &[], d, Duration::from_secs(60), d, never).await.unwrap() }
        };
        answer(&want);
        take("me").await;
        // Not asked to: the lock stays.
        assert_eq!(wait_healthy(&t, 1, &want, d, None).await.unwrap(), Released::Nothing);
        assert!(lock_dir.exists());
        // Another owner's lock stays.
        assert_eq!(wait_healthy(&t, 1, &want, d, Some("someone else")).await.unwrap(), Released::Nothing);
        assert!(lock_dir.exists());
        // Another binary answers: the step fails and the lock stays for a rollback.
        answer(&other);
        assert!(wait_healthy(&t, 1, &want, d, Some("me")).await.is_err());
        assert!(lock_dir.exists());
        answer(&want);
        assert_eq!(wait_healthy(&t, 1, &want, d, Some("me")).await.unwrap(), Released::Lock);
        assert!(!lock_dir.exists());
    }

    /// A cancel (Ctrl-C, `DELETE /v1/jobs/ID`) while another sync held the lock was only
    /// noticed after the whole lock wait (2 minutes by default).
    #[tokio::test]
    async fn a_cancel_ends_the_wait_for_a_lock() {
        let home = tempfile::tempdir().unwrap();
        let dir = home.path().join(Layout::lock_dir());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("owner"), "rbee pid 1 on another-machine since 0\n").unwrap();
        std::fs::write(dir.join("since"), format!("{}\n", super::super::events::now_ms() / 1000)).unwrap();
        let t = LocalTransport::new(home.path());
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let started = std::time::Instant::now();
        let wait = Duration::from_secs(60);
        let err =
            lock(&t, "me", &[], wait, Duration::from_secs(60), Duration::from_secs(10), &cancel).await.unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    /// Under systemd the start script asks for the unit (exit 10, with the host's home); the
    /// unit rendered for that home comes back in a second call, with the supervisor.
    #[tokio::test]
    async fn under_systemd_the_start_renders_the_unit_for_the_home_the_host_reports() {
        let asks = CommandOutput {
            status: systemd::NEED_UNIT,
            stdout: b"rbee-unit-needed systemd-user\n/home/a b\n".to_vec(),
            stderr: Vec::new(),
        };
        let mock = crate::transport::MockTransport::new("h1")
            .on_run("# rbee-step: start-hive", Ok(asks))
            .on_run("# rbee-step: start-hive", Ok(CommandOutput::ok("")));
        start_hive(&mock, 8600, "gpu-1", None, Duration::from_secs(5)).await.unwrap();
        mock.verify().unwrap();
        let calls = mock.calls();
        let crate::transport::MockCall::Run(second) = &calls[1] else { panic!("{calls:?}") };
        let unit = systemd::hive_unit("/home/a b", 8600, "gpu-1", systemd::UnitScope::User).unwrap();
        let want = crate::transport::shell_line(&["systemd-user".to_owned(), unit]);
        assert!(second.ends_with(&want), "{second}");
    }

    /// A home a unit cannot hold: the hive is started detached, and the reason is passed on.
    #[tokio::test]
    async fn a_home_a_unit_cannot_hold_gets_a_detached_hive() {
        let asks = CommandOutput {
            status: systemd::NEED_UNIT,
            stdout: b"rbee-unit-needed systemd-system\n/root\\x\n".to_vec(),
            stderr: Vec::new(),
        };
        let mock = crate::transport::MockTransport::new("h1")
            .on_run("# rbee-step: start-hive", Ok(asks))
            .on_run("# rbee-step: start-hive", Ok(CommandOutput::ok("")));
        start_hive(&mock, 8600, "gpu-1", None, Duration::from_secs(5)).await.unwrap();
        let calls = mock.calls();
        let crate::transport::MockCall::Run(second) = &calls[1] else { panic!("{calls:?}") };
        assert!(
            second.contains("rbee-hive.service detached '' 'not started by systemd: the home directory"),
            "{second}"
        );
        // Any other failure is the step's failure, as before.
        let mock = crate::transport::MockTransport::new("h1")
            .on_run("# rbee-step: start-hive", Ok(CommandOutput { status: 10, ..CommandOutput::ok("something else") }));
        let err = start_hive(&mock, 8600, "gpu-1", None, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("exit status 10): something else"), "{err}");
    }

    /// The systemd branch of the start script, against stand-ins for `systemctl` and
    /// `loginctl` (this machine's systemd, if any, is not touched): the unit is written where
    /// the user manager reads it, reloaded only when it changed, enabled and restarted; a
    /// failing `enable-linger` is reported in the output and the hive log, and the start goes
    /// on.
    /// The link's files (key, certificates, token, queen.link) go to the host in one command,
    /// byte for byte, each with its mode, through a temporary file that is never open to others.
    #[tokio::test]
    async fn the_link_writes_every_file_in_one_command_byte_for_byte() {
        let home = tempfile::tempdir().unwrap();
        let t = LocalTransport::new(home.path());
        let files = vec![
            (
                Layout::hive_tls_key(),
                0o600,
                "-----BEGIN PRIVATE KEY-----\nabc\\def  \n\n-----END PRIVATE KEY-----\n".to_owned(),
            ),
            (
                Layout::hive_tls_cert(),
                0o644,
                "-----BEGIN CERTIFICATE-----\nxyz\n-----END CERTIFICATE-----\n".to_owned(),
            ),
            (Layout::hive_token(), 0o600, "0123abcd".to_owned()),
            (Layout::queen_link(), 0o644, r#"{"url":"https://q:8500","interval_ms":5000}"#.to_owned()),
        ];
        let (args, stdin) = link_files(&files).unwrap();
        // A leftover of an interrupted link, open to others: replaced, never reused.
        std::fs::create_dir_all(home.path().join(Layout::STATE_DIR)).unwrap();
        let leftover = home.path().join(Layout::STATE_DIR).join(".hive.token.rbee-tmp");
        std::fs::write(&leftover, "old").unwrap();
        std::fs::set_permissions(&leftover, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        let script = concat!(sh_link_files!(), r#"link_files "$@""#);
        let mut command = RemoteCommand::script(script, args, Duration::from_secs(10));
        command.stdin = Some(stdin);
        let out = t.run(command).await.unwrap();
        assert!(out.success(), "{}", String::from_utf8_lossy(&out.stdout));
        for (path, mode, text) in &files {
            let path = home.path().join(path);
            assert_eq!(&std::fs::read_to_string(&path).unwrap(), text, "{}", path.display());
            let bits = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
            assert_eq!(bits & 0o777, *mode, "{}", path.display());
        }
        for dir in [Layout::STATE_DIR.to_owned(), Layout::hive_tls_dir()] {
            let bits = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(home.path().join(dir)).unwrap().permissions(),
            );
            assert_eq!(bits & 0o777, 0o700);
        }
        let leftovers: Vec<_> = std::fs::read_dir(home.path().join(Layout::STATE_DIR))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("rbee-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // A text holding the end line, or nothing, is refused before anything is sent.
        let bad = vec![(Layout::hive_token(), 0o600, format!("a\n{LINK_END}\nb"))];
        assert!(link_files(&bad).is_err());
        assert!(link_files(&[(Layout::hive_token(), 0o600, String::new())]).is_err());
    }

    /// Writes each `(name, script)` as an executable stand-in in `home/fake-bin`; returns a
    /// `PATH` that finds them first.
    fn stand_ins(home: &std::path::Path, programs: &[(&str, &str)]) -> String {
        let fake = home.join("fake-bin");
        std::fs::create_dir_all(&fake).unwrap();
        for (name, script) in programs {
            std::fs::write(fake.join(name), script).unwrap();
            std::process::Command::new("chmod").arg("755").arg(fake.join(name)).status().unwrap();
        }
        format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default())
    }

    /// The installed binary and its record are fsynced before their renames, and their
    /// directories after (a `sync` stand-in logs each call with what is in place then).
    #[test]
    fn an_install_is_fsynced_before_and_after_its_renames() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        let sync = "#!/bin/sh\nfor f in \"$@\"; do if [ -e bin/rbee-hive ]; then s=in-place; else s=staged; fi; echo \"$f $s\" >> sync.calls; done\n";
        let path = stand_ins(h, &[("sync", sync)]);
        let got = crate::artifact::sha256_hex(b"binary");
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                INSTALL,
                "sh",
                "records",
                "previous",
                "",
                "bin/.rbee-hive.tmp",
                "bin/rbee-hive",
                &got,
                "0.1.0",
                "6",
            ])
            .env("PATH", &path)
            .current_dir(h)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"binary").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
        let calls = std::fs::read_to_string(h.join("sync.calls")).unwrap();
        assert_eq!(
            calls.lines().collect::<Vec<_>>(),
            ["bin/.rbee-hive.tmp staged", "bin in-place", "records/rbee-hive.tmp in-place", "records in-place"],
            "{calls}"
        );
        assert_eq!(std::fs::read(h.join("bin/rbee-hive")).unwrap(), b"binary");
        assert!(std::fs::read_to_string(h.join("records/rbee-hive")).unwrap().starts_with(&got));
    }

    #[test]
    fn the_start_script_writes_enables_and_restarts_the_unit() {
        let home = tempfile::tempdir().unwrap();
        let h = home.path();
        std::fs::create_dir_all(h.join(Layout::BIN_DIR)).unwrap();
        // The hive stand-in must be a binary of its own (the start checks /proc/PID/exe).
        std::fs::copy("/bin/sleep", h.join(Layout::hive_binary())).unwrap();
        let systemctl = r#"#!/bin/sh
echo "$*" >> "$HOME/systemctl.calls"
case "$*" in
*"show -p NeedDaemonReload"*) echo NeedDaemonReload=no ;;
*restart*) setsid -f sh -c 'echo $$ > .local/state/rbee/hive.pid; exec .local/bin/rbee-hive 60' > /dev/null 2>&1 < /dev/null ;;
esac
"#;
        let loginctl = "#!/bin/sh\necho \"Access denied\" >&2\nexit 1\n";
        let path = stand_ins(h, &[("systemctl", systemctl), ("loginctl", loginctl)]);
        let unit = systemd::hive_unit(h.to_str().unwrap(), 8600, "gpu-1", systemd::UnitScope::User).unwrap();
        let start = |unit: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", START, "sh", "8600", "gpu-1"])
                .args([Layout::hive_binary(), Layout::hive_pid(), Layout::hive_log()])
                .args([systemd::UNIT_NAME, "systemd-user", unit])
                .env("HOME", h)
                .env("PATH", &path)
                .env("XDG_CONFIG_HOME", h.join("config"))
                .current_dir(h)
                .output()
                .unwrap();
            let calls = std::fs::read_to_string(h.join("systemctl.calls")).unwrap_or_default();
            std::fs::remove_file(h.join("systemctl.calls")).ok();
            let pid: u32 = std::fs::read_to_string(h.join(Layout::hive_pid())).unwrap().trim().parse().unwrap();
            nix_kill_pid(pid);
            (out, calls)
        };
        let (out, calls) = start(&unit);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(
            calls,
            "--user daemon-reload\n--user enable --quiet rbee-hive.service\n--user restart rbee-hive.service\n"
        );
        assert_eq!(std::fs::read_to_string(h.join("config/systemd/user/rbee-hive.service")).unwrap(), unit);
        assert!(stdout.contains("warning: `loginctl enable-linger"), "{stdout}");
        let log = std::fs::read_to_string(h.join(Layout::hive_log())).unwrap();
        assert!(log.contains("(Access denied): the hive stops when the last session"), "{log}");
        // The same unit again: no reload.
        let (out, calls) = start(&unit);
        assert!(out.status.success());
        assert_eq!(
            calls,
            "--user show -p NeedDaemonReload rbee-hive.service\n--user enable --quiet rbee-hive.service\n--user restart rbee-hive.service\n"
        );
        assert!(!h.join("config/systemd/user/rbee-hive.service.rbee-tmp").exists());
    }

    fn nix_kill_pid(pid: u32) {
        let _ = std::process::Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
    }

    /// "cmdline contains rbee-hive" took any process with that word in its arguments for the
    /// hive; the executable is what counts.
    #[tokio::test]
    async fn a_process_named_like_the_hive_is_not_the_hive() {
        let home = tempfile::tempdir().unwrap();
        let impostor = spawn_group("exec sleep 60");
        let other = spawn_group("sleep 60; echo rbee-hive");
        let state = home.path().join(Layout::STATE_DIR);
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(home.path().join(Layout::BIN_DIR)).unwrap();
        std::fs::write(home.path().join(Layout::hive_binary()), "#!/bin/sh\n").unwrap();
        let t = LocalTransport::new(home.path());
        for pid in [impostor, other] {
            std::fs::write(state.join("hive.pid"), format!("{pid}\n")).unwrap();
            let seen = crate::observe::observe(&t, 1, Duration::from_secs(10)).await;
            let crate::state::HiveState::Reachable(o) = seen else { panic!("{seen:?}") };
            assert!(!o.running, "pid {pid} taken for the hive");
            stop_hive(&t, Duration::from_secs(1), Duration::from_secs(10)).await.unwrap();
            assert!(group_alive(pid), "stop signalled pid {pid}, which is not the hive");
        }
        nix_kill(impostor);
        nix_kill(other);
    }
}
