//! Config structs: unet (being written).
