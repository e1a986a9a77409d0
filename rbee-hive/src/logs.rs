//! `GET /v1/logs`: the hive's own log or one of its workers' logs, read on the host so that
//! nobody has to log in to see why an engine died. Answers newline-delimited JSON
//! [`LogEvent`]s: the last lines first (taken from the rotated file too when the current one
//! is shorter), then, with `follow`, each new line as it is written, across rotations, until
//! the caller goes away.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rbee_core::proto::hive::{LogEvent, LogQuery};
use rbee_core::proto::layout::Layout;
use rbee_http::ApiError;

use crate::ops::Hive;

/// How often a followed log is looked at.
const POLL: Duration = Duration::from_millis(200);
/// A keepalive after this long without a line.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// The most a tail reads from the end of a file.
const TAIL_BYTES: u64 = 16 << 20;

/// `GET /v1/logs?worker=ID&tail=N&follow=true`.
pub(crate) async fn logs(State(hive): State<Arc<Hive>>, Query(query): Query<LogQuery>) -> Response {
    let path = match log_of(&hive, query.worker.as_deref()) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let tail = query.tail.unwrap_or(LogQuery::DEFAULT_TAIL).min(LogQuery::MAX_TAIL);
    let (lines, position) = match tokio::task::spawn_blocking({
        let path = path.clone();
        move || last_lines(&path, tail)
    })
    .await
    {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            let msg = format!("cannot read {}: {e}", path.display());
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg).into_response();
        }
        Err(e) => return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let first = futures_util::stream::iter(lines.into_iter().map(|text| LogEvent::Line { text }));
    let body = if query.follow {
        let followed = futures_util::stream::unfold(Follower::new(path, position), |mut f| async move {
            let events = f.next().await;
            Some((futures_util::stream::iter(events), f))
        });
        axum::body::Body::from_stream(futures_util::StreamExt::map(
            futures_util::StreamExt::chain(first, futures_util::StreamExt::flatten(followed)),
            encode,
        ))
    } else {
        axum::body::Body::from_stream(futures_util::StreamExt::map(first, encode))
    };
    ([("content-type", "application/x-ndjson")], body).into_response()
}

fn encode(event: LogEvent) -> Result<hyper::body::Bytes, std::convert::Infallible> {
    let mut line = serde_json::to_vec(&event).unwrap_or_default();
    line.push(b'\n');
    Ok(hyper::body::Bytes::from(line))
}

/// The file behind a request: the hive's log, or a worker's (by id; the id must name a
/// worker the hive knows or has a log of, and can never name another file).
fn log_of(hive: &Hive, worker: Option<&str>) -> Result<PathBuf, ApiError> {
    let Some(id) = worker else {
        let path = hive.home.join(Layout::hive_log());
        if !path.exists() {
            let msg =
                format!("hive {} has no log at ~/{} (it was not started by rbee sync)", hive.alias, Layout::hive_log());
            return Err(ApiError::new(StatusCode::NOT_FOUND, msg));
        }
        return Ok(path);
    };
    let safe =
        !id.is_empty() && !id.starts_with('.') && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let path = hive.workers.log_path(id);
    if !safe || !path.exists() {
        let known: Vec<String> = hive.workers.list().into_iter().map(|p| p.id).collect();
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        let msg = format!("hive {} has no log of a worker {id:?} (its workers: {known})", hive.alias);
        return Err(ApiError::new(StatusCode::NOT_FOUND, msg));
    }
    Ok(path)
}

/// The last `n` lines of `path` (completed by the end of `<path>.1` when the file has fewer),
/// and the offset in `path` that following starts from.
fn last_lines(path: &Path, n: usize) -> std::io::Result<(Vec<String>, (u64, u64))> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let end = meta.len();
    let mut lines = tail_of(&mut file, end, n)?;
    if lines.len() < n {
        let rotated = rbee_log::rotated_name(path);
        if let Ok(mut old) = std::fs::File::open(&rotated) {
            let old_end = old.metadata()?.len();
            let mut earlier = tail_of(&mut old, old_end, n - lines.len())?;
            earlier.append(&mut lines);
            lines = earlier;
        }
    }
    Ok((lines, (meta.ino(), end)))
}

/// The last `n` complete lines of `file` before `end` (a last line without its newline counts).
fn tail_of(file: &mut std::fs::File, end: u64, n: usize) -> std::io::Result<Vec<String>> {
    if n == 0 || end == 0 {
        return Ok(Vec::new());
    }
    let start = end.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(end - start).read_to_end(&mut bytes)?;
    let mut text: &[u8] = &bytes;
    if start > 0 {
        // The first line was cut by the read: drop it.
        text = text.iter().position(|&b| b == b'\n').map_or(&[], |i| &text[i + 1..]);
    }
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let all: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let skip = all.len().saturating_sub(n);
    Ok(all[skip..].iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect())
}

/// Follows a file by name from an offset: new complete lines as they come; when the file is
/// replaced (rotated) or cut short, what was left in the old one, then the new one from its
/// start.
struct Follower {
    path: PathBuf,
    inode: u64,
    offset: u64,
    partial: Vec<u8>,
    quiet: Duration,
}

impl Follower {
    fn new(path: PathBuf, (inode, offset): (u64, u64)) -> Self {
        Self { path, inode, offset, partial: Vec::new(), quiet: Duration::ZERO }
    }

    /// Waits for the next events (at least a keepalive every [`KEEPALIVE`]).
    async fn next(&mut self) -> Vec<LogEvent> {
        loop {
            tokio::time::sleep(POLL).await;
            let mut events = Vec::new();
            let now = std::fs::metadata(&self.path).ok();
            let replaced = now.as_ref().is_some_and(|m| m.ino() != self.inode || m.len() < self.offset);
            if now.as_ref().is_some_and(|m| m.ino() == self.inode && m.len() > self.offset) {
                self.read_more(&mut events);
            }
            if replaced {
                // The rest of the old file (now `<path>.1` after a rotation) is lost to a
                // reader by name only if it was written in the last instant before the
                // rename; read it from the rotated name when that is the old file.
                let rotated = rbee_log::rotated_name(&self.path);
                if std::fs::metadata(&rotated).is_ok_and(|r| r.ino() == self.inode) {
                    let current = std::mem::replace(&mut self.path, rotated);
                    self.read_more(&mut events);
                    self.path = current;
                }
                self.flush_partial(&mut events);
                events.push(LogEvent::Rotated);
                self.inode = now.map_or(0, |m| m.ino());
                self.offset = 0;
                self.read_more(&mut events);
            }
            if events.is_empty() {
                self.quiet += POLL;
                if self.quiet >= KEEPALIVE {
                    self.quiet = Duration::ZERO;
                    return vec![LogEvent::Keepalive];
                }
                continue;
            }
            self.quiet = Duration::ZERO;
            return events;
        }
    }

    fn read_more(&mut self, events: &mut Vec<LogEvent>) {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut bytes = Vec::new();
        let Ok(read) = file.take(TAIL_BYTES).read_to_end(&mut bytes) else { return };
        self.offset += read as u64;
        self.partial.extend_from_slice(&bytes);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            events.push(LogEvent::Line { text: String::from_utf8_lossy(&line[..i]).into_owned() });
        }
        if self.partial.len() > 64 * 1024 {
            self.flush_partial(events);
        }
    }

    fn flush_partial(&mut self, events: &mut Vec<LogEvent>) {
        if !self.partial.is_empty() {
            let text = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            events.push(LogEvent::Line { text });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tails_take_the_last_lines_and_reach_into_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("w.log");
        std::fs::write(rbee_log::rotated_name(&log), "a\nb\nc\n").unwrap();
        std::fs::write(&log, "d\ne").unwrap();
        let (lines, (_, end)) = last_lines(&log, 2).unwrap();
        assert_eq!((lines, end), (vec!["d".to_owned(), "e".to_owned()], 3));
        assert_eq!(last_lines(&log, 4).unwrap().0, ["b", "c", "d", "e"]);
        assert_eq!(last_lines(&log, 0).unwrap().0, Vec::<String>::new());
        std::fs::write(&log, "").unwrap();
        assert_eq!(last_lines(&log, 1).unwrap().0, ["c"]);
    }

    #[tokio::test]
    async fn a_follower_reads_new_lines_and_goes_on_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("hive.log");
        std::fs::write(&log, "old\n").unwrap();
        let (_, position) = last_lines(&log, 1).unwrap();
        let mut f = Follower::new(log.clone(), position);
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(b"one\ntw").unwrap();
        assert_eq!(f.next().await, [LogEvent::Line { text: "one".into() }]);
        file.write_all(b"o\nlast before rotation\n").unwrap();
        std::fs::rename(&log, rbee_log::rotated_name(&log)).unwrap();
        std::fs::write(&log, "fresh\n").unwrap();
        assert_eq!(
            f.next().await,
            [
                LogEvent::Line { text: "two".into() },
                LogEvent::Line { text: "last before rotation".into() },
                LogEvent::Rotated,
                LogEvent::Line { text: "fresh".into() },
            ]
        );
    }
}
