//! The server side of open connections, found through the process's file
//! descriptors.
//!
//! Why: tiny_http owns every accepted socket and offers no way to see or
//! close one. Linux lets a process list its descriptors (`/proc/self/fd`)
//! and ask each socket for its addresses, its unread bytes and its TCP
//! statistics, so the registry can find the connections of its own listener
//! and shut one down (`shutdown(2)`; the descriptor stays tiny_http's, and
//! its thread then sees the close and ends). Everything here is Linux-only;
//! elsewhere nothing is found and nothing is done.
//!
//! Why a reused descriptor cannot be harmed: a listing names descriptor
//! numbers, and tiny_http may close one and the process reuse its number
//! (for a new client, or a socket of the program embedding the server)
//! before we act on it. Every action that changes a socket (a last answer,
//! `shutdown(2)`) therefore goes through `with_socket`, which first takes
//! a descriptor of our own for the number (`F_DUPFD_CLOEXEC`), then checks
//! on that duplicate that it is the socket listed (its inode, which no other
//! live socket shares, and its peer), and acts on the duplicate only. Once
//! duplicated, the socket checked is the socket acted on, whatever happens
//! to the number meanwhile. Reads of counters (`FIONREAD`, `TCP_INFO`) use
//! the number directly: a reused number gives another socket's counters,
//! which at worst makes the guard kick or try to close a connection that is
//! gone, and that close is refused by the check.

use std::net::SocketAddr;

/// One accepted connection of our listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conn {
    pub(crate) fd: i32,
    /// The socket's inode: unique while the socket lives, unlike `fd`.
    pub(crate) inode: u64,
    pub(crate) peer: SocketAddr,
}

/// What the kernel says of a connection right now.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConnStats {
    /// Bytes received over the connection's life.
    pub(crate) received: u64,
    /// Time since data last arrived, in milliseconds.
    pub(crate) idle_ms: u32,
    /// The peer closed its side (`CLOSE_WAIT`): nothing more will arrive.
    pub(crate) peer_closed: bool,
}

#[cfg(all(test, target_os = "linux"))]
use imp::with_socket;
pub(crate) use imp::{Scanner, inode_of_listener, listening, send_and_close, stats, unread};

/// Shuts down every accepted connection of the listener at `local`; returns
/// how many.
pub(crate) fn shutdown_accepted(local: SocketAddr) -> usize {
    let mut scanner = Scanner::new(local);
    scanner
        .scan(true)
        .into_iter()
        .filter(|c| send_and_close(c, local, b""))
        .count()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;
    use std::mem::MaybeUninit;
    use std::net::SocketAddr;
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

    use socket2::SockRef;

    use super::{Conn, ConnStats};

    /// `tcpi_state` of a connection whose peer has closed (linux/tcp_states.h).
    const TCP_CLOSE_WAIT: u32 = 8;

    /// Lists the accepted connections of one listener, remembering which
    /// socket inodes are ours so that a scan costs one `readlink` per
    /// descriptor once a socket has been classified.
    pub(crate) struct Scanner {
        local: SocketAddr,
        /// Socket inode → its peer if it is one of our connections.
        known: HashMap<u64, Option<SocketAddr>>,
        /// Descriptor → (inode, peer) as last read; inode 0: not a socket.
        fds: HashMap<RawFd, (u64, Option<SocketAddr>)>,
        /// Open descriptors at the last listing (0: not known).
        count: u64,
    }

    impl Scanner {
        pub(crate) fn new(local: SocketAddr) -> Scanner {
            Scanner {
                local,
                known: HashMap::new(),
                fds: HashMap::new(),
                count: 0,
            }
        }

        /// Lists our connections. A `full` scan reads every descriptor's
        /// link; a quick one reads only descriptors it has not seen before
        /// (one `getdents` plus a `readlink` per new descriptor), trusting
        /// that a descriptor number seen on the last scan still names the
        /// same socket; full scans correct the rare reuse in between.
        pub(crate) fn scan(&mut self, full: bool) -> Vec<Conn> {
            // Since Linux 6.2 the size of /proc/self/fd is the number of open
            // descriptors: when it has not changed, a quick scan reuses the
            // last listing instead of reading the directory (whose cost grows
            // with every connection).
            let count = std::fs::metadata("/proc/self/fd").map_or(0, |m| m.len());
            if !full && count != 0 && count == self.count {
                return self
                    .fds
                    .iter()
                    .filter_map(|(&fd, &(inode, peer))| {
                        Some(Conn {
                            fd,
                            inode,
                            peer: peer?,
                        })
                    })
                    .collect();
            }
            self.count = count;
            let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
                return Vec::new(); // out of descriptors: try again next time
            };
            let mut out = Vec::new();
            let mut fds = HashMap::with_capacity(self.fds.len());
            for entry in dir.flatten() {
                let Some(fd) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<RawFd>().ok())
                else {
                    continue;
                };
                let (inode, peer) = match self.fds.get(&fd) {
                    Some(&cached) if !full => cached,
                    _ => {
                        let inode = std::fs::read_link(entry.path())
                            .ok()
                            .and_then(|link| {
                                link.to_str()
                                    .and_then(|l| l.strip_prefix("socket:["))
                                    .and_then(|l| l.strip_suffix(']'))
                                    .and_then(|l| l.parse::<u64>().ok())
                            })
                            .unwrap_or(0);
                        let peer = if inode == 0 {
                            None
                        } else {
                            match self.known.get(&inode) {
                                Some(p) => *p,
                                None => peer_if_ours(fd, self.local),
                            }
                        };
                        (inode, peer)
                    }
                };
                fds.insert(fd, (inode, peer));
                if let Some(peer) = peer {
                    out.push(Conn { fd, inode, peer });
                }
            }
            if full {
                self.known = fds.values().filter(|(i, _)| *i != 0).copied().collect();
            } else {
                for (inode, peer) in fds.values() {
                    if *inode != 0 {
                        self.known.entry(*inode).or_insert(*peer);
                    }
                }
            }
            self.fds = fds;
            out
        }

        /// The connection from `peer`, if it is open: a quick scan, then a
        /// full one (a quick scan trusts descriptor numbers it has seen,
        /// and a new connection may have taken the number of a closed one).
        pub(crate) fn find(&mut self, peer: SocketAddr) -> Option<Conn> {
            let quick = self
                .scan(false)
                .into_iter()
                .find(|c| c.peer == peer && inode_at(c.fd) == Some(c.inode));
            quick.or_else(|| self.scan(true).into_iter().find(|c| c.peer == peer))
        }

        /// Reads `fd`'s link again at the next scan: an action found that
        /// it no longer names the socket listed.
        pub(crate) fn forget(&mut self, fd: RawFd) {
            self.fds.remove(&fd);
            self.count = 0;
        }

        /// How many of this process's descriptors named the socket `inode`
        /// at the last scan.
        pub(crate) fn descriptors_of(&self, inode: u64) -> usize {
            self.fds.values().filter(|(i, _)| *i == inode).count()
        }
    }

    /// The inode of the socket descriptor `fd` names now, if any.
    fn inode_at(fd: RawFd) -> Option<u64> {
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat writes one stat; a closed number fails with EBADF.
        if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: filled by fstat.
        Some(unsafe { st.assume_init() }.st_ino)
    }

    /// Bytes received on `c` that tiny_http has not read yet.
    pub(crate) fn unread(c: &Conn) -> usize {
        let mut unread: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        if unsafe { libc::ioctl(c.fd, libc::FIONREAD, &mut unread) } != 0 {
            return 0;
        }
        usize::try_from(unread).unwrap_or(0)
    }

    /// Whether a listening socket bound to `local` is still open in this
    /// process (tiny_http's accept thread closes its listener on its own
    /// time after the server is dropped).
    pub(crate) fn listening(local: SocketAddr) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return false;
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
            .any(|fd| {
                let fd = borrow(fd);
                let sock = SockRef::from(&fd);
                sock.peer_addr().is_err()
                    && sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(local)
            })
    }

    fn borrow(fd: RawFd) -> BorrowedFd<'static> {
        // SAFETY: only reads go through a borrowed number (addresses, type),
        // for the duration of one call; SockRef never closes it. A number
        // reused meanwhile answers for another socket, which a read cannot
        // harm; actions go through `with_socket`'s own descriptor.
        unsafe { BorrowedFd::borrow_raw(fd) }
    }

    /// The peer of `fd` if it is a TCP connection accepted by the listener
    /// bound to `local` (the listener itself has no peer).
    fn peer_if_ours(fd: RawFd, local: SocketAddr) -> Option<SocketAddr> {
        let fd = borrow(fd);
        let sock = SockRef::from(&fd);
        let stream = sock.r#type().ok()? == socket2::Type::STREAM;
        let mine = sock.local_addr().ok()?.as_socket()? == local;
        if !(stream && mine) {
            return None;
        }
        sock.peer_addr().ok()?.as_socket()
    }

    pub(crate) fn stats(c: &Conn) -> Option<ConnStats> {
        let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        let rc = unsafe {
            libc::getsockopt(
                c.fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: zero-initialised and (partly) filled by the kernel.
        let info = unsafe { info.assume_init() };
        Some(ConnStats {
            received: info.tcpi_bytes_received,
            idle_ms: info.tcpi_last_data_recv,
            peer_closed: u32::from(info.tcpi_state) == TCP_CLOSE_WAIT,
        })
    }

    /// Runs `f` on the socket `c` names, through a descriptor of our own,
    /// if it is still the connection listed (same inode, same peer); `None`
    /// when it is not (closed, or the number reused). See the module docs.
    pub(crate) fn with_socket<R>(
        c: &Conn,
        local: SocketAddr,
        f: impl FnOnce(SockRef<'_>) -> R,
    ) -> Option<R> {
        // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table; on
        // success the new descriptor is ours alone and owned below.
        let dup = unsafe { libc::fcntl(c.fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return None;
        }
        // SAFETY: `dup` was just returned by fcntl and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat writes one stat for a valid descriptor.
        if unsafe { libc::fstat(owned.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: filled by fstat.
        let st = unsafe { st.assume_init() };
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK || st.st_ino != c.inode {
            return None;
        }
        if peer_if_ours(owned.as_raw_fd(), local) != Some(c.peer) {
            return None;
        }
        Some(f(SockRef::from(&owned)))
    }

    /// Writes `bytes` (a last answer, possibly empty) without blocking and
    /// shuts the connection down, if `c` is still the connection listed.
    pub(crate) fn send_and_close(c: &Conn, local: SocketAddr, bytes: &[u8]) -> bool {
        with_socket(c, local, |sock| {
            if !bytes.is_empty() {
                let _ = sock.send_with_flags(bytes, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
            }
            sock.shutdown(std::net::Shutdown::Both).is_ok()
        })
        .unwrap_or(false)
    }

    /// The inode of a listening socket: every descriptor of it, tiny_http's
    /// and our spare, names the same one.
    pub(crate) fn inode_of_listener(listener: &std::net::TcpListener) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let mut st = MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat writes one stat for a valid descriptor.
        if unsafe { libc::fstat(listener.as_raw_fd(), st.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: filled by fstat.
        Some(unsafe { st.assume_init() }.st_ino)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::net::SocketAddr;

    use super::{Conn, ConnStats};

    pub(crate) struct Scanner;

    impl Scanner {
        pub(crate) fn new(_: SocketAddr) -> Scanner {
            Scanner
        }

        pub(crate) fn scan(&mut self, _full: bool) -> Vec<Conn> {
            Vec::new()
        }

        pub(crate) fn find(&mut self, _: SocketAddr) -> Option<Conn> {
            None
        }

        pub(crate) fn descriptors_of(&self, _: u64) -> usize {
            0
        }

        pub(crate) fn forget(&mut self, _: i32) {}
    }

    pub(crate) fn listening(_: SocketAddr) -> bool {
        false
    }

    pub(crate) fn unread(_: &Conn) -> usize {
        0
    }

    pub(crate) fn stats(_: &Conn) -> Option<ConnStats> {
        None
    }

    pub(crate) fn send_and_close(_: &Conn, _: SocketAddr, _: &[u8]) -> bool {
        false
    }

    pub(crate) fn inode_of_listener(_: &std::net::TcpListener) -> Option<u64> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_accepted_connections_and_reads_their_counters() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let mut client = TcpStream::connect(local).unwrap();
        let (_server_side, peer) = l.accept().unwrap();
        client.write_all(&[b'x'; 1000]).unwrap();
        let mut scanner = Scanner::new(local);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let st = loop {
            let found = scanner.scan(true);
            assert_eq!(found.len(), 1, "{found:?}");
            assert_eq!(found[0].peer, peer);
            let st = stats(&found[0]).unwrap();
            if unread(&found[0]) == 1000 || std::time::Instant::now() > deadline {
                break st;
            }
        };
        assert_eq!(unread(&scanner.scan(false)[0]), 1000);
        assert_eq!(st.received, 1000);
        assert!(st.idle_ms < 5000);
        let c = scanner.scan(true)[0];
        assert!(send_and_close(&c, local, b"bye"));
        let mut buf = Vec::new();
        client.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"bye");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod reuse {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// The guard lists a connection, tiny_http closes it, and the process
    /// gives its descriptor number to a new socket before the guard acts:
    /// the action must not reach the new socket.
    #[test]
    fn a_descriptor_number_reused_after_listing_is_never_acted_on() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let mut scanner = Scanner::new(local);
        let mut reused = 0;
        // Other tests open descriptors too; keep trying until the kernel
        // hands the freed number (the lowest free one) to our new socket.
        for _ in 0..200 {
            let _old_client = TcpStream::connect(local).unwrap();
            let (old, _) = l.accept().unwrap();
            let stale = scanner
                .scan(true)
                .into_iter()
                .find(|c| c.fd == old.as_raw_fd())
                .expect("the connection is listed");
            // Connected first, so that its accepted side is the next
            // descriptor the process makes.
            let mut new_client = TcpStream::connect(local).unwrap();
            drop(old);
            let (mut new, _) = l.accept().unwrap();
            if new.as_raw_fd() != stale.fd {
                continue;
            }
            reused += 1;
            assert!(
                !send_and_close(&stale, local, b"not for you"),
                "acted on a reused descriptor"
            );
            // The new connection is untouched: it carries data both ways.
            new_client.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            new.read_exact(&mut buf).unwrap();
            new.write_all(b"pong").unwrap();
            new_client.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"pong");
            if reused >= 5 {
                break;
            }
        }
        assert!(reused > 0, "the kernel never reused the number");
    }

    /// The number is closed and reused after the check, while the action
    /// runs: the action still reaches the socket that was checked.
    #[test]
    fn the_socket_checked_is_the_socket_acted_on() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        let mut old_client = TcpStream::connect(local).unwrap();
        let (old, _) = l.accept().unwrap();
        let listed = Scanner::new(local)
            .scan(true)
            .into_iter()
            .find(|c| c.fd == old.as_raw_fd())
            .unwrap();
        let mut new_client = TcpStream::connect(local).unwrap();
        let mut new = None;
        let acted = with_socket(&listed, local, |sock| {
            drop(old);
            new = Some(l.accept().unwrap().0);
            sock.send(b"bye").unwrap();
            sock.shutdown(std::net::Shutdown::Both).unwrap();
        });
        assert!(acted.is_some());
        let mut buf = Vec::new();
        old_client.read_to_end(&mut buf).unwrap();
        assert_eq!(buf, b"bye", "the checked socket got the action");
        let mut new = new.unwrap();
        new_client.write_all(b"ping").unwrap();
        let mut four = [0u8; 4];
        new.read_exact(&mut four).unwrap();
        assert_eq!(
            &four, b"ping",
            "the socket that took the number is untouched"
        );
    }
}

/// What Linux copies from a listening socket to the sockets it accepts,
/// checked here because the guard and the listener set-up rely on it.
#[cfg(all(test, target_os = "linux"))]
mod inherit {
    use socket2::{Domain, SockRef, Socket, Type};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    #[test]
    fn accepted_sockets_inherit_listener_options() {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_tcp_nodelay(true).unwrap();
        s.set_keepalive(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(7))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(9))).unwrap();
        s.set_linger(Some(Duration::from_secs(3))).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        s.listen(8).unwrap();
        let l: std::net::TcpListener = s.into();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (a, _) = l.accept().unwrap();
        let a = SockRef::from(&a);
        // Copied: TCP_NODELAY, SO_KEEPALIVE, SO_RCVTIMEO, SO_SNDTIMEO, SO_LINGER.
        assert!(a.tcp_nodelay().unwrap());
        assert!(a.keepalive().unwrap());
        assert_eq!(a.read_timeout().unwrap(), Some(Duration::from_secs(7)));
        assert_eq!(a.write_timeout().unwrap(), Some(Duration::from_secs(9)));
        assert_eq!(a.linger().unwrap(), Some(Duration::from_secs(3)));
    }
}
