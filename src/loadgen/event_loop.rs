//! The measured load: each thread drives its clients' kept-alive
//! connections, with epoll on Linux (one blocking exchange at a time
//! elsewhere), and tallies latencies and errors.

use std::collections::BTreeMap;
#[cfg(target_os = "linux")]
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Budget;
#[cfg(not(target_os = "linux"))]
use super::conn::{Conn, Outcome};
use super::conn::{Requests, Target, warm_connection};

/// One client of an event-loop thread: a non-blocking connection with the
/// answer read so far.
struct Client {
    id: usize,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    sent: usize,
    sent_at: Instant,
}

/// What one thread measured.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) latencies: Vec<u32>,
    pub(super) errors: BTreeMap<String, u64>,
}

impl Tally {
    pub(super) fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }
}

/// Runs `ids` clients on one thread with epoll: the way wrk works, so that
/// the generator's own cost stays small next to the server's.
#[cfg(target_os = "linux")]
pub(super) fn event_loop(
    ids: Vec<usize>,
    target: &Target,
    reqs: &Requests,
    timeout: Duration,
    budget: &Budget,
) -> Tally {
    use std::os::fd::AsRawFd;
    let mut tally = Tally::default();
    // SAFETY: plain syscall; the fd is closed below.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        tally.error("epoll");
        return tally;
    }
    let mut clients: Vec<Client> = ids
        .into_iter()
        .map(|id| Client {
            id,
            stream: None,
            buf: Vec::with_capacity(4096),
            sent: 0,
            sent_at: Instant::now(),
        })
        .collect();
    let mut scratch = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; clients.len().max(1)];
    let mut read_buf = vec![0u8; 256 * 1024];

    // Connects (if needed) and sends the client's next request; false when
    // the run is over for it.
    let send = |c: &mut Client, scratch: &mut Vec<u8>, tally: &mut Tally| -> bool {
        if !budget.take() {
            return false;
        }
        if c.stream.is_none() {
            match warm_connection(target, reqs, timeout) {
                Some(s) => {
                    let _ = s.set_nonblocking(true);
                    let mut ev = libc::epoll_event {
                        events: libc::EPOLLIN as u32,
                        u64: c.id as u64,
                    };
                    // SAFETY: registers a live fd with our epoll instance.
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
                    c.stream = Some(s);
                }
                None => {
                    tally.error("connect");
                    return true;
                }
            }
        }
        let req = reqs.nth(c.id, c.sent, scratch);
        c.sent += 1;
        c.buf.clear();
        c.sent_at = Instant::now();
        let stream = c.stream.as_mut().expect("connected above");
        // A request of a few hundred bytes fits an empty send buffer.
        if !matches!(stream.write(req), Ok(n) if n == req.len()) {
            tally.error("write");
            c.stream = None;
        }
        true
    };

    let base = clients.first().map_or(0, |c| c.id);
    let mut live = 0usize;
    for c in clients.iter_mut() {
        if send(c, &mut scratch, &mut tally) {
            live += 1;
        }
    }
    while live > 0 {
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let c = &mut clients[ev.u64 as usize - base];
            let Some(stream) = c.stream.as_mut() else {
                continue;
            };
            let mut failed = None;
            loop {
                match stream.read(&mut read_buf) {
                    Ok(0) => {
                        failed = Some("closed");
                        break;
                    }
                    Ok(k) => c.buf.extend_from_slice(&read_buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        failed = Some("read");
                        break;
                    }
                }
            }
            let finished = match answer_status(&c.buf) {
                Answer::Complete(status) => Some(status),
                Answer::Malformed => {
                    failed = Some("bad answer");
                    None
                }
                Answer::Incomplete => None,
            };
            if let Some(status) = finished {
                if (200..300).contains(&status) {
                    tally
                        .latencies
                        .push(u32::try_from(c.sent_at.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    tally.error(&format!("status {status}"));
                }
            } else if let Some(kind) = failed {
                tally.error(kind);
                c.stream = None;
            } else {
                continue; // the answer is not complete yet
            }
            if !send(c, &mut scratch, &mut tally) {
                live -= 1;
            }
        }
        // Answers overdue beyond the timeout count as timeouts.
        for c in clients.iter_mut() {
            if c.stream.is_some() && c.sent_at.elapsed() > timeout {
                tally.error("timeout");
                c.stream = None;
                if !send(c, &mut scratch, &mut tally) {
                    live -= 1;
                }
            }
        }
        if Instant::now() > budget.deadline + timeout {
            break;
        }
    }
    // SAFETY: closing the epoll fd created above.
    unsafe { libc::close(ep) };
    tally
}

/// Elsewhere: one blocking exchange at a time per client, in turn.
#[cfg(not(target_os = "linux"))]
pub(super) fn event_loop(
    ids: Vec<usize>,
    target: &Target,
    reqs: &Requests,
    timeout: Duration,
    budget: &Budget,
) -> Tally {
    let mut tally = Tally::default();
    let mut scratch = Vec::new();
    let mut conns: Vec<Option<Conn>> = ids.iter().map(|_| None).collect();
    let mut i = 0;
    while budget.take() {
        let k = i % ids.len();
        i += 1;
        let c = match conns[k].as_mut() {
            Some(c) => c,
            None => match Conn::open(target, timeout) {
                Ok(c) => conns[k].insert(c),
                Err(_) => {
                    tally.error("connect");
                    continue;
                }
            },
        };
        let t = Instant::now();
        match c.exchange(reqs.nth(ids[k], i, &mut scratch)) {
            Outcome::Status(s) if (200..300).contains(&s) => tally
                .latencies
                .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)),
            Outcome::Status(s) => tally.error(&format!("status {s}")),
            Outcome::Failed(what) => {
                tally.error(what);
                conns[k] = None;
            }
        }
    }
    tally
}

/// How far the answer in a client's buffer has come.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The head or the body is still arriving.
    Incomplete,
    /// A whole answer with this status.
    Complete(u16),
    /// A whole head that is no HTTP answer (not UTF-8, no numeric status):
    /// waiting for more would only turn it into a timeout.
    Malformed,
}

/// Where the answer in `buf` stands.
fn answer_status(buf: &[u8]) -> Answer {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Answer::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Answer::Malformed;
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status else {
        return Answer::Malformed;
    };
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() >= end + 4 + length {
        Answer::Complete(status)
    } else {
        Answer::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_status_tells_incomplete_complete_and_malformed_apart() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(answer_status(ok), Answer::Complete(200));
        assert_eq!(answer_status(&ok[..ok.len() - 1]), Answer::Incomplete);
        assert_eq!(answer_status(&ok[..20]), Answer::Incomplete);
        assert_eq!(
            answer_status(b"HTTP/1.1 503 Busy\r\n\r\n"),
            Answer::Complete(503)
        );
        for bad in [
            &b"HTTP/1.1 2xx OK\r\n\r\n"[..],
            b"HTTP/1.1\r\n\r\n",
            b"\r\n\r\n",
            b"HTTP/1.1 200 \xff\r\n\r\n",
        ] {
            assert_eq!(
                answer_status(bad),
                Answer::Malformed,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
