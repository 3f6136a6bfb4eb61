//! (being written) Assembles spool, sinks and shipping loops from the config.

/// Placeholder until the pipeline lands.
#[derive(Debug)]
pub struct Pipeline;
/// Placeholder until the pipeline lands.
#[derive(Debug)]
pub struct PipelineOptions;
