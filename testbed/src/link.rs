//! A slow, lossy link in user space, for kernels without `netem`: a TCP proxy that delays
//! every chunk by a fixed latency in each direction and, for a given fraction of chunks, adds
//! a retransmission timeout (200 ms, Linux's minimum RTO) — what a lost segment costs a TCP
//! stream. Order is kept, so a "lost" chunk holds up the ones behind it, as in TCP.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Linux's minimum retransmission timeout.
const RTO: Duration = Duration::from_millis(200);

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct LossyLink {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl LossyLink {
    /// Proxies `127.0.0.1:<free port>` to `target` with `delay` each way and `loss` (0..1).
    pub fn start(target: SocketAddr, delay: Duration, loss: f64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        thread::spawn(move || {
            let mut seed = u64::from(addr.port()) | 1;
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(server) = TcpStream::connect(target) {
                            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                            pipe(&client, &server, delay, loss, seed);
                            pipe(&server, &client, delay, loss, seed ^ 0x9e37_79b9);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self { addr, stop })
    }
}

impl Drop for LossyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(from: &TcpStream, to: &TcpStream, delay: Duration, loss: f64, mut seed: u64) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else { return };
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last = Instant::now();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let lost = (seed % 10_000) as f64 / 10_000.0 < loss;
            let release = (Instant::now() + delay + if lost { RTO } else { Duration::ZERO }).max(last);
            last = release;
            if tx.send((release, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    thread::spawn(move || {
        for (release, chunk) in rx {
            let now = Instant::now();
            if release > now {
                thread::sleep(release - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
