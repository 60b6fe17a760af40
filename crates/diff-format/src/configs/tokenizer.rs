//! Config structs: tokenizer (being written).
