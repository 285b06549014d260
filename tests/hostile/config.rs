//! Hostile config.
