//! Config structs: clip (being written).
