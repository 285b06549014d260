//! Everything that knows tiny_http: its servers and their rebuild
//! (`front.rs`), a request as it hands one over (`tiny.rs`), the open
//! connections found through the process's descriptors (`conns.rs`), the
//! guard that watches them (`guard.rs`), and, with the `tls` feature, the
//! TLS relay in front of tiny_http (`tls.rs`). The rest of the server sees
//! the names re-exported here and nothing of tiny_http.
//!
//! Each defect of tiny_http 0.12 this folder handles, where, and the test
//! that shows it; when tiny_http fixes one, its row's code goes:
//!
//! | defect | handled in | test |
//! |---|---|---|
//! | one accept error (EMFILE, ECONNABORTED) ends the accept thread; under descriptor exhaustion it may panic | `front.rs` (`want_rebuild`, `try_rebuild` on a spare of the listener), `guard.rs` (notices the accept thread gave up its listener) | `tests/hardening.rs` `accept_errors_do_not_kill_the_port`; `tests/hostile/conns.rs` `a_flood_of_connect_and_close_rebuilds_nothing_and_cuts_no_connection` |
//! | a burst of new connections can leave some unserved (a lost wake-up in its thread pool) | `guard.rs` (kicks) | `tests/hardening.rs` `a_burst_of_new_keep_alive_connections_is_answered` |
//! | idle connections hold a thread each forever; no limit on a request head's size or time; no connection limit | `guard.rs` (idle, slow, oversized, excess) | `tests/hardening.rs` `idle_and_slow_clients_are_closed_and_connections_capped`, `oversized_and_non_ascii_headers_are_refused`; `tests/hostile/conns.rs` `max_connections_counts_connections_not_descriptors` |
//! | whoever answers blocks on a client that does not read | `guard.rs` (`cut_unread_answers`), with the pool's growth (`../pool.rs`) | `tests/hostile/watchers.rs` `listings_that_are_never_read_hold_no_thread_other_clients_need` |
//! | a parked request whose client left keeps its descriptors | `guard.rs` (departed watchers) | `tests/hostile/watchers.rs` `watchers_whose_clients_left_are_forgotten` |
//! | ambiguous framing and header bytes are taken as they come | `tiny.rs` (`Exchange::screen`) | `tests/hostile/framing.rs` |
//! | a body it did not read ahead (over 1 KiB, chunked, or behind `Expect: 100-continue`) blocks whoever drops the request; a huge declared length aborts the process | `tiny.rs` (`Exchange::screen`, `Exchange::let_go`) | `tests/hardening.rs` `unread_request_bodies_neither_abort_the_process_nor_block_a_worker`; `tests/hostile/framing.rs` `bodies_are_refused_without_waiting_for_them` |
//! | stopping a server leaves kept-alive connections open and silent | `conns.rs` (`shutdown_accepted`) | `tests/hardening.rs` `shutdown_leaves_no_kept_alive_client_hanging` |
//! | pipelined requests of one connection run at once, and an answer waits behind every earlier one | handed to `../lanes.rs` through [`Exchange::peer`] | `tests/hostile/pipelining.rs` |
//! | its TLS (feature `ssl-openssl` or `ssl-rustls`) lets one client stop the accept thread or spin a core forever | not used: `tls.rs` ends TLS in front of it (feature `tls`) | `tests/tls.rs` `a_silent_or_closing_tls_client_holds_nothing` |
//!
//! Acting on tiny_http's sockets from outside is safe against descriptor
//! reuse (`conns.rs`, module docs and tests).

mod conns;
mod front;
mod guard;
mod tiny;
#[cfg(feature = "tls")]
mod tls;

pub(crate) use conns::{Conn, listening, shutdown_accepted};
pub(crate) use front::{Front, Http, recv};
pub(crate) use guard::{GuardConfig, start as start_guard};
pub(crate) use tiny::Exchange;
#[cfg(feature = "tls")]
pub(crate) use tls::{TlsFront, TlsLimits, load_identity};
