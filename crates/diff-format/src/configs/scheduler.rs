//! Config structs: scheduler (being written).
