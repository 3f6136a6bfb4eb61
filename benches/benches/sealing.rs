//! Encryption at rest: seal/open costs (filled by the benchmark work).
fn main() {}
