//! Account-safety pacing per device (issue 4; being written).
