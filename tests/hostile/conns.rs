//! Hostile conns.
