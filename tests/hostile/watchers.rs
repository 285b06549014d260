//! Hostile watchers.
