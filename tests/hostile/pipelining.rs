//! Hostile pipelining.
