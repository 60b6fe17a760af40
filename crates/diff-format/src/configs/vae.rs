//! Config structs: vae (being written).
