//! Hostile persistence.
