//! Unit tests of the pure decisions in this module (no network, no processes, no sleeps).
