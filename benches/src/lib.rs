//! Benchmarks live in `benches/`; this library is empty so cargo has a target.
