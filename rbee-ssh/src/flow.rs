//! Pacing of what is sent into a command's standard input: keep only as many bytes on the
//! way as the link needs, rather than the whole window the server offers.
//!
//! OpenSSH's sshd offers a session channel a 2 MiB window. Bytes it has received but not yet
//! written to the command's pipe wait in a buffer that it grows by copying it whole into a
//! fresh allocation (`recallocarray`) for each packet that does not fit, and shrinks again as
//! it drains. A client that fills the window at once (russh does; OpenSSH's own client is
//! slower to) therefore makes sshd copy megabytes per packet whenever the command reads more
//! slowly than the bytes arrive, as on a busy host: 20 hosts' uploads cost the machine 2.8 ×
//! the CPU and took 2.8 × as long as with a quarter megabyte on the way (`ssh-throughput 24 1
//! 20`). So an upload sends the next piece only while the bytes the server has not yet passed
//! on stay under a cap: enough for the link (the connection's TCP round trip times
//! [`LINK_RATE`]), never under [`MIN_IN_FLIGHT`]. What is on the way is told by the server's
//! `WINDOW_ADJUST`s: the largest window it offered (sshd offers a session 0 bytes at first,
//! then its whole window once the command runs) less the window left. The first pieces, sent
//! before that first window, are counted only from it: up to one cap more is on the way at
//! first (waiting for that first window instead measured no better: 0.78–0.84 s for 20
//! hosts' uploads, within this machine's noise of 0.79–0.91 s without it that hour). A server that gives window back only in large steps is not starved: with no
//! adjustment for [`STALL`] while a piece waits, the cap doubles.

use std::sync::Mutex;
use std::time::Duration;

/// The fewest bytes kept on the way: 4 packets of sshd's 32 KiB more than the 96 KiB after
/// which it gives window back.
pub(crate) const MIN_IN_FLIGHT: u64 = 256 << 10;

/// The rate a link is assumed to carry, for the bytes its round trip needs on the way
/// (bytes per microsecond: 512 MiB/s). A round trip of 0.5 ms or less (a LAN) gets the floor,
/// 1 ms 512 KiB, 4 ms and more the server's whole window (2 MiB for sshd), as without pacing.
pub(crate) const LINK_RATE: u64 = 537;

/// With no window given back for this long while waiting, the cap doubles.
pub(crate) const STALL: Duration = Duration::from_millis(100);

/// The bytes on the way on one channel, and the most that may be.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Whether anything is paced (only a command's input is).
    on: bool,
    state: Mutex<State>,
    adjusted: tokio::sync::Notify,
}

#[derive(Debug)]
struct State {
    cap: u64,
    /// The largest window the server offered.
    most: u64,
    /// The window after the server's last adjustment, and the bytes sent by then.
    window: u64,
    sent_then: u64,
    sent: u64,
}

impl Pacer {
    /// A pacer for a link whose round trip is `rtt`.
    pub(crate) fn new(rtt: Duration) -> Self {
        let rtt_us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
        let cap = rtt_us.saturating_mul(LINK_RATE).max(MIN_IN_FLIGHT);
        let state = State { cap, most: 0, window: 0, sent_then: 0, sent: 0 };
        Self { on: true, state: Mutex::new(state), adjusted: Default::default() }
    }

    /// A pacer that lets everything go at once.
    pub(crate) fn off() -> Self {
        Self { on: false, ..Self::new(Duration::ZERO) }
    }

    /// The server gave window back: `window` is what is left now.
    pub(crate) fn window_adjusted(&self, window: u32) {
        let mut s = self.state.lock().expect("pacer");
        s.window = u64::from(window);
        s.most = s.most.max(s.window);
        s.sent_then = s.sent;
        drop(s);
        self.adjusted.notify_one();
    }

    /// `n` more bytes were handed to the channel.
    pub(crate) fn sent(&self, n: u64) {
        self.state.lock().expect("pacer").sent += n;
    }

    /// Bytes the server has not passed on yet, by its last adjustment.
    fn in_flight(s: &State) -> u64 {
        s.most.saturating_sub(s.window) + (s.sent - s.sent_then)
    }

    /// How many of the `want` bytes ready to send may go now, waiting until some may: at most
    /// half the cap at a time, so that the next piece can follow as the server drains.
    pub(crate) async fn next_piece(&self, want: usize) -> usize {
        if !self.on || want == 0 {
            return want;
        }
        loop {
            let adjusted = self.adjusted.notified();
            let piece = {
                let s = self.state.lock().expect("pacer");
                let piece = want.min(usize::try_from(s.cap / 2).unwrap_or(usize::MAX)).max(1);
                if Self::in_flight(&s) + piece as u64 <= s.cap {
                    return piece;
                }
                piece
            };
            if tokio::time::timeout(STALL, adjusted).await.is_err() {
                let mut s = self.state.lock().expect("pacer");
                // Nothing came back: this server gives window back later than the cap allows.
                if Self::in_flight(&s) + piece as u64 > s.cap {
                    s.cap = s.cap.saturating_mul(2);
                }
            }
        }
    }

    /// The cap now (for tests).
    #[cfg(test)]
    fn cap(&self) -> u64 {
        self.state.lock().expect("pacer").cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_follows_the_round_trip_and_never_goes_under_the_floor() {
        assert_eq!(Pacer::new(Duration::from_micros(100)).cap(), MIN_IN_FLIGHT);
        assert_eq!(Pacer::new(Duration::from_millis(10)).cap(), 10_000 * LINK_RATE);
        assert_eq!(Pacer::off().next_piece(5 << 20).await, 5 << 20);
    }

    #[tokio::test(start_paused = true)]
    async fn pieces_wait_for_the_window_to_come_back() {
        let p = std::sync::Arc::new(Pacer::new(Duration::ZERO));
        // sshd opens a session with no window, and offers it all once the command runs.
        p.window_adjusted(2 << 20);
        let half = (MIN_IN_FLIGHT / 2) as usize;
        assert_eq!(p.next_piece(1 << 20).await, half);
        p.sent(half as u64);
        assert_eq!(p.next_piece(1 << 20).await, half);
        p.sent(half as u64);
        // The cap is reached: the next piece waits until the server passes some on.
        let waiting = tokio::spawn({
            let p = p.clone();
            async move { p.next_piece(1 << 20).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        // It passed on 192 KiB: 64 KiB are still on the way, room for another half cap.
        p.window_adjusted(u32::try_from((2 << 20) - MIN_IN_FLIGHT + (192 << 10)).unwrap());
        assert_eq!(waiting.await.unwrap(), half);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_gives_window_back_late_is_not_starved() {
        // A server that offered its window at first and gives none back until much is used.
        let p = Pacer::new(Duration::ZERO);
        p.sent(MIN_IN_FLIGHT);
        let started = tokio::time::Instant::now();
        // No adjustment ever comes: the cap doubles after a stall, and the piece goes.
        assert_eq!(p.next_piece(64 << 10).await, 64 << 10);
        assert!(started.elapsed() >= STALL);
        assert_eq!(p.cap(), 2 * MIN_IN_FLIGHT);
    }
}
