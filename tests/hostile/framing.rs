//! Hostile framing.
