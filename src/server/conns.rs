//! The server side of open connections, found through the process's file
//! descriptors.
//!
//! Why: tiny_http owns every accepted socket and offers no way to close one.
//! When the server stops, connections that clients keep alive would stay
//! open with nobody answering them, so a client's next request would wait
//! for its timeout (CRATE-NOTES §1.8f). Shutting those sockets down lets the
//! client see the close at once and reconnect.

use std::net::SocketAddr;

/// Shuts down (both directions) every accepted connection of the listener
/// bound to `local`; returns how many.
///
/// A descriptor is taken to be one of ours when its local address is
/// `local` and it has a peer; the listener itself has none. Only Linux is
/// supported; elsewhere nothing is done.
pub(crate) fn shutdown_accepted(local: SocketAddr) -> usize {
    imp::accepted(local)
        .into_iter()
        .filter(|&fd| imp::shutdown(fd, local))
        .count()
}

#[cfg(target_os = "linux")]
mod imp {
    use std::mem::MaybeUninit;
    use std::net::SocketAddr;
    use std::os::fd::{BorrowedFd, RawFd};

    use socket2::SockRef;

    pub(super) fn accepted(local: SocketAddr) -> Vec<RawFd> {
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
            .filter(|&fd| is_ours(fd, local))
            .collect()
    }

    fn is_ours(fd: RawFd, local: SocketAddr) -> bool {
        // Cheap test first: is it a TCP socket of the right family at all?
        let mut ty = MaybeUninit::<libc::c_int>::uninit();
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `ty`; on a
        // descriptor that is not a socket it fails and writes nothing.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                ty.as_mut_ptr().cast(),
                &mut len,
            )
        };
        // SAFETY: rc == 0 means the kernel filled `ty`.
        if rc != 0 || unsafe { ty.assume_init() } != libc::SOCK_STREAM {
            return false;
        }
        // SAFETY: the descriptor is open for the duration of this call (it
        // was just listed); SockRef does not close it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = SockRef::from(&fd);
        let mine = sock
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a == local);
        mine && sock.peer_addr().is_ok()
    }

    pub(super) fn shutdown(fd: RawFd, local: SocketAddr) -> bool {
        // Checked again right before acting, so a descriptor number reused
        // since the listing is left alone.
        if !is_ours(fd, local) {
            return false;
        }
        // SAFETY: as in is_ours.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = SockRef::from(&fd);
        sock.shutdown(std::net::Shutdown::Both).is_ok()
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::net::SocketAddr;

    pub(super) fn accepted(_: SocketAddr) -> Vec<i32> {
        Vec::new()
    }

    pub(super) fn shutdown(_: i32, _: SocketAddr) -> bool {
        false
    }
}
